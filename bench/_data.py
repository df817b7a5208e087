"""A simulated, packed dataset for the benches that need one (made in a temp folder, or reused)."""

from __future__ import annotations

from pathlib import Path

from jepa_fast.config import SimConfig, dataset_preset
from jepa_fast.data.format import pack_path
from jepa_fast.sim.generate import generate_dataset


def packed_dataset(work: Path, preset: str = "small", seed: int = 0) -> Path:
    """Simulate the ``preset`` dataset into work/raw and pack it into work/packed; returns the packed root."""
    raw, packed = Path(work) / "raw", Path(work) / "packed"
    if not (packed / "dataset.json").exists():
        generate_dataset(raw, dataset_preset(preset), SimConfig(), seed=seed, overwrite=True, progress=False)
        pack_path(raw, packed, overwrite=True, progress=False)
    return packed
