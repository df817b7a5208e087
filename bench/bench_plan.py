"""Planning speed: every episode in one batched rollout per iteration vs one episode at a time, same episodes.

    python -m bench.bench_plan [--run RUN] [--episodes 16] [--max-steps 40] [--samples 256]

Both plan the same cross-room episodes with the same model, planner and seeds (each episode samples from its
own noise stream, so batching does not change what it samples): the paths must agree, and the bench says by
how much they differ (float rounding in batched matrix products can reorder near-tied samples). Without
``--run`` it trains ``ours-small`` for a few steps on the small preset: the speed does not depend on how well
the model plans. Reports episodes/s and latent rollouts/s (action sequences of H steps rolled out per second).
Target: batched >= 10x one at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import header, print_json, print_table
from jepa_fast.config import PlanConfig, SimConfig
from jepa_fast.plan import ModelAgent, load_planning_model, make_episodes, run_episodes


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a two-rooms run folder or checkpoint (default: train one)")
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=40, help="simulator steps per episode (the protocol's is 120)")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--planner", choices=["cem", "mppi"], default="cem")
    args = ap.parse_args(argv)
    header("bench_plan: batched planning vs one episode at a time")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="bench_plan-"))
    try:
        run = args.run or _quick_run(work)
        sim = SimConfig()
        cfg = PlanConfig(episodes=args.episodes, max_steps=args.max_steps, samples=args.samples, planner=args.planner)
        model = load_planning_model(run, sim, device)
        eps = make_episodes("cross", cfg, sim)
        rows, out = [], {}
        for name, batch in (("batched", 0), ("one at a time", 1)):
            agent = ModelAgent("model", model, sim, dataclasses.replace(cfg, batch=batch), device)
            run_episodes(agent, eps.take(slice(0, 1)), dataclasses.replace(cfg, max_steps=cfg.replan_every), sim)
            o = run_episodes(agent, eps, dataclasses.replace(cfg, batch=batch), sim)
            out[name] = o
            rows.append({"mode": name, "seconds": round(o.seconds, 2), "episodes/s": round(len(eps) / o.seconds, 3),
                         "latent rollouts/s": round(o.rollouts / o.seconds)})
        diff = float(np.abs(out["batched"].paths - out["one at a time"].paths).max())
        print(f"{len(eps)} cross-room episodes x {cfg.max_steps} steps, {cfg.planner.upper()} {cfg.samples} x "
              f"{cfg.iterations}, horizon {cfg.horizon}, on {device}; largest path difference between the modes: "
              f"{diff:.3g} px")
        print_table(rows, ["mode", "seconds", "episodes/s", "latent rollouts/s"])
        ratio = out["one at a time"].seconds / out["batched"].seconds
        print(f"batched vs one at a time: {ratio:.1f}x (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
        figures = {"bench": "plan", "episodes": len(eps), "max_steps": cfg.max_steps, "samples": cfg.samples,
                    "device": str(device), "batched_eps_per_s": rows[0]["episodes/s"],
                    "sequential_eps_per_s": rows[1]["episodes/s"],
                   "batched_rollouts_per_s": rows[0]["latent rollouts/s"],
                    "max_path_difference_px": round(diff, 4), "batched_vs_sequential": round(ratio, 2)}
        print_json(figures)
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _quick_run(work: Path) -> Path:
    from bench._data import packed_dataset
    from jepa_fast.config import apply_overrides, run_preset
    from jepa_fast.train import train

    packed = packed_dataset(work, "small")
    train(apply_overrides(run_preset("ours-small"), ["train.max_steps=20"]), packed, work / "run", progress=False)
    return work / "run"


if __name__ == "__main__":
    main()
