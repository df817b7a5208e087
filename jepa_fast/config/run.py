"""The training run's configuration: data loading, model, loss, optimisation; the run presets.

``RunConfig`` holds one dataclass per component (each validated in ``__post_init__``, one docstring
per field). Precedence, everywhere: dataclass defaults < preset < named command-line flags (``--lr``,
``--augment``, ...) < ``--set section.field=value``; ``resolve`` applies it. ``config.json`` of a run
holds the result as the user asked for it (machine-dependent fields may stay ``auto``: the trainer
resolves them on each machine, see ``jepa_fast/hardware.py``), and ``run_config_from_dict`` reads it back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from jepa_fast.config.base import apply_overrides, at_least, check, from_dict, one_of, probability, set_field
from jepa_fast.config.sim import SimConfig

TWO_ROOMS_INPUT_SCALE = 1.0 / SimConfig().pixel_peak
"""2 pi sigma^2: the inverse of the two-rooms frames' peak value (agent peak = wall value), from the simulator."""

# ---------------------------------------------------------------------------------------------
# data loading (jepa_fast/data)


@dataclass(frozen=True)
class AugmentConfig:
    """Physics-consistent augmentations (docs/ARCHITECTURE.md). Each is off at probability 0."""

    flip_lr: float = 0.0
    """Probability of a left-right flip of a whole trajectory (x -> W-1-x, dx -> -dx)."""
    flip_ud: float = 0.0
    """Probability of an up-down flip of a whole trajectory (y -> H-1-y, dy -> -dy)."""
    noise_p: float = 0.0
    """Probability that a trajectory gets additive Gaussian noise (frames only; a channel that is static
    over the trajectory gets one noise image for all its frames, see ``model.static_once``)."""
    noise_std: float = 0.02
    """Std of that noise, in units of the channel's maximum value."""
    brightness_p: float = 0.0
    """Probability that a trajectory's frames are scaled by a random brightness factor."""
    brightness_range: tuple[float, float] = (0.9, 1.1)
    """Range of the uniform brightness factor."""

    def __post_init__(self) -> None:
        probability(self, "augment", "flip_lr", "flip_ud", "noise_p", "brightness_p")
        at_least(self, "augment", 0, "noise_std")
        lo, hi = self.brightness_range
        check(0 < lo <= hi, f"augment.brightness_range={self.brightness_range}: need 0 < lo <= hi")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, n) > 0 for n in ("flip_lr", "flip_ud", "noise_p", "brightness_p"))


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "flips": AugmentConfig(flip_lr=0.5, flip_ud=0.5),
    "full": AugmentConfig(flip_lr=0.5, flip_ud=0.5, noise_p=0.5, noise_std=0.02, brightness_p=0.5),
}


@dataclass(frozen=True)
class DataConfig:
    """Which loader feeds the step and how (jepa_fast/data/loader.py, dali.py)."""

    loader: str = "auto"
    """'auto' (DALI on a GPU when importable, else the torch loader; on a CPU device the torch loader,
    which measured faster than DALI's CPU mode), 'dali' or 'torch'."""
    batch_size: int = 512
    """Trajectories per batch, per process."""
    seed: int = 0
    """Seed of the sampler: the epoch permutations and every augmentation decision."""
    shuffle: bool = True
    """Shuffle trajectories every epoch."""
    drop_last: bool = True
    """Drop the last incomplete batch (static shapes for the compiled step); without it the tail is
    split over the processes as the Sampler documents."""
    resident: str = "auto"
    """Torch loader: 'device' holds the decoded uint8 split on the training device and gathers there;
    'host' decodes each batch on the CPU; 'auto' = device when it fits in a quarter of its memory."""
    workers: int = 0
    """Decode threads (torch loader) or DALI Python workers; 0 = auto (1 on a CPU device, where the step
    needs the cores; half the cores, at most 8, on a GPU machine)."""
    prefetch: int = 2
    """Batches prepared ahead of the step."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentations."""
    seq_len: int = 0
    """Frames per training window (T); 0 = the episodes' own length when they all have the same (the two-rooms
    data: 17, every episode one window). Episodes shorter than this hold no window (counted and said)."""
    stride: int = 0
    """Frames between the starts of consecutive windows of an episode; 0 = seq_len (windows do not overlap)."""
    window_offset: int = 0
    """Where an episode's first window starts (frames from the episode's start)."""

    def __post_init__(self) -> None:
        one_of(self, "data", "loader", ("auto", "dali", "torch"))
        check(self.seq_len == 0 or self.seq_len >= 2, f"data.seq_len={self.seq_len}: 0 (the episodes') or >= 2")
        at_least(self, "data", 0, "stride", "window_offset")
        one_of(self, "data", "resident", ("auto", "device", "host"))
        at_least(self, "data", 0, "seed", "workers")
        at_least(self, "data", 1, "batch_size", "prefetch")


# ---------------------------------------------------------------------------------------------
# model and loss (jepa_fast/model.py, jepa_fast/loss.py)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the JEPA world model (jepa_fast/model.py)."""

    encoder_widths: tuple[int, ...] = (8, 16, 32, 64)
    """Channels of the Conv3x3-stride-2 stages of each encoder branch."""
    repr_dim: int = 128
    """D: latent size (the encoder branches' outputs, one per channel group, are concatenated)."""
    action_dim: int = 128
    """Size of the action embedding Linear(A -> action_dim), A the data's action size."""
    hidden_dim: int = 128
    """GRU hidden size."""
    gru_layers: int = 2
    """GRU layers."""
    gru_dropout: float = 0.1
    """Dropout between GRU layers (training only)."""
    proj_dim: int = 128
    """Hidden width of the projector MLP."""
    residual_predictor: bool = False
    """Predict the change of the latent (s_{t+1} = s_t + f(...)) instead of the latent itself; no extra
    parameters, and rollouts drift less over long horizons."""
    static_once: bool = True
    """Encode the store's static channels (the two-rooms walls: identical in every frame of an episode,
    checked at pack time) once per window and broadcast them over T; cuts that branch's cost ~T x. Noise
    augmentation gives a static channel one noise image per window either way, so the only difference
    from encoding every frame is BatchNorm's running-variance correction (n/(n-1) over B vs B*T frames;
    tested). A store without static channels has nothing to do here."""
    static_gain: float = 1.0
    """Multiplies the static channels' branch output (the two-rooms walls) in the latent: the embedding is
    [dynamic features, static_gain x static features]. The probe's MLP reads the embedding as it is, with
    no normalisation; at gain 1 it leans on the wall features, which take values it never saw on held-out
    wall positions (wall_other). 1 = the course project's model."""
    static_norm: bool = False
    """RMS-normalise the static branch's latents per sample before ``static_gain``, so that their scale is
    the gain's: without it the encoder grows its wall weights to undo the gain (the wall Linear's norm went
    8 -> 14 -> 24 over 0, 1M and 3.75M frames at gain 0.1)."""
    input_norm: str = "auto"
    """Input normalisation per channel: 'constant' (value x ``input_scale``: the two-rooms presets, so the
    published numbers hold), 'store' ((value - mean) / std with the store's per-channel statistics, for
    any other data), 'auto' (constant for two-rooms stores, store otherwise)."""
    idm_hidden: int = 0
    """Hidden width of an inverse-dynamics head (an MLP predicting each action from the latents before and
    after it, trained with weight ``loss.idm_coeff``); 0 = none (the two-rooms presets: the course project's
    parameters). It makes the encoder keep what the actions move: on data where much of the frame varies
    between episodes but not within them (PushT's block and table), VICReg alone is satisfied by that and
    can drop the small agent."""
    input_scale: float = TWO_ROOMS_INPUT_SCALE
    """Multiplies raw frame values before the encoder. The default, 2 pi sigma^2 = 10.6186 for the
    simulator's dot (sigma 1.3), is 1 / the two-rooms pixel peak: it maps the agent's peak and the
    wall value (1 / (2 pi sigma^2) = 0.0942 in the real data's units) to 1. Used when input_norm is constant."""

    def __post_init__(self) -> None:
        check(len(self.encoder_widths) >= 1 and all(w >= 1 for w in self.encoder_widths),
              f"model.encoder_widths={self.encoder_widths}: need one or more positive widths")
        at_least(self, "model", 1, "action_dim", "hidden_dim", "gru_layers", "proj_dim")
        at_least(self, "model", 2, "repr_dim")
        at_least(self, "model", 0, "idm_hidden")
        check(0 <= self.gru_dropout < 1, f"model.gru_dropout={self.gru_dropout}: must be in [0, 1)")
        check(self.input_scale > 0, f"model.input_scale={self.input_scale}: must be > 0")
        check(0 < self.static_gain <= 1, f"model.static_gain={self.static_gain}: must be in (0, 1]")
        one_of(self, "model", "input_norm", ("auto", "constant", "store"))


MODEL_PRESETS: dict[str, dict] = {
    # the public course project (Lake-Wang/Deep_Learning_JEPA_World_Model): 477,664 parameters
    "reference": {},
    # ours: the same 477,664 parameters, a residual predictor (trained by rollout: see the run presets), and the
    # walls' latents RMS-normalised at a tenth of the scale (what lets the probe generalise to held-out walls)
    "ours": {"residual_predictor": True, "static_gain": 0.1, "static_norm": True},
}


def model_preset(name: str, **overrides) -> ModelConfig:
    check(name in MODEL_PRESETS, f"model preset {name!r}: unknown; choose from {', '.join(MODEL_PRESETS)}")
    return ModelConfig(**{**MODEL_PRESETS[name], **overrides})


@dataclass(frozen=True)
class LossConfig:
    """VICReg-style JEPA loss (jepa_fast/loss.py)."""

    sim_coeff: float = 5.0
    """Weight of MSE(projected predictions, projected targets)."""
    std_coeff: float = 5.0
    """Weight of the variance hinge (summed over both branches)."""
    cov_coeff: float = 1.0
    """Weight of the off-diagonal covariance penalty (summed over both branches)."""
    raw_coeff: float = 1.0
    """Weight of MSE(predicted latents, encoder latents)."""
    idm_coeff: float = 1.0
    """Weight of the inverse-dynamics MSE (normalised actions), when the model has a head (model.idm_hidden)."""
    std_target: float = 1.0
    """gamma of the hinge relu(gamma - std)."""
    std_eps: float = 1e-4
    """std = sqrt(var + eps)."""
    impl: str = "torch"
    """'torch' (plain reference) or 'triton' (fused kernels; falls back to torch where Triton cannot run)."""

    def __post_init__(self) -> None:
        at_least(self, "loss", 0, "sim_coeff", "std_coeff", "cov_coeff", "raw_coeff", "idm_coeff", "std_eps")
        check(self.std_target > 0, f"loss.std_target={self.std_target}: must be > 0")
        one_of(self, "loss", "impl", ("torch", "triton"))


# ---------------------------------------------------------------------------------------------
# optimisation and the loop (jepa_fast/train.py)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe and the loop's cadences."""

    epochs: int = 15
    """Passes over the training split (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps in the whole run (sets the LR schedule's length); -1 = from ``frames``, else epochs x
    steps per epoch."""
    frames: int = -1
    """Training budget in frames (what recipes at different batch sizes and window lengths share): the run
    takes ceil(frames / (batch_size x processes x frames per window)) steps; -1 = unset (``max_steps`` or
    ``epochs``). Exclusive with ``max_steps``."""
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
    """torch.compile the step's model computation as one graph: 'on', 'off', or 'auto' (on for CUDA; on a
    CPU, on for a bf16 run of >= 1M frames, where it measured 1.6x eager, else off; see jepa_fast/hardware.py)."""
    channels_last: bool = True
    """Keep conv weights and activations in channels-last (NHWC) memory: oneDNN's fast path on a CPU
    (measured 1.5-2x faster per step, fp32, AVX2 and AVX-512; eager bf16 on a Xeon is slower in it, compiled
    the same) and the tensor-core layout on CUDA."""
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
        one_of(self, "train", "prediction", ("teacher", "rollout"))
        one_of(self, "train", "precision", ("auto", "bf16", "fp16", "no"))
        one_of(self, "train", "compile", ("auto", "on", "off"))
        at_least(self, "train", 0, "seed", "warmup_steps", "weight_decay", "grad_clip", "threads")
        at_least(self, "train", 1, "epochs", "log_every", "keep_checkpoints")
        check(self.max_steps == -1 or self.max_steps >= 1, f"train.max_steps={self.max_steps}: -1 or >= 1")
        check(self.frames == -1 or self.frames >= 1, f"train.frames={self.frames}: -1 or >= 1")
        check(self.frames == -1 or self.max_steps == -1, f"train.frames={self.frames} and train.max_steps="
              f"{self.max_steps}: a run's length is set by one of them; unset the other (-1)")
        check(self.lr > 0, f"train.lr={self.lr}: must be > 0")
        check(0 <= self.min_lr_ratio <= 1, f"train.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")
        check(0 <= self.ema_momentum < 1, f"train.ema_momentum={self.ema_momentum}: must be in [0, 1)")
        check(self.save_every == -1 or self.save_every >= 1, f"train.save_every={self.save_every}: -1 or >= 1")


# ---------------------------------------------------------------------------------------------
# the run and its presets


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved in the run folder and in every checkpoint."""

    preset: str = "reference"
    """The preset the values started from."""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _run_presets() -> dict[str, RunConfig]:
    # the public course project's recipe: AdamW 5e-4 / wd 1e-4, batch 512, 15 epochs, cosine to 0.1x,
    # clip 1.0, EMA 0.996, loss weights 5/5/1/1, teacher forcing
    ref = RunConfig(preset="reference", model=model_preset("reference"), data=DataConfig(batch_size=512))
    # ours: the same model size; the predictor learns residual steps and is trained by rollout, the way the
    # probe uses it; the walls' latents enter RMS-normalised at gain 0.1 (model preset); batch 64 (more,
    # smaller steps for a CPU-sized budget) at the reference's lr, and left-right flips, which turn the
    # training walls 23..27 into the held-out 37..41 (bench/results/quality_ladder_*: the ablations)
    ours = dataclasses.replace(ref, preset="ours", model=model_preset("ours"),
                               data=DataConfig(batch_size=64, augment=AugmentConfig(flip_lr=0.5)),
                               train=dataclasses.replace(ref.train, prediction="rollout"))
    small_train = TrainConfig(epochs=6, lr=1e-3, log_every=10, save_every=-1)
    return {
        "reference": ref,
        "ours": ours,
        # a few minutes on 2 CPU cores (the demo and the CPU quality benchmark)
        "reference-small": dataclasses.replace(ref, preset="reference-small", data=DataConfig(batch_size=64),
                                               train=small_train),
        "ours-small": dataclasses.replace(ours, preset="ours-small",
                                          train=dataclasses.replace(small_train, prediction="rollout")),
        # tests: seconds
        "tiny": dataclasses.replace(
            ref, preset="tiny", data=DataConfig(batch_size=16),
            train=TrainConfig(epochs=1, max_steps=6, lr=1e-3, log_every=2, save_every=-1)),
    }


def run_preset(name: str) -> RunConfig:
    presets = _run_presets()
    check(name in presets, f"preset {name!r}: unknown; choose from {', '.join(presets)}")
    return presets[name]


def resolve(base: RunConfig, flags: dict | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The run config by the documented precedence: ``base`` (a preset, or a resumed run's config) <
    ``flags`` (dotted key -> typed value, from named command-line flags) < ``overrides`` (``--set``)."""
    run = base
    for key, value in (flags or {}).items():
        run = set_field(run, key, value)
    return apply_overrides(run, list(overrides or []))


RETIRED_FIELDS = frozenset({"model.preset"})
"""Fields that earlier versions wrote into config.json and checkpoints (``model.preset`` duplicated
``preset``); reading such a file drops them."""


RENAMED_FIELDS = {"model.static_walls": "model.static_once"}
"""Fields that earlier versions wrote under another name; reading such a file renames them."""


def run_config_from_dict(d: dict) -> RunConfig:
    """Rebuild a RunConfig from its to_dict() form (checkpoints, config.json)."""
    if not isinstance(d, dict):
        return from_dict(RunConfig, d)  # a ConfigError naming what it is instead
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for old, new in RENAMED_FIELDS.items():
        (so, fo), (sn, fn) = old.split("."), new.split(".")
        if isinstance(d.get(so), dict) and fo in d[so]:
            d.setdefault(sn, {})[fn] = d[so].pop(fo)
    return from_dict(RunConfig, d, retired=RETIRED_FIELDS)
