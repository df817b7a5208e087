"""A run's length and learning-rate schedule: steps from a frame budget, the cosine, frame counts as text."""

from __future__ import annotations

import math

from jepa_fast.config import TrainConfig
from jepa_fast.errors import JepaFastError


def total_steps(cfg: TrainConfig, frames_per_step: int, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``max_steps``, else the ``frames`` budget over the frames one step
    takes (batch x processes x frames per window, rounded up), else ``epochs`` x steps per epoch."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    if cfg.frames > 0:
        return -(-cfg.frames // frames_per_step)
    return cfg.epochs * steps_per_epoch


def cosine_schedule(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine from 1 to min_ratio over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def frame_label(n: int) -> str:
    """A frame count as people write budgets: 3.75M, 300k, 950."""
    for div, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def frame_count(text: str) -> int:
    """'3.75M', '300k', '2,500,000', '1e6' -> a whole number of frames >= 1 (``train --frames``)."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    t = text.strip().replace("_", "").replace(",", "")
    mult = units.get(t[-1:].lower(), 1)
    try:
        value = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise JepaFastError(f"--frames {text!r}: a number of frames, e.g. 3.75M, 300k or 2500000") from None
    if not 1 <= value < float("inf"):
        raise JepaFastError(f"--frames {text!r}: need at least 1 frame")
    return round(value)
