"""Shared fixtures. Environment switches that must be set before libraries initialise live here."""

from __future__ import annotations

import os

# Triton must see this before it decorates any kernel (PERF_NOTES §4); harmless where Triton is absent.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A tiny simulated dataset root (all seven splits, float32, original .npy format)."""
    from jepa_fast.config import SimConfig, dataset_preset
    from jepa_fast.sim.generate import generate_dataset

    out = tmp_path_factory.mktemp("data") / "tiny"
    generate_dataset(out, dataset_preset("tiny"), SimConfig(), seed=0, progress=False)
    return out
