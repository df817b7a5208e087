"""Helpers the tests share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path


def one_line(capsys, *needles: str) -> str:
    """The command printed exactly one 'error: ...' line, no traceback, containing every needle; returns it."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (relative name -> bytes): to prove a folder came through untouched."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def dot_episodes(seed: int, n: int, size: int = 24, lengths: tuple[int, int] = (5, 31)):
    """``n`` episodes of unequal length of a dot moving by its actions: (frames (L, 3, size, size) uint8, actions
    (L, 3) float32, targets (L, 2) float32 = the dot's (x, y)). Channel 0 is the dot, 1 noise, 2 a static
    background (the same in every frame). An episode's last action is not followed by a frame (zeros)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        L = int(rng.integers(*lengths))
        pos = np.clip(size / 2 + np.cumsum(rng.normal(0, 1.2, (L, 2)), 0), 2, size - 3)
        frames = np.zeros((L, 3, size, size), np.uint8)
        frames[:, 0] = 255 * np.exp(-((xx - pos[:, 0, None, None]) ** 2 + (yy - pos[:, 1, None, None]) ** 2) / 6)
        frames[:, 1] = rng.integers(0, 30, size=(L, size, size))
        frames[:, 2] = (xx > 2 * size // 3) * 180
        actions = np.concatenate([np.diff(pos, axis=0, append=pos[-1:]), rng.normal(size=(L, 1))], 1)
        out.append((frames, actions.astype(np.float32), pos.astype(np.float32)))
    return out
