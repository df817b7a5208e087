"""Configuration of the probing evaluation (jepa_fast/probe.py)."""

from __future__ import annotations

from dataclasses import dataclass

from jepa_fast.config.base import check

# ---------------------------------------------------------------------------------------------
# Probing (jepa_fast/probe.py): the original protocol, TWO_ROOMS_SPEC.md §5


@dataclass(frozen=True)
class ProbeConfig:
    """The course project's probing protocol. Defaults are the original values; change them only to
    experiment, since the published numbers mean these settings."""

    lr: float = 2e-4
    """Adam lr of the very first step; the schedule's peak is lr x batch_size / 256."""
    epochs: int = 20
    """Prober training epochs."""
    batch_size: int = 64
    """Batch size of prober training and of evaluation (both drop the last incomplete batch)."""
    sample_timesteps: int = 30
    """When T > this, each training sample uses this many random timesteps."""
    hidden: int = 256
    """Prober: Linear(D, hidden) - ReLU - Linear(hidden, 2)."""
    warmup_fraction: float = 0.1
    """Linear warm-up over this fraction of all prober steps."""
    end_lr_ratio: float = 0.001
    """Cosine from the peak down to peak x end_lr_ratio."""
    seed: int = 0
    """Seed of prober init, shuffling and timestep sampling."""
    embed_batch: int = 256
    """Trajectories per batch when computing the model's rollout embeddings (speed only)."""
    cache: bool = True
    """Compute each split's embeddings once and train the prober on the cache (the model is frozen);
    False re-runs the model on every prober batch, as the original evaluator does."""

    def __post_init__(self) -> None:
        check(self.seed >= 0, f"probe.seed={self.seed}: must be >= 0")
        check(self.lr > 0, f"probe.lr={self.lr}: must be > 0")
        for name in ("epochs", "batch_size", "sample_timesteps", "hidden", "embed_batch"):
            check(getattr(self, name) >= 1, f"probe.{name}={getattr(self, name)}: must be >= 1")
        check(0 <= self.warmup_fraction < 1, f"probe.warmup_fraction={self.warmup_fraction}: must be in [0, 1)")
        check(0 <= self.end_lr_ratio <= 1, f"probe.end_lr_ratio={self.end_lr_ratio}: must be in [0, 1]")
