"""``jepa-fast plan``: every agent on the same episodes, the numbers per stratum, the report written whole."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from jepa_fast import atomic, lock
from jepa_fast.config import PlanConfig, SimConfig
from jepa_fast.errors import JepaFastError
from jepa_fast.hardware import keep_freed_memory, resolve_device
from jepa_fast.plan.episodes import SETS, Episodes, make_episodes, strata, stratum_names
from jepa_fast.plan.field import cost_field, format_field
from jepa_fast.plan.mpc import ModelAgent, OracleAgent, RandomAgent, run_episodes

# ---------------------------------------------------------------------------------------------
# outcomes -> numbers


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(paths: np.ndarray, eps: Episodes, groups: list[str], cfg: PlanConfig) -> dict[str, dict]:
    """Per stratum (and 'all'): n, success rate and its interval, final distance, reached-ever, steps to success."""
    dist = np.linalg.norm(paths - eps.goal[:, None], axis=-1)  # (N, max_steps + 1)
    success = dist[:, -1] < cfg.success_radius
    within = dist < cfg.success_radius
    reached = within.any(1)
    first = np.where(reached, within.argmax(1), -1)
    out = {}
    present = set(groups)
    for name in ["all", *(g for g in stratum_names(cfg) if g in present)]:
        m = np.ones(len(eps), bool) if name == "all" else np.asarray([g == name for g in groups])
        k, n = int(success[m].sum()), int(m.sum())
        lo, hi = wilson(k, n)
        hits = first[m & reached]
        out[name] = {"n": n, "success": k / n if n else 0.0, "ci95": [lo, hi], "successes": k,
                     "final_distance": float(dist[m, -1].mean()) if n else math.nan,
                     "reached_ever": float(reached[m].mean()) if n else 0.0,
                     "steps_to_success": float(np.median(hits)) if len(hits) else None}
    return out


# ---------------------------------------------------------------------------------------------
# the command


def load_planning_model(run: Path, sim: SimConfig, device: torch.device) -> torch.nn.Module:
    """A run folder or checkpoint whose model takes the simulator's frames and actions (one line otherwise)."""
    from jepa_fast.probe import load_checkpoint_model

    model, _ = load_checkpoint_model(Path(run), device)
    C, H, W = model.spec.frame_shape
    S = sim.image_size
    if (C, H, W) != (2, S, S) or model.spec.action_size != 2:
        raise JepaFastError(f"{run}: its model takes {C}x{H}x{W} frames and {model.spec.action_size}-d actions; the "
                            f"two-rooms simulator renders 2x{S}x{S} frames with 2-d actions: plan with a two-rooms run")
    return model


def model_name(run: Path) -> str:
    run = Path(run)
    return run.parent.parent.name if run.parent.name == "checkpoints" else run.name


def evaluate(agents: list, cfg: PlanConfig, sim: SimConfig, log=print) -> dict:
    """Every agent on both episode sets: {'sets': {set: {'strata': [...]}}, 'agents': {name: {set: summary}}}."""
    sets = {k: make_episodes(k, cfg, sim) for k in SETS}
    groups = {k: strata(e, cfg, sim) for k, e in sets.items()}
    res: dict = {"agents": {}, "paths": {}, "plans": {}, "episodes": {}}
    for k, e in sets.items():
        res["episodes"][k] = {"start": e.start.tolist(), "goal": e.goal.tolist(), "wall_x": e.wall_x.tolist(),
                              "door_y": e.door_y.tolist(), "stratum": groups[k]}
    for agent in agents:
        res["agents"][agent.name] = {}
        for k, e in sets.items():
            o = run_episodes(agent, e, cfg, sim)
            s = summarise(o.paths, e, groups[k], cfg)
            s["seconds"], s["rollouts"] = o.seconds, o.rollouts
            res["agents"][agent.name][k] = s
            res["paths"][(agent.name, k)], res["plans"][(agent.name, k)] = o.paths, o.plans
            log(f"plan | {agent.name:<16} | {k:<5} | success {s['all']['success']:6.1%} "
                f"[{s['all']['ci95'][0]:.0%}, {s['all']['ci95'][1]:.0%}] | final distance "
                f"{s['all']['final_distance']:5.1f} px | {o.seconds:6.1f} s")
    res["sets"] = sets
    return res


def format_report(res: dict, cfg: PlanConfig) -> str:
    """The report's table: one row per agent, set and stratum."""
    rows = ["| planner | set | stratum | n | success | 95% interval | final distance (px) | reached ever | "
            "steps to success (median) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, by_set in res["agents"].items():
        for k in SETS:
            for stratum, s in by_set[k].items():
                if not isinstance(s, dict):
                    continue
                steps = "-" if s["steps_to_success"] is None else f"{s['steps_to_success']:g}"
                rows.append(f"| {name} | {k} | {stratum} | {s['n']} | {s['success']:.1%} | {s['ci95'][0]:.0%}-"
                            f"{s['ci95'][1]:.0%} | {s['final_distance']:.1f} | {s['reached_ever']:.0%} | {steps} |")
    return "\n".join(rows)


def run_plan(run: Path, out: Path | None = None, cfg: PlanConfig | None = None, compare: list[Path] = (),
             device: str | None = None, budgets: tuple[int, ...] = (), baselines: bool = True,
             overwrite: bool = False, graph: Path | None = None, log=print) -> dict:
    """``jepa-fast plan``: the baselines, ``run`` and every ``compare`` model on the same episodes; the report
    (report.md, results.json, episodes.png, success_vs_budget.png) is written whole or not at all. With
    ``graph`` (a packed two-rooms training store or dataset root), every model plans a second time with
    subgoals from that data's trajectories (``jepa_fast.plan.graph``), reported as '<model> + graph'. ``budgets``
    re-runs ``run``'s planner (with the graph when there is one) on the cross-room set at other sample counts."""
    cfg, sim = cfg or PlanConfig(), SimConfig()
    dev = resolve_device(device)
    keep_freed_memory()  # large batches on a CPU: no page faults per step (jepa_fast.hardware)
    run = Path(run)
    if out is None:
        out = (run if run.is_dir() and not (run / "state.pt").exists() else run.parent.parent) / "plan"
    if any(b < 1 for b in budgets):
        raise JepaFastError(f"--budgets {','.join(map(str, budgets))}: sample counts must be >= 1")
    out = Path(out)
    inputs = {"run": run, "graph": Path(graph) if graph else None, **{f"compare {c}": Path(c) for c in compare}}
    atomic.check_apart(out, inputs, "plan folder")
    with lock.exclusive(out, "plan folder"):
        atomic.check_destination(out, overwrite, "plan folder")
        models = [(model_name(r), load_planning_model(r, sim, dev)) for r in [run, *compare]]
        names = [m for m, _ in models]
        if len(set(names)) < len(names):
            names = [f"{m} ({i + 1})" for i, m in enumerate(names)]
        agents = [RandomAgent(), OracleAgent("oracle-greedy", sim, cfg, False),
                  OracleAgent("oracle-door", sim, cfg, True)] if baselines else []
        plain = [ModelAgent(n, m, sim, cfg, dev) for n, (_, m) in zip(names, models)]
        agents += plain
        swept = plain[0]
        if graph is not None:
            from jepa_fast.plan.graph import LayoutIndex

            index = LayoutIndex(Path(graph), models[0][1].spec.static_channels)
            graphed = [ModelAgent(f"{n} + graph", m, sim, cfg, dev, graph=index) for n, (_, m) in zip(names, models)]
            agents += graphed
            swept = graphed[0]
        t0 = time.perf_counter()
        res = evaluate(agents, cfg, sim, log)
        sweep = budget_sweep(swept, cfg, sim, res, budgets, log) if budgets else {}
        res["budget"] = sweep
        res["field"] = {a.name: cost_field(a, res["sets"]["same"], sim, seed=cfg.seed) for a in plain}
        with atomic.atomic_dir(out, overwrite, "plan folder", locked=True) as tmp:
            write_report(res, cfg, tmp, run, compare, time.perf_counter() - t0)
    res["out"] = str(out)
    return res


def budget_sweep(agent: ModelAgent, cfg: PlanConfig, sim: SimConfig, res: dict, budgets, log) -> dict:
    """Cross-room success of ``agent`` at each sample count in ``budgets`` (the run's own count included)."""
    eps = res["sets"]["cross"]
    groups = strata(eps, cfg, sim)
    sweep = {cfg.samples: res["agents"][agent.name]["cross"]["all"]}
    for S in sorted(set(budgets) - {cfg.samples}):
        o = run_episodes(agent, eps, dataclasses.replace(cfg, samples=S), sim)
        sweep[S] = summarise(o.paths, eps, groups, cfg)["all"]
        log(f"plan | {agent.name:<16} | cross | {S} samples: success {sweep[S]['success']:.1%}")
    return {"agent": agent.name, "success": {int(S): s["success"] for S, s in sorted(sweep.items())},
            "ci95": {int(S): s["ci95"] for S, s in sorted(sweep.items())}}


def write_report(res: dict, cfg: PlanConfig, out: Path, run: Path, compare, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    blob = {"config": dataclasses.asdict(cfg), "run": str(run), "compare": [str(c) for c in compare],
            "seconds": seconds, "agents": res["agents"], "episodes": res["episodes"], "budget": res["budget"],
            "field": res["field"]}
    atomic.atomic_write_text(out / "results.json", json.dumps(blob, indent=2))
    c = cfg
    text = (f"# Planning in two rooms: {run}\n\n{c.planner.upper()}, {c.samples} samples x {c.iterations} iterations, "
            f"horizon {c.horizon}, {c.replan_every} actions per re-plan, {c.max_steps} steps, success within "
            f"{c.success_radius:g} px, cost = {c.cost} latent distance; {c.episodes} episodes per set "
            f"({c.layouts} layouts, seed {c.seed}); {seconds:.0f} s in all.\n\n" + format_report(res, cfg) + "\n")
    if res["field"]:
        text += ("\n## The latent cost field\n\nMedian squared latent distance to the goal by true distance (px), "
                 "positions drawn in the goal's room of each same-room episode, encoder only "
                 "(jepa_fast/plan/field.py). "
                 "Reach: the distance up to which it keeps growing; a plain latent cost cannot lead the agent in "
                 "from farther.\n\n" + format_field(res["field"]) + "\n")
    atomic.atomic_write_text(out / "report.md", text)
    _plot_episodes(res, out / "episodes.png")
    if res["budget"]:
        from jepa_fast.viz import line_plot

        b = res["budget"]
        xs = np.asarray(list(b["success"]), float)
        line_plot({b["agent"]: (xs, np.asarray(list(b["success"].values())))}, out / "success_vs_budget.png",
                  "samples per iteration", "cross-room success", title="success vs planning budget")


def _plot_episodes(res: dict, path: Path, n: int = 4) -> None:
    """A few cross-room episodes per planning agent: walls, the real path, each re-plan's planned path, the goal."""
    from jepa_fast.sim.env import wall_masks
    from jepa_fast.viz import _plt, save_figure

    plt = _plt()
    sim = SimConfig()
    eps = res["sets"]["cross"]
    names = [a for a in res["agents"] if a != "random"]
    n = min(n, len(eps))
    fig, axes = plt.subplots(len(names), n, figsize=(3 * n, 3 * len(names)), squeeze=False)

    for r, name in enumerate(names):
        paths, plans = res["paths"][(name, "cross")], res["plans"][(name, "cross")]
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(wall_masks(sim, eps.wall_x[i:i + 1].astype(int), eps.door_y[i:i + 1].astype(int))[0],
                      cmap="Greys", vmin=0, vmax=2)
            for p in plans.get(i, []):
                ax.plot(p[:, 0], p[:, 1], color="orange", lw=0.6, alpha=0.6)
            ax.plot(paths[i, :, 0], paths[i, :, 1], color="tab:blue", lw=1.5)
            ax.plot(*eps.start[i], "o", color="tab:green", ms=5)
            ax.plot(*eps.goal[i], "*", color="red", ms=9)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name)
    fig.suptitle("cross-room episodes: real path (blue), planned paths (orange), start (green), goal (red)")
    save_figure(fig, path)
