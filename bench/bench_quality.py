"""Probe quality: the reference preset vs our default preset, same data, frame budget and seed.

    python -m bench.bench_quality [--budget cpu|gpu] [--seed 0]

Simulates one dataset, packs it, trains the ``reference`` and ``ours`` recipes (same model size,
477,664 parameters; same frames seen, same seed), probes both with the original protocol and prints
the table. cpu budget: the small dataset (3,072 train trajectories), 6 epochs at batch 64 (a few
minutes on 2 cores). gpu budget: the full dataset (147,008 trajectories = 2.5M frames), 15 epochs at
batch 512, the recipe as published.

Target: ours beats the reference on all four sets; the last line carries, per set,
``<set>_reference_vs_ours`` = reference MSE / our MSE (> 1 means ours is better).
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
from jepa_fast.config import apply_overrides, run_preset
from jepa_fast.model import count_parameters
from jepa_fast.probe import CHANCE, REFERENCE, VAL_SETS, probe_model
from jepa_fast.train import train

PUBLISHED_ON_OUR_SETS = {"probe_normal": 3.75, "probe_wall": 6.18, "wall_other": 4.25, "expert": 7.48}
"""The course project's published model_weights.pth, probed on our full-size simulated sets by its own evaluator
(fp32): the bar for our recipe at the published budget."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=["cpu", "gpu"], default=None, help="default: gpu when CUDA is available")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="keep runs and data in this folder")
    ap.add_argument("--ours-only", action="store_true",
                    help="train only our recipe and compare it with the course project's published weights probed on "
                    "our sets (the GPU acceptance run's last stage)")
    args = ap.parse_args()
    header("bench_quality: reference preset vs ours, probed with the original protocol")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget = args.budget or ("gpu" if device.type == "cuda" else "cpu")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_quality-"))
    try:
        packed = packed_dataset(work, "small" if budget == "cpu" else "full", seed=args.seed)
        presets = ("reference-small", "ours-small") if budget == "cpu" else ("reference", "ours")
        if args.ours_only:
            presets = presets[1:]
        results, rows = {}, []
        for preset in presets:
            run = apply_overrides(run_preset(preset), [f"train.seed={args.seed}", f"data.seed={args.seed}",
                                                       "train.save_every=-1"])
            shutil.rmtree(work / preset, ignore_errors=True)
            t = time.perf_counter()
            out = train(run, packed, work / preset, progress=False)
            train_s = time.perf_counter() - t
            model = out["model"].to(device).eval()
            res = probe_model(model, packed, device=device)  # fp32 embeddings, as the original evaluator
            results[preset] = res["losses"]
            rows.append({"preset": preset, "params": count_parameters(model), "train s": train_s,
                         **{k: v for k, v in res["losses"].items()}})
        if args.ours_only:
            ours = results[presets[0]]
            ratios = {f"{k}_published_vs_ours": round(PUBLISHED_ON_OUR_SETS[k] / ours[k], 3) for k in VAL_SETS}
            rows.append({"preset": "published weights, probed on our sets", "params": 477_664,
                         **PUBLISHED_ON_OUR_SETS})
            print_table(rows, ["preset", "params", "train s", *VAL_SETS])
            beats = all(v > 1 for v in ratios.values())
            print(f"\nours beats the published weights on all four sets: {'YES' if beats else 'NO'}")
            print_json({"bench": "quality", "budget": budget, "seed": args.seed, "device": str(device),
                        **{f"{k}_ours": round(v, 4) for k, v in ours.items()}, **ratios,
                        "ours_beats_published_on_all": beats})
            return
        ref_name, ours_name = presets
        rows.append({"preset": "published reference (GPU, 2.5M frames x 15 epochs)", "params": 477_664,
                     **REFERENCE})
        rows.append({"preset": "chance (constant prober)", **{k: v for k, v in CHANCE.items()}})
        print(f"\nbudget {budget}, seed {args.seed}, device {device}; probe MSE in pixel^2 (lower is better)\n")
        print_table(rows, ["preset", "params", "train s", *VAL_SETS])
        ratios = {f"{k}_reference_vs_ours": round(results[ref_name][k] / results[ours_name][k], 3) for k in VAL_SETS}
        beats = all(v > 1 for v in ratios.values())
        print(f"\nours beats the reference preset on all four sets: {'YES' if beats else 'NO'} "
              f"({', '.join(f'{k} {v:.2f}x' for k, v in ratios.items())})")
        print_json({"bench": "quality", "budget": budget, "seed": args.seed, "device": str(device),
                    **{f"{k}_reference": round(v, 4) for k, v in results[ref_name].items()},
                    **{f"{k}_ours": round(v, 4) for k, v in results[ours_name].items()},
                    **ratios, "ours_beats_reference_on_all": beats})
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
