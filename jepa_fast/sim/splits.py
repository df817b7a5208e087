"""Trajectory generators for each kind of split (docs/TWO_ROOMS.md §3-§4, defaults of §8).

Each generator returns a ``Trajectories`` record (positions, commanded actions, layout); pixels are
rendered separately (``env.render``) so that the same trajectories can be written in any format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jepa_fast.config import SimConfig
from jepa_fast.sim import env

PROBE_WALL_BATCH = 64
"""probe_wall puts rightward runs in the first half of each batch of 64, leftward in the second (§4)."""


@dataclass
class Trajectories:
    """A block of N trajectories of T frames."""

    locations: np.ndarray  # (N, T, 2) float64, agent (x, y) at every frame including t = 0
    actions: np.ndarray  # (N, T-1, 2) float64, commanded (dx, dy), recorded even when blocked
    wall_x: np.ndarray  # (N,) int64
    door_y: np.ndarray  # (N,) int64


def _uniform_open(rng: np.random.Generator, lo, hi, size=None) -> np.ndarray:
    """U(lo, hi) kept a hair away from both ends, so no position lands exactly on a line."""
    eps = 1e-6
    return np.clip(rng.uniform(lo, hi, size=size), np.asarray(lo) + eps, np.asarray(hi) - eps)


def random_trajectories(rng: np.random.Generator, cfg: SimConfig, n: int, T: int, layouts: str) -> Trajectories:
    """Random exploration (§2, §3) with a fraction cfg.cross_wall_rate rebuilt to pass the door.

    layouts: 'train' (held-out walls excluded) or 'held_out' (probe_wall_other).
    """
    wall_x, door_y = env.sample_layouts(rng, cfg, n, layouts)
    lo, hi = cfg.border_lo, cfg.border_hi
    start = _uniform_open(rng, lo, hi, size=(n, 2))
    actions = env.random_actions(rng, cfg, n, T - 1)
    cross = rng.random(n) < cfg.cross_wall_rate
    if cross.any():
        c_start, c_actions = _cross_wall(rng, cfg, wall_x[cross], door_y[cross], T)
        start[cross] = c_start
        actions[cross] = c_actions
    start = env.resample_out_of_wall(rng, cfg, start, wall_x, door_y)
    locations, _ = env.simulate(cfg, start, actions, wall_x, door_y)
    return Trajectories(locations, actions, wall_x, door_y)


def _cross_wall(rng: np.random.Generator, cfg: SimConfig, wall_x: np.ndarray, door_y: np.ndarray,
                T: int) -> tuple[np.ndarray, np.ndarray]:
    """Trajectories built to pass through the door (§3 'cross-wall'). Returns start (K, 2), actions (K, T-1, 2)."""
    k = len(wall_x)
    n_steps = T - 1
    door_x = rng.uniform(wall_x - cfg.wall_half, wall_x + cfg.wall_half)
    door_pt_y = env.truncated_normal(rng, 0.0, cfg.cross_wall_door_std, -cfg.door_space, cfg.door_space, k) + door_y
    k_door = rng.integers(1, n_steps + 1, size=k)  # actions taken before reaching the door, 1..T-1
    theta = math.pi + (rng.random(k) - 0.5) * (math.pi / 2)  # within +-45 degrees of "left"
    left_seq = env.random_actions(rng, cfg, k, n_steps, bias_angle=theta)
    right_seq = env.random_actions(rng, cfg, k, n_steps, bias_angle=theta + math.pi)
    # actions = [-reverse(left[:k_door]), right[1 : T - k_door]]: walk in towards the door, then away
    j = np.arange(n_steps)[None, :]  # (1, T-1)
    before = j < k_door[:, None]
    rows = np.arange(k)[:, None]
    from_left = -left_seq[rows, np.clip(k_door[:, None] - 1 - j, 0, n_steps - 1)]
    from_right = right_seq[rows, np.clip(j - k_door[:, None] + 1, 0, n_steps - 1)]
    actions = np.where(before[..., None], from_left, from_right)  # (K, T-1, 2)
    # with probability 1/2, run the sequence backwards (right-to-left crossing)
    flip = rng.random(k) < 0.5
    actions[flip] = -actions[flip, ::-1]
    n_before = np.where(flip, n_steps - k_door, k_door)
    before = np.arange(n_steps)[None, :] < n_before[:, None]
    offset = (actions * before[..., None]).sum(axis=1)  # (K, 2) displacement up to the door
    start = np.stack([door_x, door_pt_y], axis=-1) - offset
    start = np.clip(start, cfg.border_lo + 0.01, cfg.border_hi - 0.01)
    return start, actions


def wall_trajectories(rng: np.random.Generator, cfg: SimConfig, n: int, T: int, offset: int = 0) -> Trajectories:
    """probe_wall (§4): straight unit-speed runs towards the middle wall; the agent pins or passes the door.

    offset: global index of the block's first trajectory (rightward runs fill the first half of every
    batch of 64 across the whole split).
    """
    wall_x, door_y = env.sample_layouts(rng, cfg, n, "train")
    lo, hi = cfg.border_lo, cfg.border_hi
    u = rng.random(n)
    y_door = _uniform_open(rng, door_y - 2, door_y + 2)
    y_low = _uniform_open(rng, np.full(n, float(lo)), door_y - 2)
    y_high = _uniform_open(rng, door_y + 2, np.full(n, float(hi)))
    y = np.where(u < 0.25, y_door, np.where(rng.random(n) < 0.5, y_low, y_high))
    rightward = ((offset + np.arange(n)) % PROBE_WALL_BATCH) < PROBE_WALL_BATCH // 2
    x_r = _uniform_open(rng, np.maximum(lo, wall_x - T + 2), wall_x - 2)
    x_l = _uniform_open(rng, wall_x + 2, np.minimum(hi, wall_x + T - 2))
    start = np.stack([np.where(rightward, x_r, x_l), y], axis=-1)
    dx = np.where(rightward, 1.0, -1.0)
    actions = np.zeros((n, T - 1, 2))
    actions[:, :, 0] = dx[:, None]
    locations, _ = env.simulate(cfg, start, actions, wall_x, door_y)
    return Trajectories(locations, actions, wall_x, door_y)


def expert_trajectories(rng: np.random.Generator, cfg: SimConfig, n: int, T: int) -> Trajectories:
    """probe_expert (§4, §8): start -> (wall -/+ 1.8, y_s) -> (wall +/- 1.8, y_s) -> goal at 0.9 px/step.

    Start and goal lie on opposite sides of the wall (half the paths go right-to-left); y_s is within
    door_y +- 2. Actions are zero once the goal is reached.
    """
    wall_x, door_y = env.sample_layouts(rng, cfg, n, "train")
    lo, hi = cfg.border_lo, cfg.border_hi
    off = cfg.expert_wall_offset
    left_pt = np.stack([_uniform_open(rng, np.full(n, lo + 0.5), wall_x - off),
                        _uniform_open(rng, lo + 0.5, hi - 0.5, size=n)], axis=-1)
    right_pt = np.stack([_uniform_open(rng, wall_x + off, np.full(n, hi - 0.5)),
                         _uniform_open(rng, lo + 0.5, hi - 0.5, size=n)], axis=-1)
    y_s = rng.uniform(door_y - cfg.expert_door_padding, door_y + cfg.expert_door_padding)
    ltr = rng.random(n) < 0.5  # left-to-right
    sgn = np.where(ltr, 1.0, -1.0)
    start = np.where(ltr[:, None], left_pt, right_pt)
    goal = np.where(ltr[:, None], right_pt, left_pt)
    pre = np.stack([wall_x - sgn * off, y_s], axis=-1)
    post = np.stack([wall_x + sgn * off, y_s], axis=-1)
    pts = np.stack([start, pre, post, goal], axis=1)  # (N, 4, 2) polyline
    seg = np.linalg.norm(np.diff(pts, axis=1), axis=-1)  # (N, 3)
    cum = np.concatenate([np.zeros((n, 1)), np.cumsum(seg, axis=1)], axis=1)  # (N, 4)
    s = np.minimum(cfg.expert_step * np.arange(T)[None, :], cum[:, -1:])  # (N, T) arc length
    idx = np.clip((s[:, :, None] > cum[:, None, 1:3]).sum(-1), 0, 2)  # (N, T) segment index
    rows = np.arange(n)[:, None]
    frac = (s - cum[rows, idx]) / np.maximum(seg[rows, idx], 1e-12)
    path = pts[rows, idx] + frac[..., None] * (pts[rows, idx + 1] - pts[rows, idx])  # (N, T, 2)
    actions = np.diff(path, axis=1)
    actions[s[:, 1:] == s[:, :-1]] = 0.0  # exactly zero once the goal is reached
    locations, _ = env.simulate(cfg, start, actions, wall_x, door_y)
    return Trajectories(locations, actions, wall_x, door_y)


def generate(kind: str, rng: np.random.Generator, cfg: SimConfig, n: int, T: int, offset: int = 0) -> Trajectories:
    """Dispatch on the split kind: 'random', 'wall', 'wall_other' or 'expert'."""
    if kind == "random":
        return random_trajectories(rng, cfg, n, T, "train")
    if kind == "wall_other":
        return random_trajectories(rng, cfg, n, T, "held_out")
    if kind == "wall":
        return wall_trajectories(rng, cfg, n, T, offset)
    if kind == "expert":
        return expert_trajectories(rng, cfg, n, T)
    raise ValueError(f"split kind {kind!r}: use random, wall, wall_other or expert")
