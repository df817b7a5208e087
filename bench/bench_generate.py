"""Simulator throughput: dynamics, rendering and file I/O of the train-split generator, side by side.

    python -m bench.bench_generate [--n 20000] [--workers 2] [--dir /tmp]

Target: the full train split's 2.5M frames in under a minute of generation (rendering and
dynamics) on 2 cores, i.e. >= 45,000 frames/s. File I/O is measured separately (writing the .npy
files of the same trajectories), because it depends on the disk, not on the simulator.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.common import header, print_json, print_table
from jepa_fast.config import SimConfig, dataset_preset
from jepa_fast.sim import generate as gen

TARGET_FPS = 45_000
FULL = dataset_preset("full")
T = FULL.seq_len


def _blocks(args):
    """Generate blocks [b0, b1) of the train split in this process; returns frames made."""
    n, b0, b1, render, seed = args
    sim = SimConfig()
    frames = 0
    for block in gen.iter_blocks("train", n, T, sim, seed, render=render, blocks=range(b0, b1)):
        frames += len(block.actions) * T
    return frames


def run_generation(n: int, workers: int, render: bool, seed: int = 0) -> float:
    """Frames/s of generating n train trajectories in memory with ``workers`` processes."""
    n_blocks = -(-n // gen.block_size(T))
    per = -(-n_blocks // workers)
    jobs = [(n, w * per, min(n_blocks, (w + 1) * per), render, seed) for w in range(workers)]
    t = time.perf_counter()
    if workers == 1:
        frames = _blocks(jobs[0])
    else:
        with ProcessPoolExecutor(workers) as pool:
            frames = sum(pool.map(_blocks, jobs))
    return frames / (time.perf_counter() - t)


def run_write(n: int, directory: Path) -> tuple[float, float]:
    """(frames/s, MB/s) of generating and writing the train split as float32 .npy files."""
    out = Path(tempfile.mkdtemp(dir=directory)) / "ds"
    t = time.perf_counter()
    gen.generate_dataset(out, dataset_preset("full", n_train=n, splits=["train"]), SimConfig(), progress=False)
    dt = time.perf_counter() - t
    nbytes = sum(f.stat().st_size for f in out.rglob("*.npy"))
    shutil.rmtree(out.parent)
    return n * T / dt, nbytes / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000,
                    help=f"train trajectories per measurement (full: {FULL.sizes['train']:,})")
    ap.add_argument("--workers", type=int, default=2, help="processes for the parallel measurement")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the I/O test writes")
    args = ap.parse_args()
    header("bench_generate: two-rooms train split generator")
    run_generation(2 * gen.block_size(T), 1, True)  # warm-up (imports, first-touch)
    dyn = run_generation(args.n, 1, render=False)
    one = run_generation(args.n, 1, render=True)
    par = run_generation(args.n, args.workers, render=True)
    write_fps, write_mbs = run_write(min(args.n, 20_000), args.dir)
    full_frames = FULL.sizes["train"] * T
    rows = [
        {"stage": "dynamics only, 1 process", "frames/s": dyn, "traj/s": dyn / T, "2.5M frames (s)": full_frames / dyn},
        {"stage": "dynamics + render, 1 process", "frames/s": one, "traj/s": one / T,
         "2.5M frames (s)": full_frames / one},
        {"stage": f"dynamics + render, {args.workers} processes", "frames/s": par, "traj/s": par / T,
         "2.5M frames (s)": full_frames / par},
        {"stage": "generate + write float32 .npy", "frames/s": write_fps, "traj/s": write_fps / T,
         "2.5M frames (s)": full_frames / write_fps, "MB/s": write_mbs},
    ]
    print_table(rows, ["stage", "frames/s", "traj/s", "2.5M frames (s)", "MB/s"])
    best = max(one, par)
    print(f"\ntarget >= {TARGET_FPS:,} frames/s (rendering + dynamics): {'MET' if best >= TARGET_FPS else 'NOT MET'}")
    print_json({
        "bench": "generate", "n_traj": args.n, "dynamics_fps": round(dyn), "render_fps_1proc": round(one),
        f"render_fps_{args.workers}proc": round(par), "write_fps": round(write_fps), "write_MBps": round(write_mbs),
        "full_train_split_s": round(full_frames / best, 2), "render_vs_target": round(best / TARGET_FPS, 2),
        f"{args.workers}proc_vs_1proc": round(par / one, 2),
    })


if __name__ == "__main__":
    main()
