"""Goal-reaching episodes in the two-rooms simulator: the seeded sets, the door-aware distance, the strata."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jepa_fast.config import PlanConfig, SimConfig
from jepa_fast.sim.env import sample_layouts

SETS = ("cross", "same")
"""Episode sets: cross-room (through the door) and same-room."""

MARGIN = 2.0
"""Starts and goals keep this far (pixels) from every wall face and border line."""


# ---------------------------------------------------------------------------------------------
# episodes


@dataclasses.dataclass
class Episodes:
    """N goal-reaching episodes: start and goal (N, 2) positions (x, y), the layout (wall_x, door_y (N,))."""

    kind: str
    start: np.ndarray
    goal: np.ndarray
    wall_x: np.ndarray
    door_y: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def take(self, idx) -> Episodes:
        return Episodes(self.kind, self.start[idx], self.goal[idx], self.wall_x[idx], self.door_y[idx])


def room_points(rng: np.random.Generator, sim: SimConfig, wall_x: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Positions (n, 2) uniform inside the left or right room of each layout (MARGIN from the borders and the
    wall's faces): x drawn first, then y."""
    lo = np.where(left, sim.border_lo + MARGIN, wall_x + sim.wall_half + MARGIN)
    hi = np.where(left, wall_x - sim.wall_half - MARGIN, sim.border_hi - MARGIN)
    x = lo + (hi - lo) * rng.random(len(wall_x))
    return np.stack([x, rng.uniform(sim.border_lo + MARGIN, sim.border_hi - MARGIN, len(wall_x))], 1)


def make_episodes(kind: str, cfg: PlanConfig, sim: SimConfig) -> Episodes:
    """The seeded set ``kind`` ('cross' or 'same') of ``cfg.episodes`` episodes."""
    if kind not in SETS:
        raise ValueError(f"episode set {kind!r}: use {', '.join(SETS)}")
    rng = np.random.default_rng([cfg.seed, SETS.index(kind)])
    n = cfg.episodes
    wall_x, door_y = sample_layouts(rng, sim, n, cfg.layouts)
    wall_x, door_y = wall_x.astype(np.float64), door_y.astype(np.float64)
    left = rng.random(n) < 0.5
    start = room_points(rng, sim, wall_x, left)
    goal_left = ~left if kind == "cross" else left
    goal = room_points(rng, sim, wall_x, goal_left)
    if kind == "same":  # redraw goals closer than min_distance (rooms are at least 13 px wide: always possible)
        near = np.linalg.norm(goal - start, axis=1) < cfg.min_distance
        while near.any():
            goal[near] = room_points(rng, sim, wall_x[near], goal_left[near])
            near = np.linalg.norm(goal - start, axis=1) < cfg.min_distance
    return Episodes(kind, start, goal, wall_x, door_y)


def geodesic(p: np.ndarray, g: np.ndarray, wall_x: np.ndarray, door_y: np.ndarray, sim: SimConfig) -> np.ndarray:
    """Door-aware distance from positions p (..., 2) to goals g (..., 2) in layouts wall_x, door_y (...).

    Same side of the wall: the straight distance (each room is convex). Opposite sides: the shortest path
    p -> (near face, y) -> (far face, y) -> g over door rows y in [door_y - door_space + 0.5, door_y +
    door_space - 0.5] (41 candidates: exact to ~0.01 px for these sizes).
    """
    p, g = np.broadcast_arrays(p, g)
    wall_x, door_y = np.broadcast_arrays(wall_x, door_y)
    straight = np.linalg.norm(p - g, axis=-1)
    cross = (p[..., 0] < wall_x) != (g[..., 0] < wall_x)
    if not cross.any():
        return straight
    h = sim.door_space - 0.5
    ys = door_y[..., None] + np.linspace(-h, h, 41)  # (..., 41)
    p_left = p[..., 0] < wall_x
    near = np.where(p_left, wall_x - sim.wall_half, wall_x + sim.wall_half)[..., None]
    far = np.where(p_left, wall_x + sim.wall_half, wall_x - sim.wall_half)[..., None]
    via = (np.hypot(p[..., 0:1] - near, p[..., 1:2] - ys) + np.abs(far - near)
           + np.hypot(g[..., 0:1] - far, g[..., 1:2] - ys)).min(-1)
    return np.where(cross, via, straight)


def stratum_names(cfg: PlanConfig) -> list[str]:
    """The strata in report order: the cross-room detour bands ('detour < 4 px', ...), then 'same room'."""
    edges = [0.0, *cfg.detour_edges, math.inf]
    names = [f"detour {a:g}-{b:g} px" if b < math.inf else f"detour >= {a:g} px" for a, b in zip(edges, edges[1:])]
    names[0] = f"detour < {edges[1]:g} px"
    return [*names, "same room"]


def strata(eps: Episodes, cfg: PlanConfig, sim: SimConfig) -> list[str]:
    """Each episode's stratum: 'same room', or its cross-room detour band."""
    if eps.kind == "same":
        return ["same room"] * len(eps)
    detour = geodesic(eps.start, eps.goal, eps.wall_x, eps.door_y, sim) - np.linalg.norm(eps.start - eps.goal, axis=1)
    names = stratum_names(cfg)
    return [names[int(np.searchsorted(cfg.detour_edges, d, side="right"))] for d in detour]
