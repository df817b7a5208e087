"""Thin entry points over ``jepa_fast.data``: pack raw split folders (``pack.py``), inspect a store."""
