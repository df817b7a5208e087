"""The README's main command: simulate -> pack -> train -> probe on the small preset.

Each stage writes atomically, so a finished stage found in ``out`` is reused on a re-run of the same
seed (``--fresh`` redoes every stage). The folder is marked as the demo's (``demo.json``): a non-empty
folder that is not a demo's is refused unless ``--overwrite``, and the demo deletes nothing it did not
write. Expected: 2-3 minutes on 2 CPU cores (155 s on a 2-core AMD EPYC Zen 3, which trains in fp32;
95-101 s on a Zen 4 with native bf16), far less on a GPU.
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


MARKER = "demo.json"
"""Written into the demo's folder when it starts: the folder is a demo's, and with which seed."""
STAGES = ("data", "packed", "run", "sample_train.png", MARKER)
RUN_FILES = {"config.json", "resolved.json", "metrics.jsonl", "loss.png", "tensorboard", "checkpoints", "probe"}
"""What the trainer and the probe write into a run folder: a run folder holding anything else is not the demo's."""


def _claim(out: Path, seed: int, fresh: bool, overwrite: bool) -> None:
    """Make ``out`` the demo's folder without losing anything of the user's: a non-empty folder that is not a
    demo's is refused unless ``overwrite``; a demo folder of another seed (or ``fresh``) has its stages redone."""
    import json

    from jepa_fast import atomic
    from jepa_fast.errors import JepaFastError

    marker = out / MARKER
    theirs = out.is_dir() and any(out.iterdir()) and not marker.exists()
    if theirs and not overwrite:
        names = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise JepaFastError(f"{out} holds files that are not a jepa-fast demo's ({names}); choose another --out, or "
                            "pass --overwrite to replace them")
    if marker.exists():
        try:
            before = json.loads(marker.read_text())
        except (ValueError, UnicodeDecodeError):
            before = {}
        if before.get("seed") != seed and not fresh:
            print(f"note: {out} holds the demo of seed {before.get('seed')}; redoing every stage for seed {seed}")
            fresh = True
    run = out / "run"
    if run.is_dir() and not fresh and not overwrite:
        foreign = sorted(p.name for p in run.iterdir() if p.name not in RUN_FILES)
        if foreign:
            raise JepaFastError(f"{run} holds files the demo did not write ({', '.join(foreign[:4])}); move them, or "
                                "pass --overwrite to replace the folder")
    if theirs or fresh:
        for p in (out.iterdir() if theirs else (out / name for name in STAGES)):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write_text(marker, json.dumps({"seed": seed, "preset": DEMO_PRESET}))


def run_demo(out: Path, seed: int = 0, fresh: bool = False, overwrite: bool = False) -> dict:
    """The whole job in ``out``. Finished stages found there are reused (same seed); the demo never deletes
    files it did not write unless ``overwrite``."""
    from jepa_fast import lock

    out = Path(out)
    t0 = time.perf_counter()
    raw, packed, run_dir = out / "data", out / "packed", out / "run"
    with lock.exclusive(out, "demo folder"):
        _claim(out, seed, fresh, overwrite)

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
        train(run, packed, run_dir, overwrite=True)  # only the demo's own (interrupted) run can be here
    else:
        print(f"[3/4] train: reusing {ckpt.latest(run_dir)}")

    from jepa_fast.probe_report import format_table, run_probe

    print("[4/4] probe: the course project's protocol on probe_normal, probe_wall, wall_other, expert")
    res = run_probe(run_dir, packed, run_dir / "probe", overwrite=True)

    import numpy as np

    from jepa_fast.sim.generate import load_split
    from jepa_fast.viz import trajectory_grid

    d = load_split(raw / "train")
    trajectory_grid(np.asarray(d["states"][:4]), np.asarray(d["locations"][:4]), out / "sample_train.png")
    print()
    print(format_table(res))
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
