"""The README's main command: simulate -> pack -> train -> probe on the small preset.

Each stage writes atomically, so a finished stage found in ``out`` is reused on a re-run
(``--fresh`` redoes everything). Expected: about 2 minutes on 2 CPU cores (95-101 s on a 2-core AMD EPYC with
native bf16, 117 s with AVX2-only kernels, which train in fp32), far less on a GPU.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from jepa_fast.config import SimConfig, dataset_preset, run_preset

DEMO_PRESET = "ours-small"
DATA = dataset_preset("small")


def budget() -> str:
    """What the demo trains on, in frames: the train split and the frames its epochs show the model."""
    run = run_preset(DEMO_PRESET)
    n, T = DATA.sizes["train"], DATA.seq_len
    steps = run.train.epochs * (n // run.data.batch_size)
    return (f"{n * T:,} frames ({n:,} trajectories x {T}), {run.train.epochs} epochs = "
            f"{steps * run.data.batch_size * T:,} frames seen")


def run_demo(out: Path, seed: int = 0, fresh: bool = False) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    raw, packed, run_dir = out / "data", out / "packed", out / "run"
    if fresh:
        shutil.rmtree(out, ignore_errors=True)

    if not (raw / "dataset.json").exists():
        from jepa_fast.sim.generate import generate_dataset

        print(f"[1/4] generate: small preset ({sum(DATA.sizes.values()):,} trajectories in {len(DATA.sizes)} splits) "
              f"-> {raw}")
        generate_dataset(raw, DATA, SimConfig(), seed=seed, overwrite=True)
    else:
        print(f"[1/4] generate: reusing {raw}")

    if not (packed / "dataset.json").exists():
        from jepa_fast.data.pack import pack_path

        print(f"[2/4] pack: {raw} -> {packed}")
        pack_path(raw, packed, overwrite=True)
    else:
        print(f"[2/4] pack: reusing {packed}")

    from jepa_fast import checkpoint as ckpt

    if ckpt.latest(run_dir) is None:
        import dataclasses

        from jepa_fast.train import train

        run = run_preset(DEMO_PRESET)
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, seed=seed),
                                  data=dataclasses.replace(run.data, seed=seed))
        print(f"[3/4] train: preset {DEMO_PRESET} -> {run_dir}")
        shutil.rmtree(run_dir, ignore_errors=True)
        train(run, packed, run_dir)
    else:
        print(f"[3/4] train: reusing {ckpt.latest(run_dir)}")

    from jepa_fast.probe import format_table, run_probe

    print("[4/4] probe: the course project's protocol on probe_normal, probe_wall, wall_other, expert")
    res = run_probe(run_dir, packed, run_dir / "probe", overwrite=True)

    import numpy as np

    from jepa_fast.sim.generate import load_split
    from jepa_fast.viz import trajectory_grid

    d = load_split(raw / "train")
    trajectory_grid(np.asarray(d["states"][:4]), np.asarray(d["locations"][:4]), out / "sample_train.png")
    print()
    print(format_table(res["losses"]))
    full = dataset_preset("full")
    frames = full.sizes["train"] * full.seq_len
    print(f"\n(The reference numbers come from 15 epochs over {frames / 1e6:.1f}M frames on a GPU; this demo "
          f"trains a few minutes on {budget()}, so expect higher errors: well below chance, above the reference.)")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Look at:\n"
          f"  {out / 'sample_train.png'}                 the data\n"
          f"  {run_dir / 'loss.png'}                   training loss terms\n"
          f"  {run_dir / 'probe' / 'probe_error_per_timestep.png'}  probe error per timestep\n"
          f"  {run_dir / 'probe' / 'probe_paths_probe_wall.png'}    predicted vs true paths\n"
          f"  {run_dir / 'probe' / 'metrics.txt'}                  the numbers, original format")
    return {"losses": res["losses"], "run": str(run_dir)}
