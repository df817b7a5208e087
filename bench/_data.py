"""Simulated data for the benches that need it (made in a temp folder, or reused)."""

from __future__ import annotations

from pathlib import Path

from jepa_fast.config import SimConfig, dataset_preset
from jepa_fast.data.pack import pack_path, pack_split
from jepa_fast.sim.generate import generate_dataset


def packed_dataset(work: Path, preset: str = "small", seed: int = 0) -> Path:
    """Simulate the ``preset`` dataset into work/raw and pack it into work/packed; returns the packed root.
    The full-size dataset (108 GB as float32 .npy) is simulated straight into the packed stores instead."""
    raw, packed = Path(work) / "raw", Path(work) / "packed"
    if not (packed / "dataset.json").exists():
        if preset == "full":
            generate_dataset(packed, dataset_preset(preset), SimConfig(), seed=seed, overwrite=True, progress=False,
                             fmt="zarr")
        else:
            generate_dataset(raw, dataset_preset(preset), SimConfig(), seed=seed, overwrite=True, progress=False)
            pack_path(raw, packed, overwrite=True, progress=False)
    return packed


def train_split(work: Path, n: int, pack: bool = True) -> tuple[Path, Path | None]:
    """Simulate a float32 train split of n trajectories (work/raw/train, the original .npy format) and,
    if ``pack``, pack it into work/train.zarr. Returns (raw split folder, store or None)."""
    raw = Path(work) / "raw"
    generate_dataset(raw, dataset_preset("full", n_train=n, splits=["train"]), SimConfig(), progress=False)
    store = None
    if pack:
        store = Path(work) / "train.zarr"
        pack_split(raw / "train", store, progress=False)
    return raw / "train", store
