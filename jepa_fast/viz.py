"""Pictures people look at: trajectory grids (``jepa-fast show``), loss curves, probe plots.

matplotlib with the Agg backend only; every figure is written atomically to a PNG.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from jepa_fast import atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic.atomic_write_bytes(Path(out), buf.getvalue())


def frame_rgb(frame: np.ndarray) -> np.ndarray:
    """(C, H, W) frame in any value scale -> (H, W, 3) float RGB in [0, 1]. Two channels (two-rooms): agent
    in orange, walls in grey; one: grey levels; three or four: the first three as RGB. Scaled by the frame's max."""
    C = frame.shape[0]
    if C != 2:
        x = frame.astype(np.float32)
        x = x / max(float(x.max()), 1e-12)
        return np.clip(np.repeat(x, 3, axis=0) if C == 1 else x[:3], 0.0, 1.0).transpose(1, 2, 0)
    agent = frame[0].astype(np.float32)
    wall = frame[1].astype(np.float32)
    agent = agent / max(float(agent.max()), 1e-12)
    wall = (wall > 0).astype(np.float32)
    rgb = np.stack([0.55 * wall + agent, 0.55 * wall + 0.55 * agent, 0.55 * wall], axis=-1)
    return np.clip(rgb, 0.0, 1.0)


def trajectory_grid(states: np.ndarray, locations: np.ndarray | None, out: Path, n_frames: int = 6,
                    title: str = "", predicted: np.ndarray | None = None) -> None:
    """A grid: one row per trajectory, ``n_frames`` frames across, the agent path drawn on top.

    Args: states (N, T, C, H, W); locations (N, T, 2) or None; predicted (N, T, 2) optional
    predicted path (drawn dashed, e.g. by the prober).
    """
    plt = _plt()
    N, T = states.shape[:2]
    cols = np.unique(np.linspace(0, T - 1, min(n_frames, T)).round().astype(int))
    fig, axes = plt.subplots(N, len(cols), figsize=(1.9 * len(cols), 1.9 * N), squeeze=False)
    for i in range(N):
        for j, t in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(frame_rgb(np.asarray(states[i, t])), interpolation="nearest")
            if locations is not None:
                ax.plot(locations[i, : t + 1, 0], locations[i, : t + 1, 1], "-", color="cyan", lw=1)
            if predicted is not None:
                ax.plot(predicted[i, : t + 1, 0], predicted[i, : t + 1, 1], "--", color="magenta", lw=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={t}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, out)


def line_plot(series: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, xlabel: str, ylabel: str,
              title: str = "", logy: bool = False) -> None:
    """One axes with a line per named (x, y) series."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name, lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out)


def target_traces(true: np.ndarray, pred: np.ndarray, names: list[str], out: Path, title: str = "") -> None:
    """One panel per target: each window's true values over time (solid) and the prober's (dashed).

    Args: true, pred (N, T, K) in the targets' units."""
    plt = _plt()
    K = true.shape[-1]
    cols = min(K, 3)
    rows = -(-K // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k in range(rows * cols):
        ax = axes[k // cols, k % cols]
        if k >= K:
            ax.axis("off")
            continue
        for i in range(len(true)):
            c = colours[i % len(colours)]
            ax.plot(true[i, :, k], "-", color=c, lw=1.2)
            ax.plot(pred[i, :, k], "--", color=c, lw=1.0)
        ax.set_title(names[k] if k < len(names) else f"target {k}", fontsize=8)
        ax.set_xlabel("timestep", fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, out)
