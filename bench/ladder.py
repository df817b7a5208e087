"""The budget ladder of ``bench_quality --ladder``: probe MSE against training frames, ours vs the reference recipe.

Each rung is one training run of a preset at a frame budget (``train.frames``: its own cosine schedule, as a
user would run that budget), probed with the original protocol on the full-size probe sets of one seed.
Rungs live in ``<work>/runs/<preset>-<budget>-s<seed>[-<hash of the overrides>]``; a rung whose ``rung.json``
exists is read back (refused if the preset's configuration changed since), an interrupted one resumes from
its last checkpoint (``train(..., resume=True)``), so a long ladder survives being stopped and run again with
the same ``--keep`` folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import time
from pathlib import Path

import torch

from jepa_fast import atomic
from jepa_fast import checkpoint as ckpt
from jepa_fast.config import apply_overrides, run_preset, to_dict
from jepa_fast.errors import JepaFastError
from jepa_fast.probe import VAL_SETS, probe_model
from jepa_fast.schedule import frame_label

BUDGETS = (300_000, 1_000_000, 2_500_000, 3_750_000)
"""Training frames of the CPU ladder: 0.3M (the demo's order), 1M, one epoch of the full train split, and a
tenth of the published budget (15 epochs x 2.5M frames = 37.5M, a GPU rung: ``--budgets ... 37.5M``)."""

PUBLISHED_FRAMES = 37_500_000

PUBLISHED_PROBED = {"probe_normal": 3.62, "probe_wall": 6.29, "wall_other": 4.21, "expert": 8.68}
"""The course project's published weights (``jepa-fast import-reference``), probed by ``jepa-fast probe``
(fp32, the original protocol) on the full-size seed-7 probe sets: the ladder's bar (``--published PATH``
re-measures it from the weights file)."""


def rung(packed: Path, work: Path, preset: str, frames: int, seed: int, device: torch.device,
         extra: list[str] = ()) -> dict:
    """Train (or resume, or read back) one rung and probe it; returns its record (also ``rung.json``)."""
    tag = "-" + hashlib.sha1("\n".join(extra).encode()).hexdigest()[:8] if extra else ""  # a recipe under test
    out = work / "runs" / f"{preset}-{frame_label(frames)}-s{seed}{tag}"
    done = out / "rung.json"
    run = apply_overrides(run_preset(preset), [f"train.seed={seed}", f"data.seed={seed}", "train.max_steps=-1",
                                               f"train.frames={frames}", "train.save_every=100", *extra])
    config_sha = hashlib.sha1(json.dumps(to_dict(run), sort_keys=True).encode()).hexdigest()[:12]
    if done.exists():
        rec = json.loads(done.read_text())
        if rec.get("config_sha", config_sha) != config_sha:
            raise JepaFastError(f"{out}: this rung was trained with another configuration of preset {preset!r} "
                                "(the preset changed since); move the folder away or use another --keep")
        return rec
    from jepa_fast.train import train

    t = time.perf_counter()
    summary = train(run, packed, out, resume=ckpt.latest(out) is not None, progress=False)
    train_s = time.perf_counter() - t
    model = summary["model"].to(device).eval()
    res = probe_model(model, packed, device=device)  # fp32 embeddings, as the original evaluator
    rec = {"preset": preset, "frames": summary["frames"], "budget": frames, "seed": seed, "steps": summary["step"],
           "train_s": round(train_s, 1), "frames_per_s": round(summary["last"]["frames_per_s"]),
           "extra": list(extra), "config_sha": config_sha, **{k: round(v, 4) for k, v in res["losses"].items()}}
    atomic.atomic_write_text(done, json.dumps(rec, indent=1))
    return rec


def recipe(rec: dict) -> str:
    """A rung's recipe: its preset, and the overrides it was trained with."""
    return " ".join([rec["preset"], *rec.get("extra", [])])


def finished(work: Path) -> list[dict]:
    """Every finished rung under ``work/runs`` (any preset, budget, seed or overrides)."""
    return [json.loads(f.read_text()) for f in sorted((Path(work) / "runs").glob("*/rung.json"))]


def summarise(records: list[dict], published: dict[str, float]) -> tuple[list[dict], dict]:
    """Table rows (mean over seeds, with the range) and the JSON figures of the ladder."""
    rows, fig = [], {}
    keys = sorted({(recipe(r), r["budget"]) for r in records}, key=lambda k: (k[0], k[1]))
    for name, budget in keys:
        rs = [r for r in records if recipe(r) == name and r["budget"] == budget]
        preset = re.sub(r"[^A-Za-z0-9]+", "_", name)  # a JSON key
        row = {"recipe": name, "frames": frame_label(budget), "seeds": len(rs),
               "train s": statistics.mean(r["train_s"] for r in rs)}
        for k in VAL_SETS:
            vals = [r[k] for r in rs]
            m = statistics.mean(vals)
            row[k] = f"{m:.2f}" + (f" ({min(vals):.2f}-{max(vals):.2f})" if len(vals) > 1 else "")
            fig[f"{preset}_{frame_label(budget)}_{k}"] = round(m, 4)
            if preset.startswith("ours"):
                fig[f"published_vs_{preset}_{frame_label(budget)}_{k}"] = round(published[k] / m, 3)
        rows.append(row)
    rows.append({"recipe": "published weights (course project)", "frames": frame_label(PUBLISHED_FRAMES),
                 **{k: f"{v:.2f}" for k, v in published.items()}})
    return rows, fig


def goal(records: list[dict], published: dict[str, float], name: str = "ours",
         limit: int = PUBLISHED_FRAMES // 10) -> dict:
    """The smallest budget <= ``limit`` at which recipe ``name`` (mean over seeds) beats ``published`` on all
    four sets, else the budget that comes closest (the smallest worst-set ratio of our MSE to theirs)."""
    by_budget: dict[int, dict[str, float]] = {}
    for b in sorted({r["budget"] for r in records if recipe(r) == name and r["budget"] <= limit}):
        rs = [r for r in records if recipe(r) == name and r["budget"] == b]
        by_budget[b] = {k: statistics.mean(r[k] for r in rs) for k in VAL_SETS}
    if not by_budget:
        return {"met": False, "budget": None}
    worst = {b: max(v[k] / published[k] for k in VAL_SETS) for b, v in by_budget.items()}
    met = [b for b, w in worst.items() if w < 1]
    b = min(met) if met else min(worst, key=worst.get)
    return {"met": bool(met), "budget": b, "worst_ratio": round(worst[b], 3),
            "worst_set": max(VAL_SETS, key=lambda k: by_budget[b][k] / published[k])}


def plot(records: list[dict], published: dict[str, float], path: Path) -> None:
    """Probe MSE vs training frames, one panel per probe set; the published weights as a line."""
    from jepa_fast.viz import _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, len(VAL_SETS), figsize=(4.2 * len(VAL_SETS), 3.6))
    names = sorted({recipe(r) for r in records})
    for ax, k in zip(axes, VAL_SETS):
        for name in names:
            budgets = sorted({r["budget"] for r in records if recipe(r) == name})
            vals = [[r[k] for r in records if recipe(r) == name and r["budget"] == b] for b in budgets]
            mean = [statistics.mean(v) for v in vals]
            line, = ax.plot(budgets, mean, "o-", label=name)
            if any(len(v) > 1 for v in vals):
                ax.fill_between(budgets, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2,
                                color=line.get_color())
        ax.axhline(published[k], color="k", ls="--", lw=1, label="published weights (37.5M frames)")
        ax.axvline(PUBLISHED_FRAMES / 10, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(k)
        ax.set_xlabel("training frames")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("probe MSE (pixels^2)")
    axes[-1].legend(fontsize=7)
    fig.suptitle("probe MSE vs training frames (dotted: a tenth of the published budget)")
    save_figure(fig, path)
