"""Probing speed: our cached-embedding protocol vs the straightforward one, same checkpoint and data.

    python -m bench.bench_probe [--data-preset small] [--train-steps 30]

The straightforward protocol (the original evaluator's) re-runs the frozen model on every prober
batch of every epoch; ours computes each split's rollout embeddings once. Both train the prober
with the same seed, shuffles and timestep samples, so the numbers must agree.
Target: the same numbers, >= 10x faster.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench._data import packed_dataset
from bench.common import header, print_json, print_table
from jepa_fast.config import ProbeConfig, apply_overrides, run_preset
from jepa_fast.probe import VAL_SETS, probe_model
from jepa_fast.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-preset", default="small", help="dataset preset to simulate (small or full)")
    ap.add_argument("--train-steps", type=int, default=30, help="steps of ours-small to make the checkpoint")
    args = ap.parse_args()
    header("bench_probe: cached embeddings vs re-running the model every prober epoch")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="bench_probe-"))
    try:
        packed = packed_dataset(work, args.data_preset)
        run = apply_overrides(run_preset("ours-small"), [f"train.max_steps={args.train_steps}"])
        model = train(run, packed, work / "run", progress=False)["model"].to(device).eval()
        precision = "fp32"  # the original evaluator's embeddings
        t = time.perf_counter()
        fast = probe_model(model, packed, ProbeConfig(cache=True), device, precision)
        t_fast = time.perf_counter() - t
        t = time.perf_counter()
        slow = probe_model(model, packed, ProbeConfig(cache=False), device, precision)
        t_slow = time.perf_counter() - t
        rows = [{"set": name, "cached": fast["losses"][name], "straightforward": slow["losses"][name],
                 "rel. diff": abs(fast["losses"][name] - slow["losses"][name]) / slow["losses"][name]}
                for name in VAL_SETS]
        print_table(rows, ["set", "cached", "straightforward", "rel. diff"])
        max_diff = max(r["rel. diff"] for r in rows)
        speed = t_slow / t_fast
        print(f"\nstraightforward {t_slow:.1f} s, cached {t_fast:.1f} s: {speed:.1f}x faster "
              f"(target >= 10x: {'MET' if speed >= 10 else 'NOT MET'}); max relative difference {max_diff:.2e}")
        print_json({"bench": "probe", "device": str(device), "cached_s": round(t_fast, 3),
                    "straightforward_s": round(t_slow, 3), "cached_vs_straightforward": round(speed, 2),
                    "max_rel_diff": max_diff, **{f"{k}_cached": round(v, 4) for k, v in fast["losses"].items()}})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
