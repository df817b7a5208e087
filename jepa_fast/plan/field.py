"""The latent cost field: how far the model's latent distance to a goal keeps telling near from far.

A greedy latent cost can only lead the agent to a goal from where the squared latent distance still grows
with the true distance. For each same-room episode, ``points`` positions are drawn uniformly in the goal's
room, rendered in the episode's layout and encoded; their squared latent distance to the goal's latent is
binned by their true distance (pixels). Two numbers summarise the field:

* **reach**: the true distance (the upper edge of a bin) up to which the bins' median latent distance keeps
  increasing; beyond it the field is flat or falls, and a plan that starts there is led astray;
* **rank agreement**: over random pairs of positions of one episode whose true distances differ by more than
  3 px, the fraction whose latent distances are ordered the same way (1 = a perfect cost, 0.5 = none).

It uses the encoder alone (no rollout), so it separates "the latent distance is the wrong cost" from "the
predictor's rollouts are wrong": with the true dynamics, a model whose reach is shorter than the start-goal
distance stalls just as its rollouts do.
"""

from __future__ import annotations

import numpy as np

from jepa_fast.config import SimConfig
from jepa_fast.plan.episodes import Episodes, room_points

EDGES = (0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 25.0, 30.0, 40.0, 60.0)
"""Bins of true distance to the goal (pixels)."""


def cost_field(agent, eps: Episodes, sim: SimConfig, points: int = 256, seed: int = 0, pairs: int = 2000) -> dict:
    """The field of ``agent`` (a ModelAgent: its ``encode``) on the same-room episodes ``eps``:
    {'edges', 'median' (per bin, None when empty), 'count', 'reach', 'rank_agreement'}."""
    rng = np.random.default_rng(seed)
    true, latent = [], []
    goals = agent.encode(eps.goal, eps)  # (N, D)
    for i in range(len(eps)):
        one = eps.take(np.zeros(points, np.int64) + i)
        pos = room_points(rng, sim, one.wall_x, one.goal[:, 0] < one.wall_x)
        z = agent.encode(pos, one)  # (points, D)
        latent.append((z - goals[i]).pow(2).sum(-1).cpu().numpy())
        true.append(np.linalg.norm(pos - eps.goal[i], axis=1))
    t, lat = np.concatenate(true), np.concatenate(latent)
    median, count = [], []
    for lo, hi in zip(EDGES, EDGES[1:]):
        m = (t >= lo) & (t < hi)
        count.append(int(m.sum()))
        median.append(float(np.median(lat[m])) if m.any() else None)
    reach, best = 0.0, -np.inf
    for hi, v in zip(EDGES[1:], median):
        if v is None:
            continue
        if v <= best:
            break
        reach, best = hi, v
    agree = []
    for tt, ll in zip(true, latent):
        a, b = rng.integers(0, len(tt), (2, pairs))
        m = np.abs(tt[a] - tt[b]) > 3
        agree.append(np.mean((tt[a][m] > tt[b][m]) == (ll[a][m] > ll[b][m])) if m.any() else np.nan)
    return {"edges": list(EDGES), "median": median, "count": count, "reach": reach,
            "rank_agreement": float(np.nanmean(agree))}


def format_field(fields: dict[str, dict]) -> str:
    """A table: one row per model, the median squared latent distance per true-distance bin, reach, agreement."""
    edges = next(iter(fields.values()))["edges"]
    bins = [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])]
    rows = ["| model | reach (px) | rank agreement | " + " | ".join(bins) + " |",
            "|---|---|---|" + "---|" * len(bins)]
    for name, f in fields.items():
        cells = ["-" if v is None else f"{v:.3g}" for v in f["median"]]
        rows.append(f"| {name} | {f['reach']:g} | {f['rank_agreement']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
