"""Configuration of the training loop (jepa_fast/train.py)."""

from __future__ import annotations

from dataclasses import dataclass

from jepa_fast.config.base import check

# ---------------------------------------------------------------------------------------------
# Training (jepa_fast/train.py)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe and the loop's cadences."""

    epochs: int = 15
    """Passes over the training split (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps in the whole run (sets the LR schedule's length); -1 = epochs x steps per epoch."""
    lr: float = 5e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Cosine annealing per step from lr down to min_lr_ratio x lr."""
    warmup_steps: int = 0
    """Linear warm-up steps before the cosine."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    ema_momentum: float = 0.996
    """Momentum of the EMA target projector, updated after each optimizer step."""
    precision: str = "auto"
    """Accelerate mixed precision: 'auto' (bf16 on CUDA with bf16, fp16 on older CUDA, bf16 on a CPU with
    native bf16, else fp32; see jepa_fast/hardware.py), 'bf16', 'fp16' or 'no' (fp32)."""
    compile: str = "auto"
    """torch.compile the step's model computation as one graph: 'on', 'off', or 'auto' (on for CUDA;
    off on CPU, where it measured no faster than eager and costs ~60 s of compilation on 2 cores)."""
    channels_last: bool = True
    """Keep conv weights and activations in channels-last (NHWC) memory: oneDNN's fast path on CPU
    (measured 1.5-2x faster per step, fp32, AVX2 and AVX-512) and the tensor-core layout on CUDA."""
    threads: int = 0
    """torch's CPU (intra-op) threads; 0 = auto: OMP_NUM_THREADS, else this process's share of the cores."""
    log_every: int = 20
    """Steps between log lines (the only host syncs of the loop); also the NaN/SIGTERM check cadence
    with several processes."""
    save_every: int = 500
    """Steps between checkpoints (-1 = only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    seed: int = 0
    """Seed of model init and of torch's RNG (dropout, noise)."""
    prediction: str = "teacher"
    """How the predictor is trained: 'teacher' (the true latent fed at every step, the reference's way)
    or 'rollout' (its own predictions fed back from s_0, as the probe evaluates it)."""

    def __post_init__(self) -> None:
        check(self.prediction in ("teacher", "rollout"), f"train.prediction={self.prediction!r}: teacher or rollout")
        check(self.seed >= 0, f"train.seed={self.seed}: must be >= 0")
        check(self.epochs >= 1, f"train.epochs={self.epochs}: must be >= 1")
        check(self.max_steps == -1 or self.max_steps >= 1, f"train.max_steps={self.max_steps}: -1 or >= 1")
        check(self.lr > 0, f"train.lr={self.lr}: must be > 0")
        check(0 <= self.min_lr_ratio <= 1, f"train.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")
        check(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps}: must be >= 0")
        check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay}: must be >= 0")
        check(self.grad_clip >= 0, f"train.grad_clip={self.grad_clip}: must be >= 0")
        check(0 <= self.ema_momentum < 1, f"train.ema_momentum={self.ema_momentum}: must be in [0, 1)")
        check(self.precision in ("auto", "bf16", "fp16", "no"),
              f"train.precision={self.precision!r}: use auto, bf16, fp16 or no")
        check(self.threads >= 0, f"train.threads={self.threads}: must be >= 0 (0 = auto)")
        check(self.compile in ("auto", "on", "off"), f"train.compile={self.compile!r}: use auto, on, off")
        check(self.log_every >= 1, f"train.log_every={self.log_every}: must be >= 1")
        check(self.save_every == -1 or self.save_every >= 1, f"train.save_every={self.save_every}: -1 or >= 1")
        check(self.keep_checkpoints >= 1, f"train.keep_checkpoints={self.keep_checkpoints}: must be >= 1")

