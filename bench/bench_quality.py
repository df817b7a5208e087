"""Probe quality: the reference preset vs our default preset, same data, frame budget and seed.

    python -m bench.bench_quality [--budget cpu|gpu] [--seed 0]
    python -m bench.bench_quality --ladder [--budgets 0.3M,1M,2.5M,3.75M] [--seeds 0] [--keep runs/ladder]

Simulates one dataset, packs it, trains the ``reference`` and ``ours`` recipes (same model size,
477,664 parameters; same frames seen, same seed), probes both with the original protocol and prints
the table. cpu budget: the small dataset (3,072 train trajectories), 6 epochs at batch 64 (a few
minutes on 2 cores). gpu budget: the full dataset (147,008 trajectories = 2.5M frames), 15 epochs at
batch 512, the recipe as published.

Target: ours beats the reference on all four sets; the last line carries, per set,
``<set>_reference_vs_ours`` = reference MSE / our MSE (> 1 means ours is better).

``--ladder`` (``bench/ladder.py``): ``ours`` and ``reference`` at each training budget in frames, same seeds,
on the full-size simulated dataset of seed 7 (train split and the four probe sets), each rung probed with
the original protocol; the course project's published weights are the bar. Prints the table, writes
``ladder.png`` (probe MSE vs frames per set) and ``ladder.json`` into the work folder, and ends with the
JSON line: per rung and set the MSE, ``published_vs_ours_<budget>_<set>`` (> 1: ours is better), and the
goal, ours beating the published weights on all four sets with <= 3.75M frames. Rungs are resumable: run
the same command again after an interruption.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench._data import packed_dataset
from bench.common import header, print_json, print_table
from jepa_fast import atomic
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
    ap.add_argument("--ladder", action="store_true", help="the budget ladder (see above)")
    ap.add_argument("--budgets", default="0.3M,1M,2.5M,3.75M", help="ladder: training frames per rung")
    ap.add_argument("--seeds", default="0", help="ladder: comma-separated training seeds")
    ap.add_argument("--presets", default="ours,reference", help="ladder: run presets to climb it")
    ap.add_argument("--data-seed", type=int, default=7, help="ladder: seed of the full-size simulated dataset")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="ladder: config overrides for every rung (a recipe under test; recorded per rung)")
    ap.add_argument("--report", action="store_true", help="ladder: train nothing; the table, plot and JSON of every "
                    "finished rung in the --keep folder (all presets, budgets, seeds and --set recipes)")
    ap.add_argument("--published", type=Path, default=None, metavar="WEIGHTS",
                    help="ladder: probe the course project's model_weights.pth on the same sets for the bar "
                    "(default: its figures measured that way, bench/ladder.py PUBLISHED_PROBED)")
    args = ap.parse_args()
    if args.ladder:
        return run_ladder(args)
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


def run_ladder(args) -> None:
    from bench import ladder
    from jepa_fast.errors import JepaFastError
    from jepa_fast.schedule import frame_count, frame_label

    header("bench_quality --ladder: probe MSE vs training frames, ours and the reference recipe")
    try:
        budgets = [frame_count(b) for b in args.budgets.split(",")]
    except JepaFastError as e:
        raise SystemExit(f"error: --budgets: {e}") from None
    seeds = [int(s) for s in args.seeds.split(",")]
    presets = args.presets.split(",")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = args.keep or Path("runs/ladder")
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    packed = packed_dataset(work, "full", seed=args.data_seed)
    print(f"data: full-size simulated dataset, seed {args.data_seed}, in {work} ({time.perf_counter() - t:.0f} s)")
    published = dict(ladder.PUBLISHED_PROBED)
    if args.published is not None:
        from jepa_fast.probe import load_checkpoint_model
        from jepa_fast.reference import import_reference

        run = import_reference(args.published, work / "published", overwrite=True)  # as import-reference does
        published = probe_model(load_checkpoint_model(run, device)[0], packed, device=device)["losses"]
    records = ladder.finished(work) if args.report else []
    for budget in budgets if not args.report else []:
        for preset in presets:
            for seed in seeds:
                rec = ladder.rung(packed, work, preset, budget, seed, device, args.set)
                print(f"{preset} {frame_label(budget)} seed {seed}: {rec['steps']} steps, {rec['train_s']:.0f} s, "
                      + ", ".join(f"{k} {rec[k]:.2f}" for k in VAL_SETS), flush=True)
                records.append(rec)
    rows, fig = ladder.summarise(records, published)
    print(f"\nprobe MSE (pixels^2, lower is better; mean over seeds, range in brackets), device {device}\n")
    print_table(rows, ["recipe", "frames", "seeds", "train s", *VAL_SETS])
    # the goal, for every recipe of the first preset: the best one is the headline
    goals = {n: ladder.goal(records, published, n) for n in sorted({ladder.recipe(r) for r in records})
             if n.split()[0] == presets[0]}
    name = min(goals, key=lambda n: (not goals[n]["met"], goals[n].get("worst_ratio") or float("inf")),
               default=presets[0])
    g = goals.get(name, {"met": False, "budget": None})
    for n, gn in goals.items():
        print(f"{n}: {'beats' if gn['met'] else 'does not beat'} the published weights on all four sets with <= "
              f"3.75M frames (budget {frame_label(gn['budget']) if gn['budget'] else '-'}: worst set "
              f"{gn.get('worst_set')} at {gn.get('worst_ratio')}x their MSE)")
    ladder.plot(records, published, work / "ladder.png")
    summary = {"records": records, "published": published, "goal": g, "overrides": args.set}
    atomic.atomic_write_text(work / "ladder.json", json.dumps(summary, indent=1))
    print(f"\ngoal, {name} beats the published weights on all four sets with <= 3.75M frames: "
          f"{'MET' if g['met'] else 'NOT MET'}; plot: {work / 'ladder.png'}")
    print_json({"bench": "quality_ladder", "device": str(device), "seeds": seeds, "data_seed": args.data_seed,
                "budgets": budgets, "overrides": args.set, **fig, "goal_met": g["met"],
                "goal_recipe": name, "goal_budget": g["budget"], "goal_worst_ratio": g.get("worst_ratio")})


if __name__ == "__main__":
    main()
