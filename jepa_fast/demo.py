"""The README's main command: the whole job on the small preset, stage by stage.

Each stage writes atomically, so a finished stage found in ``out`` is reused on a re-run.
"""

from __future__ import annotations

import time
from pathlib import Path

from jepa_fast.config import SimConfig, dataset_preset


def run_demo(out: Path, seed: int = 0, fresh: bool = False) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    raw, packed = out / "data", out / "packed"
    stages = 2

    if fresh or not (raw / "dataset.json").exists():
        from jepa_fast.sim.generate import generate_dataset

        print(f"[1/{stages}] generate: small preset -> {raw}")
        generate_dataset(raw, dataset_preset("small"), SimConfig(), seed=seed, overwrite=True)
    else:
        print(f"[1/{stages}] generate: reusing {raw}")

    if fresh or not (packed / "dataset.json").exists():
        from jepa_fast.data.format import pack_path

        print(f"[2/{stages}] pack: {raw} -> {packed}")
        pack_path(raw, packed, overwrite=True)
    else:
        print(f"[2/{stages}] pack: reusing {packed}")

    import numpy as np

    from jepa_fast.sim.generate import load_split
    from jepa_fast.viz import trajectory_grid

    d = load_split(raw / "train")
    trajectory_grid(np.asarray(d["states"][:4]), np.asarray(d["locations"][:4]), out / "sample_train.png")
    print(f"done in {time.perf_counter() - t0:.1f} s; a picture of the data: {out / 'sample_train.png'}")
    return {"data": str(raw), "packed": str(packed)}
