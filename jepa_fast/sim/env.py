"""Two-rooms physics and rendering, vectorised over trajectories (docs/TWO_ROOMS.md §1-§3).

Coordinates: a position is (x, y) in continuous pixel units with x = column and y = row. Pixel
(r, c) sits at (x=c, y=r). Arrays of positions are (..., 2) float64; images are (..., H, W).

Everything here is a pure function of its inputs and a ``numpy.random.Generator``; nothing loops
over trajectories or pixels in Python (only over the T-1 time steps).
"""

from __future__ import annotations

import math

import numpy as np

from jepa_fast.config import SimConfig

# ---------------------------------------------------------------------------------------------
# Layouts


def layout_walls(cfg: SimConfig, kind: str) -> np.ndarray:
    """The wall_x values a split may use: 'train' (20..44 minus 37..41), 'held_out' (37..41), 'all'."""
    walls = np.asarray(cfg.wall_values())
    lo, hi = cfg.exclude_wall_train
    held = (walls >= lo) & (walls <= hi)
    if kind == "train":
        return walls[~held]
    if kind == "held_out":
        return walls[held]
    if kind == "all":
        return walls
    raise ValueError(f"layout kind {kind!r}: use 'train', 'held_out' or 'all'")


def sample_layouts(rng: np.random.Generator, cfg: SimConfig, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Independent uniform wall_x and door_y per trajectory (§3). Returns (wall_x (N,), door_y (N,)) int64."""
    walls = layout_walls(cfg, kind)
    doors = np.asarray(cfg.door_values())
    return rng.choice(walls, size=n), rng.choice(doors, size=n)


def wall_masks(cfg: SimConfig, wall_x: np.ndarray, door_y: np.ndarray) -> np.ndarray:
    """Wall channel masks (§1): border lines, 3-px middle wall in every row except the 9 door rows.

    Args: wall_x, door_y (N,) ints. Returns (N, H, W) bool. 418 pixels are set for 65 px frames.
    """
    S = cfg.image_size
    idx = np.arange(S)
    border_1d = (idx == cfg.border_lo) | (idx == cfg.border_hi)  # (S,)
    border = border_1d[:, None] | border_1d[None, :]  # (H, W)
    cols = np.abs(idx[None, :] - np.asarray(wall_x)[:, None]) <= cfg.wall_half  # (N, W)
    rows = np.abs(idx[None, :] - np.asarray(door_y)[:, None]) > cfg.door_space  # (N, H) rows with wall
    return border[None] | (rows[:, :, None] & cols[:, None, :])  # (N, H, W)


# ---------------------------------------------------------------------------------------------
# Actions


def truncated_normal(rng: np.random.Generator, mean: float, std: float, lo: float, hi: float, size) -> np.ndarray:
    """Normal(mean, std) truncated to [lo, hi], by vectorised rejection (resamples only the rejects)."""
    out = rng.normal(mean, std, size=size)
    bad = (out < lo) | (out > hi)
    while bad.any():
        out[bad] = rng.normal(mean, std, size=int(bad.sum()))
        bad = (out < lo) | (out > hi)
    return out


def random_actions(rng: np.random.Generator, cfg: SimConfig, n: int, n_steps: int,
                   bias_angle: np.ndarray | None = None) -> np.ndarray:
    """Exploratory actions (§2): von Mises heading walk and truncated-normal step lengths.

    Args: n trajectories, n_steps actions each; bias_angle (N,) initial headings, U[0, 2 pi) if None.
    Returns: (N, n_steps, 2) float64 commanded displacements (dx, dy).
    """
    theta0 = rng.uniform(0.0, 2.0 * math.pi, size=n) if bias_angle is None else np.asarray(bias_angle, float)
    kappa = 1.0 / cfg.action_angle_noise
    eps = rng.vonmises(0.0, kappa, size=(n, n_steps))
    eps[:, 0] = 0.0  # the first action follows the initial heading
    theta = np.mod(theta0[:, None] + np.cumsum(eps, axis=1), 2.0 * math.pi)  # (N, n_steps)
    step = truncated_normal(rng, cfg.action_step_mean, cfg.action_step_std,
                            cfg.action_lower_bd, cfg.action_upper_bd, (n, n_steps))
    return np.stack([step * np.cos(theta), step * np.sin(theta)], axis=-1)  # (N, n_steps, 2)


# ---------------------------------------------------------------------------------------------
# Dynamics: the dataset generator's collision rule (§2; a blocked step stays in place)


def blocked_moves(cfg: SimConfig, p: np.ndarray, a: np.ndarray, wall_x: np.ndarray,
                  door_y: np.ndarray) -> np.ndarray:
    """Which proposed moves p -> p + a are blocked by the border, the middle wall or the door jambs.

    Args: p (N, 2), a (N, 2) float; wall_x, door_y (N,). Returns (N,) bool.

    The rule is the spec's (§2), with one robustness choice: a segment that merely *touches* a wall
    face or a border line counts as crossing it, so no agent can come to rest on a wall face outside
    the door (the original's strict test differs only on measure-zero events).
    """
    px, py = p[:, 0], p[:, 1]
    qx, qy = px + a[:, 0], py + a[:, 1]
    dx, dy = a[:, 0], a[:, 1]
    blocked = np.zeros(len(p), dtype=bool)
    # 1. border lines: the segment touches or crosses x = lo/hi or y = lo/hi
    for line in (cfg.border_lo, cfg.border_hi):
        blocked |= np.sign(px - line) * np.sign(qx - line) <= 0
        blocked |= np.sign(py - line) * np.sign(qy - line) <= 0
    # 2. middle wall slab [xl, xr]: flagged if exactly one endpoint is inside or the endpoints straddle it
    xl = wall_x - cfg.wall_half
    xr = wall_x + cfg.wall_half
    door_lo = door_y - cfg.door_space
    door_hi = door_y + cfg.door_space
    p_in = (px >= xl) & (px <= xr)
    q_in = (qx >= xl) & (qx <= xr)
    straddle = ((px < xl) & (qx > xr)) | ((qx < xl) & (px > xr))
    flagged = (p_in ^ q_in) | straddle
    passes = np.ones(len(p), dtype=bool)
    safe_dx = np.where(dx == 0, 1.0, dx)
    for face in (xl, xr):
        crossed = (np.minimum(px, qx) <= face) & (face <= np.maximum(px, qx)) & (dx != 0)
        y_face = py + dy / safe_dx * (face - px)
        passes &= ~crossed | ((y_face >= door_lo) & (y_face <= door_hi))
    blocked |= flagged & ~passes
    # 3. door jambs: leaving the door band through its top/bottom edge while inside the slab's x-range
    safe_dy = np.where(dy == 0, 1.0, dy)
    for edge, moving in ((door_hi, (dy > 0) & (py <= door_hi) & (qy > door_hi)),
                         (door_lo, (dy < 0) & (py >= door_lo) & (qy < door_lo))):
        x_edge = px + dx / safe_dy * (edge - py)
        blocked |= moving & (x_edge >= xl) & (x_edge <= xr)
    return blocked


def simulate(cfg: SimConfig, start: np.ndarray, actions: np.ndarray, wall_x: np.ndarray,
             door_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Roll the dataset dynamics forward.

    Args: start (N, 2); actions (N, T-1, 2) commanded moves; wall_x, door_y (N,).
    Returns: locations (N, T, 2) float64 (t = 0 is the start) and blocked (N, T-1) bool.
    """
    n, n_steps, _ = actions.shape
    loc = np.empty((n, n_steps + 1, 2), dtype=np.float64)
    blocked = np.empty((n, n_steps), dtype=bool)
    loc[:, 0] = start
    for t in range(n_steps):
        b = blocked_moves(cfg, loc[:, t], actions[:, t], wall_x, door_y)
        blocked[:, t] = b
        loc[:, t + 1] = np.where(b[:, None], loc[:, t], loc[:, t] + actions[:, t])
    return loc, blocked


def in_wall_outside_door(cfg: SimConfig, x: np.ndarray, y: np.ndarray, wall_x: np.ndarray,
                         door_y: np.ndarray) -> np.ndarray:
    """True where (x, y) lies in the middle-wall slab but outside the door band (an illegal state)."""
    return (np.abs(x - wall_x) <= cfg.wall_half) & (np.abs(y - door_y) > cfg.door_space)


def resample_out_of_wall(rng: np.random.Generator, cfg: SimConfig, p: np.ndarray, wall_x: np.ndarray,
                         door_y: np.ndarray) -> np.ndarray:
    """Move starts that lie inside the wall (outside the door rows) to a random x on either side (§3)."""
    p = p.copy()
    bad = in_wall_outside_door(cfg, p[:, 0], p[:, 1], wall_x, door_y)
    if bad.any():
        k = int(bad.sum())
        left = rng.random(k) < 0.5
        u = rng.random(k)
        xl = wall_x[bad] - cfg.wall_half
        xr = wall_x[bad] + cfg.wall_half
        lo, hi = cfg.border_lo, cfg.border_hi
        eps = 1e-6  # open intervals (lo, xl) and (xr, hi): never on a wall face or a border line
        x_left = np.clip(lo + (xl - lo) * u, lo + eps, xl - eps)
        x_right = np.clip(xr + (hi - xr) * u, xr + eps, hi - eps)
        p[bad, 0] = np.where(left, x_left, x_right)
    return p


# ---------------------------------------------------------------------------------------------
# Rendering (§1). The agent is a separable Gaussian, so a frame is the outer product of two 1-D
# profiles: H + W exponentials per frame instead of H * W.


def agent_profiles(cfg: SimConfig, loc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-D Gaussian profiles of the agent. loc (..., 2) -> (gy (..., H), gx (..., W)) float32.

    gy * gx (outer) is the agent channel in the configured value scale (pdf amplitude folded into gx).
    """
    grid = np.arange(cfg.image_size, dtype=np.float64)
    inv = 1.0 / (2.0 * cfg.dot_std**2)
    gx = np.exp(-((grid - loc[..., 0:1]) ** 2) * inv)
    gy = np.exp(-((grid - loc[..., 1:2]) ** 2) * inv)
    amp = cfg.pixel_peak if cfg.value_scale == "pdf" else 255.0
    return gy.astype(np.float32), (gx * amp).astype(np.float32)


def render(cfg: SimConfig, loc: np.ndarray, wall_x: np.ndarray, door_y: np.ndarray,
           dtype: np.dtype | str = np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """Render trajectories into frames.

    Args:
        loc: (N, T, 2) agent positions.  wall_x, door_y: (N,) layout.
        dtype: float32 (the value scale of cfg, 'pdf' by default) or uint8 (agent x 255 truncated,
            wall 255; only with cfg.value_scale == 'uint8').
        out: optional (N, T, 2, H, W) array to fill (e.g. a slice of a memmap).
    Returns: (N, T, 2, H, W) states; channel 0 = agent, channel 1 = walls.
    """
    dtype = np.dtype(dtype)
    N, T, _ = loc.shape
    S = cfg.image_size
    if out is None:
        out = np.empty((N, T, 2, S, S), dtype=dtype)
    gy, gx = agent_profiles(cfg, loc)  # (N, T, H), (N, T, W)
    masks = wall_masks(cfg, wall_x, door_y)  # (N, H, W)
    wall_value = cfg.pixel_peak if cfg.value_scale == "pdf" else 255.0
    if dtype == np.float32:
        np.multiply(gy[..., :, None], gx[..., None, :], out=out[:, :, 0])  # (N, T, H, W)
        walls = masks.astype(np.float32) * np.float32(wall_value)  # (N, H, W)
    elif dtype == np.uint8:
        if cfg.value_scale != "uint8":
            raise ValueError("uint8 output uses the 'uint8' value scale (x255); set value_scale='uint8'")
        agent = gy[..., :, None] * gx[..., None, :]  # (N, T, H, W) float32 in [0, 255]
        np.copyto(out[:, :, 0], agent, casting="unsafe")  # truncation, as in the PLDM release
        walls = masks.astype(np.uint8) * np.uint8(255)
    else:
        raise ValueError(f"dtype {dtype}: use float32 or uint8")
    out[:, :, 1] = walls[:, None]
    return out
