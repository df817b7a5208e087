"""Thin entry points over ``jepa_fast.data.format``: pack raw split folders, inspect a store."""
