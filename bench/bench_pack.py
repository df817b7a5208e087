"""Pack throughput versus plainly reading the same input, side by side in one run.

    python -m bench.bench_pack [--src SPLIT_DIR] [--n 6000] [--repeats 3] [--hot]

Without --src it simulates a float32 train split of --n trajectories first. Each repeat reads the
input file end to end (64 MiB ``readinto`` calls: the fastest plain read) and then packs it, both
from a cold page cache when the machine lets us drop it (root: /proc/sys/vm/drop_caches), because
the real data (85 GB) never fits in RAM. Medians are reported.

Targets: pack >= 60% of the read speed; the store >= 20x smaller than the float32 .npy.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench._data import train_split
from bench.common import header, print_json, print_table
from bench.naive import drop_caches
from jepa_fast.config import PackConfig
from jepa_fast.data.pack import pack_split
from jepa_fast.data.reader import StoreReader


def plain_read(path: Path) -> float:
    buf = bytearray(64 << 20)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=None, help="raw split folder (default: simulate one)")
    ap.add_argument("--n", type=int, default=6000, help="trajectories to simulate when --src is not given")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hot", action="store_true", help="do not drop the page cache between runs")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    header("bench_pack: pack vs plain read of the same float32 states.npy")
    work = Path(tempfile.mkdtemp(prefix="bench_pack-"))
    try:
        src = args.src
        if src is None:
            src, _ = train_split(work, args.n, pack=False)
        states = src / "states.npy"
        nbytes = states.stat().st_size
        import numpy as np

        N, T = np.load(states, mmap_mode="r").shape[:2]
        frames = N * T
        cold = not args.hot
        reads, packs = [], []
        for r in range(args.repeats):
            if cold and not drop_caches():
                print("cannot drop the page cache here (not root?): measuring hot")
                cold = False
            reads.append(plain_read(states))
            if cold:
                drop_caches()
            dst = work / f"s{r}.zarr"
            t = time.perf_counter()
            pack_split(src, dst, PackConfig(workers=args.workers), progress=False)
            packs.append(time.perf_counter() - t)
            stored = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
            StoreReader(dst)  # sanity: the store opens
            shutil.rmtree(dst)
        read_s, pack_s = statistics.median(reads), statistics.median(packs)
        rows = [
            {"stage": "plain read (readinto 64 MiB)", "frames/s": frames / read_s,
             "MB/s of input": nbytes / read_s / 1e6, "seconds": read_s},
            {"stage": "jepa-fast pack (lz4)", "frames/s": frames / pack_s, "MB/s of input": nbytes / pack_s / 1e6,
             "seconds": pack_s},
        ]
        print(f"input: {states} ({nbytes / 1e9:.2f} GB float32, {frames:,} frames), page cache "
              f"{'cold' if cold else 'hot'}, median of {args.repeats}\n")
        print_table(rows, ["stage", "frames/s", "MB/s of input", "seconds"])
        ratio = read_s / pack_s
        size_ratio = nbytes / stored
        print(f"\npack / read speed: {ratio:.2f} (target >= 0.60: {'MET' if ratio >= 0.6 else 'NOT MET'})")
        met = "MET" if size_ratio >= 20 else "NOT MET"
        print(f"float32 .npy / store size: {size_ratio:.1f}x (target >= 20x: {met})")
        print_json({"bench": "pack", "frames": frames, "cache": "cold" if cold else "hot",
                    "read_fps": round(frames / read_s), "pack_fps": round(frames / pack_s),
                    "read_MBps": round(nbytes / read_s / 1e6), "pack_MBps": round(nbytes / pack_s / 1e6),
                    "pack_vs_read": round(ratio, 3), "store_vs_npy_size": round(size_ratio, 1)})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
