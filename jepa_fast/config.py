"""Typed configuration: one dataclass per component, validated in ``__post_init__``, plus presets.

Precedence everywhere is: dataclass defaults < preset < command-line overrides. Every field has a
one-line docstring (the string literal below it). A bad value raises ``ConfigError`` with a message
that names the field and says what is allowed, never a traceback from deep inside a library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from jepa_fast.errors import JepaFastError


class ConfigError(JepaFastError, ValueError):
    """A configuration value is invalid. The message names the field and the fix."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# ---------------------------------------------------------------------------------------------
# Simulator (TWO_ROOMS_SPEC.md; section numbers refer to it)


@dataclass(frozen=True)
class SimConfig:
    """Physics, rendering and sampling constants of the two-rooms environment (spec §1-§4, §8)."""

    image_size: int = 65
    """Frame side in pixels. The real data are 65x65 (§1); 64 is selectable."""
    dot_std: float = 1.3
    """Sigma of the agent's Gaussian dot, in pixels (§1)."""
    border_wall_loc: int = 5
    """Border lines sit at pixel b-1 and image_size-b (4 and 60 for 65 px) (§1)."""
    wall_width: int = 3
    """Width of the middle wall in pixels; columns wall_x-w//2 .. wall_x+w//2 (§1)."""
    door_space: int = 4
    """Door half-height: the opening is rows door_y-4 .. door_y+4 (§1, §3)."""
    wall_padding: int = 20
    """wall_x is drawn from range(wall_padding, image_size - wall_padding) (§3)."""
    door_padding: int = 10
    """door_y is drawn from range(door_padding, image_size - door_padding) (§3)."""
    exclude_wall_train: tuple[int, int] = (37, 41)
    """Inclusive wall_x range held out of training; probe_wall_other uses exactly these (§3)."""
    action_angle_noise: float = 0.2
    """Heading walk noise; the von Mises concentration is 1/action_angle_noise (§2)."""
    action_step_mean: float = 1.0
    """Mean step length of random actions, pixels (§2)."""
    action_step_std: float = 0.4
    """Std of the (truncated normal) step length (§2)."""
    action_lower_bd: float = 0.2
    """Lower truncation of the step length (§2)."""
    action_upper_bd: float = 1.8
    """Upper truncation of the step length (§2)."""
    cross_wall_rate: float = 0.1
    """Fraction of random trajectories rebuilt to pass the door (§3). 0.1 (the PLDM default) is the
    rate whose location statistics best match the real data's Normalizer (mean 31.59/32.06, std
    16.10/16.14): measured std 16.14/16.19 at 0.1 versus 15.57/15.94 at 0.2 (README, 'Simulator')."""
    cross_wall_door_std: float = 1.4
    """Std of the door-crossing point's y around door_y, for cross-wall trajectories (§3)."""
    expert_step: float = 0.9
    """Step length of expert (goal-directed) trajectories, pixels (§4)."""
    expert_door_padding: float = 2.0
    """Expert paths cross the door at y ~ U[door_y - p, door_y + p] (§4)."""
    expert_wall_offset: float = 1.8
    """Expert paths turn at wall_x -/+ this offset before and after the door (§4)."""
    value_scale: str = "pdf"
    """'pdf': agent = Gaussian pdf (peak 1/(2 pi sigma^2) ~ 0.0942), wall = 0.0942 x mask, as in the
    real files (§1). 'uint8': agent = Gaussian x 255 clamped, wall = 255 x mask (PLDM release)."""

    def __post_init__(self) -> None:
        _check(self.image_size in (64, 65), f"sim.image_size={self.image_size}: must be 65 or 64")
        _check(self.dot_std > 0, f"sim.dot_std={self.dot_std}: must be > 0")
        _check(self.wall_width >= 1 and self.wall_width % 2 == 1,
               f"sim.wall_width={self.wall_width}: must be an odd number >= 1")
        _check(0 <= self.cross_wall_rate <= 1, f"sim.cross_wall_rate={self.cross_wall_rate}: must be in [0, 1]")
        _check(0 < self.action_lower_bd < self.action_upper_bd,
               "sim.action_lower_bd/action_upper_bd: need 0 < lower < upper")
        _check(self.action_angle_noise > 0, "sim.action_angle_noise: must be > 0")
        _check(self.value_scale in ("pdf", "uint8"), f"sim.value_scale={self.value_scale!r}: use 'pdf' or 'uint8'")
        lo, hi = self.exclude_wall_train
        _check(lo <= hi, f"sim.exclude_wall_train={self.exclude_wall_train}: need lo <= hi")
        walls = self.wall_values()
        _check(len(walls) > 0 and lo >= walls[0] and hi <= walls[-1],
               f"sim.exclude_wall_train={self.exclude_wall_train}: must lie inside {walls[0]}..{walls[-1]}")

    # Derived geometry -------------------------------------------------------------------------
    @property
    def border_lo(self) -> int:
        """Pixel index of the left/top border line (4)."""
        return self.border_wall_loc - 1

    @property
    def border_hi(self) -> int:
        """Pixel index of the right/bottom border line (60 for 65 px, 59 for 64 px)."""
        return self.image_size - self.border_wall_loc

    @property
    def wall_half(self) -> int:
        return self.wall_width // 2

    @property
    def pixel_peak(self) -> float:
        """Peak of the agent pdf, 1/(2 pi sigma^2): also the value of a wall pixel in 'pdf' scale."""
        import math

        return 1.0 / (2.0 * math.pi * self.dot_std**2)

    def wall_values(self) -> list[int]:
        return list(range(self.wall_padding, self.image_size - self.wall_padding))

    def door_values(self) -> list[int]:
        return list(range(self.door_padding, self.image_size - self.door_padding))


# ---------------------------------------------------------------------------------------------
# Datasets: the seven splits and their sizes

SPLITS: tuple[str, ...] = (
    "train",
    "probe_normal/train",
    "probe_normal/val",
    "probe_wall/val",
    "probe_wall_other/val",
    "probe_expert/train",
    "probe_expert/val",
)
"""Every split of a dataset root, in the original folder layout (spec §4)."""

SPLIT_KIND: dict[str, str] = {
    "train": "random",
    "probe_normal/train": "random",
    "probe_normal/val": "random",
    "probe_wall/val": "wall",
    "probe_wall_other/val": "wall_other",
    "probe_expert/train": "expert",
    "probe_expert/val": "expert",
}
"""Which generator makes each split: random exploration, wall runs, held-out walls, expert paths."""


@dataclass(frozen=True)
class DatasetConfig:
    """Which splits to generate, how many trajectories each, and their length."""

    sizes: dict[str, int] = field(default_factory=dict)
    """Trajectories per split (split name -> N). Every name must be one of SPLITS."""
    seq_len: int = 17
    """Frames per trajectory T for every split except the expert ones (spec §4)."""
    expert_seq_len: int = 65
    """Frames per trajectory for probe_expert (64 actions; spec §8)."""

    def __post_init__(self) -> None:
        _check(len(self.sizes) > 0, "dataset.sizes: at least one split is needed")
        for name, n in self.sizes.items():
            _check(name in SPLITS, f"dataset split {name!r}: unknown; choose from {', '.join(SPLITS)}")
            _check(isinstance(n, int) and n >= 1, f"dataset.sizes[{name!r}]={n}: must be an integer >= 1")
        _check(self.seq_len >= 2, f"dataset.seq_len={self.seq_len}: must be >= 2")
        _check(self.expert_seq_len >= 2, f"dataset.expert_seq_len={self.expert_seq_len}: must be >= 2")

    def seq_len_of(self, split: str) -> int:
        return self.expert_seq_len if SPLIT_KIND[split] == "expert" else self.seq_len


DATASET_PRESETS: dict[str, dict[str, int]] = {
    # spec §8: 147,008 x 17 = 2,499,136 training frames
    "full": {
        "train": 147_008,
        "probe_normal/train": 10_000,
        "probe_normal/val": 4_000,
        "probe_wall/val": 4_000,
        "probe_wall_other/val": 4_000,
        "probe_expert/train": 4_000,
        "probe_expert/val": 1_000,
    },
    # the demo: a few thousand trajectories, minutes end to end on 2 CPU cores
    "small": {
        "train": 3_072,
        "probe_normal/train": 1_024,
        "probe_normal/val": 512,
        "probe_wall/val": 512,
        "probe_wall_other/val": 512,
        "probe_expert/train": 512,
        "probe_expert/val": 256,
    },
    # for tests: seconds
    "tiny": {
        "train": 256,
        "probe_normal/train": 128,
        "probe_normal/val": 64,
        "probe_wall/val": 64,
        "probe_wall_other/val": 64,
        "probe_expert/train": 64,
        "probe_expert/val": 64,
    },
}


def dataset_preset(name: str, n_train: int | None = None, splits: list[str] | None = None) -> DatasetConfig:
    """The named dataset preset, optionally with another train size or only some splits."""
    _check(name in DATASET_PRESETS, f"preset {name!r}: unknown; choose from {', '.join(DATASET_PRESETS)}")
    sizes = dict(DATASET_PRESETS[name])
    if splits is not None:
        for s in splits:
            _check(s in SPLITS, f"split {s!r}: unknown; choose from {', '.join(SPLITS)}")
        sizes = {s: sizes[s] for s in splits}
    if n_train is not None:
        _check(n_train >= 1, f"--n {n_train}: must be >= 1")
        if "train" in sizes:
            sizes["train"] = n_train
    return DatasetConfig(sizes=sizes)


def to_dict(cfg) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------
# Packing raw splits into the Zarr store (jepa_fast/data/format.py)


@dataclass(frozen=True)
class PackConfig:
    """How ``jepa-fast pack`` writes a store."""

    codec: str = "lz4"
    """'lz4' (default; every stored chunk is a raw LZ4 block the GPU can inflate) or 'zstd' (smaller,
    for archival; CPU decode only)."""
    zstd_level: int = 3
    """Compression level when codec='zstd' (1-22)."""
    chunk_mib: float = 1.0
    """Target raw size of one shard (k whole trajectories); k = round(chunk_mib MiB / trajectory bytes)."""
    chunk_trajectories: int = 0
    """k, trajectories per shard; 0 picks it from chunk_mib."""
    scale: str = "sample"
    """Per-channel quantisation scale for float input: 'sample' = 1.01 x the max over a strided sample
    (one read pass; the pack re-runs with the exact max if any value would clip), 'exact' = the max
    over the whole array (an extra full read pass)."""
    workers: int = 2
    """Threads that quantise, compress and write shards."""

    def __post_init__(self) -> None:
        _check(self.codec in ("lz4", "zstd"), f"pack.codec={self.codec!r}: use 'lz4' or 'zstd'")
        _check(1 <= self.zstd_level <= 22, f"pack.zstd_level={self.zstd_level}: must be in 1..22")
        _check(self.chunk_mib > 0, f"pack.chunk_mib={self.chunk_mib}: must be > 0")
        _check(self.chunk_trajectories >= 0, f"pack.chunk_trajectories={self.chunk_trajectories}: must be >= 0")
        _check(self.scale in ("sample", "exact"), f"pack.scale={self.scale!r}: use 'sample' or 'exact'")
        _check(self.workers >= 1, f"pack.workers={self.workers}: must be >= 1")

    def trajectories_per_shard(self, traj_bytes: int) -> int:
        if self.chunk_trajectories:
            return self.chunk_trajectories
        return max(1, round(self.chunk_mib * 2**20 / traj_bytes))


# ---------------------------------------------------------------------------------------------
# Model and loss


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the JEPA world model (jepa_fast/model.py)."""

    preset: str = "reference"
    """Name of the preset these values came from (informational)."""
    encoder_widths: tuple[int, ...] = (8, 16, 32, 64)
    """Channels of the Conv3x3-stride-2 stages of each encoder branch."""
    repr_dim: int = 128
    """D: latent size (the two branch outputs are concatenated)."""
    action_dim: int = 128
    """Size of the action embedding Linear(2 -> action_dim)."""
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
    static_walls: bool = True
    """Encode the wall channel once per trajectory and broadcast it over T. Exact when the wall image
    is constant over a trajectory (true of the two-rooms data, spec §1, and checked at pack time: the
    trainer turns this off for a store whose attrs say otherwise). Halves the wall branch's cost ~T x;
    the only difference is BatchNorm's running-variance correction (B vs B*T samples)."""
    input_scale: float = 10.6165
    """Multiplies raw frame values before the encoder: 1 / (1 / (2 pi 1.3^2)) maps the real data's
    agent peak and wall value (0.0942) to 1."""

    def __post_init__(self) -> None:
        _check(len(self.encoder_widths) >= 1 and all(w >= 1 for w in self.encoder_widths),
               f"model.encoder_widths={self.encoder_widths}: need one or more positive widths")
        for name in ("repr_dim", "action_dim", "hidden_dim", "gru_layers", "proj_dim"):
            _check(getattr(self, name) >= 1, f"model.{name}={getattr(self, name)}: must be >= 1")
        _check(self.repr_dim >= 2, f"model.repr_dim={self.repr_dim}: must be >= 2")
        _check(0 <= self.gru_dropout < 1, f"model.gru_dropout={self.gru_dropout}: must be in [0, 1)")
        _check(self.input_scale > 0, f"model.input_scale={self.input_scale}: must be > 0")


MODEL_PRESETS: dict[str, dict] = {
    # the public course project (Lake-Wang/Deep_Learning_JEPA_World_Model): 477,664 parameters
    "reference": {},
    # ours: the same 477,664 parameters, a residual predictor (trained by rollout: see RunConfig "ours")
    "ours": {"residual_predictor": True},
}


def model_preset(name: str, **overrides) -> ModelConfig:
    _check(name in MODEL_PRESETS, f"model preset {name!r}: unknown; choose from {', '.join(MODEL_PRESETS)}")
    return ModelConfig(**{"preset": name, **MODEL_PRESETS[name], **overrides})


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
    std_target: float = 1.0
    """gamma of the hinge relu(gamma - std)."""
    std_eps: float = 1e-4
    """std = sqrt(var + eps)."""
    impl: str = "torch"
    """'torch' (plain reference) or 'triton' (fused kernels; falls back to torch where Triton cannot run)."""

    def __post_init__(self) -> None:
        for name in ("sim_coeff", "std_coeff", "cov_coeff", "raw_coeff", "std_eps"):
            _check(getattr(self, name) >= 0, f"loss.{name}={getattr(self, name)}: must be >= 0")
        _check(self.std_target > 0, f"loss.std_target={self.std_target}: must be > 0")
        _check(self.impl in ("torch", "triton"), f"loss.impl={self.impl!r}: use 'torch' or 'triton'")


# ---------------------------------------------------------------------------------------------
# Data loading (jepa_fast/data/)


@dataclass(frozen=True)
class AugmentConfig:
    """Physics-consistent augmentations (ARCHITECTURE.md). Each is off at probability 0."""

    flip_lr: float = 0.0
    """Probability of a left-right flip of a whole trajectory (x -> W-1-x, dx -> -dx)."""
    flip_ud: float = 0.0
    """Probability of an up-down flip of a whole trajectory (y -> H-1-y, dy -> -dy)."""
    noise_p: float = 0.0
    """Probability that a trajectory gets additive Gaussian noise (frames only)."""
    noise_std: float = 0.02
    """Std of that noise, in units of the channel's maximum value."""
    brightness_p: float = 0.0
    """Probability that a trajectory's frames are scaled by a random brightness factor."""
    brightness_range: tuple[float, float] = (0.9, 1.1)
    """Range of the uniform brightness factor."""

    def __post_init__(self) -> None:
        for name in ("flip_lr", "flip_ud", "noise_p", "brightness_p"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"augment.{name}={v}: a probability must be in [0, 1]")
        _check(self.noise_std >= 0, f"augment.noise_std={self.noise_std}: must be >= 0")
        lo, hi = self.brightness_range
        _check(0 < lo <= hi, f"augment.brightness_range={self.brightness_range}: need 0 < lo <= hi")

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
    """Drop the last incomplete batch (static shapes for the compiled step)."""
    resident: str = "auto"
    """Torch fallback: 'device' holds the decoded uint8 split on the training device and gathers there;
    'host' decodes each batch on the CPU; 'auto' = device when it fits in a quarter of its memory."""
    workers: int = 2
    """Decode threads (torch fallback) or DALI Python workers."""
    prefetch: int = 2
    """Batches prepared ahead of the step."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentations."""

    def __post_init__(self) -> None:
        _check(self.loader in ("auto", "dali", "torch"), f"data.loader={self.loader!r}: use auto, dali or torch")
        _check(self.batch_size >= 1, f"data.batch_size={self.batch_size}: must be >= 1")
        _check(self.resident in ("auto", "device", "host"), f"data.resident={self.resident!r}: use auto, device, host")
        _check(self.workers >= 1, f"data.workers={self.workers}: must be >= 1")
        _check(self.prefetch >= 1, f"data.prefetch={self.prefetch}: must be >= 1")


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
    precision: str = "bf16"
    """Accelerate mixed precision: 'bf16', 'fp16' or 'no' (fp32)."""
    compile: str = "auto"
    """torch.compile the step's model computation as one graph: 'on', 'off', or 'auto' (on for CUDA;
    off on CPU, where it measured no faster than eager and costs ~60 s of compilation on 2 cores)."""
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
        _check(self.prediction in ("teacher", "rollout"), f"train.prediction={self.prediction!r}: teacher or rollout")
        _check(self.epochs >= 1, f"train.epochs={self.epochs}: must be >= 1")
        _check(self.max_steps == -1 or self.max_steps >= 1, f"train.max_steps={self.max_steps}: -1 or >= 1")
        _check(self.lr > 0, f"train.lr={self.lr}: must be > 0")
        _check(0 <= self.min_lr_ratio <= 1, f"train.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")
        _check(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps}: must be >= 0")
        _check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay}: must be >= 0")
        _check(self.grad_clip >= 0, f"train.grad_clip={self.grad_clip}: must be >= 0")
        _check(0 <= self.ema_momentum < 1, f"train.ema_momentum={self.ema_momentum}: must be in [0, 1)")
        _check(self.precision in ("bf16", "fp16", "no"), f"train.precision={self.precision!r}: use bf16, fp16, no")
        _check(self.compile in ("auto", "on", "off"), f"train.compile={self.compile!r}: use auto, on, off")
        _check(self.log_every >= 1, f"train.log_every={self.log_every}: must be >= 1")
        _check(self.save_every == -1 or self.save_every >= 1, f"train.save_every={self.save_every}: -1 or >= 1")
        _check(self.keep_checkpoints >= 1, f"train.keep_checkpoints={self.keep_checkpoints}: must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved resolved in the run folder and in every checkpoint."""

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
    # ours: the same model size and recipe, but the predictor learns residual steps and is trained by
    # rollout, the way the probe uses it (bench/results/quality_*: better on all four probe sets)
    ours = dataclasses.replace(ref, preset="ours", model=model_preset("ours"),
                               train=dataclasses.replace(ref.train, prediction="rollout"))
    small_data = DataConfig(batch_size=64)
    small_train = TrainConfig(epochs=6, lr=1e-3, log_every=10, save_every=-1)
    return {
        "reference": ref,
        "ours": ours,
        # a few minutes on 2 CPU cores (the demo and the CPU quality benchmark)
        "reference-small": dataclasses.replace(ref, preset="reference-small", data=small_data, train=small_train),
        "ours-small": dataclasses.replace(ours, preset="ours-small", data=small_data,
                                          train=dataclasses.replace(small_train, prediction="rollout")),
        # tests: seconds
        "tiny": dataclasses.replace(
            ref, preset="tiny", data=DataConfig(batch_size=16),
            train=TrainConfig(epochs=1, max_steps=6, lr=1e-3, log_every=2, save_every=-1, precision="no")),
    }


def run_preset(name: str) -> RunConfig:
    presets = _run_presets()
    _check(name in presets, f"preset {name!r}: unknown; choose from {', '.join(presets)}")
    return presets[name]


def _parse_value(text: str, current):
    """Parse a command-line string into the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{text!r} is not a boolean (use true/false)")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, tuple):
        return tuple(type(current[0])(v) if current else v for v in text.split(","))
    return text


def apply_overrides(cfg, overrides: list[str]):
    """Apply ``section.field=value`` overrides (e.g. ``train.lr=1e-3``, ``data.augment.flip_lr=0.5``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        key, text = item.split("=", 1)
        cfg = _replace_path(cfg, key.strip().split("."), text.strip(), key)
    return cfg


def _replace_path(obj, path: list[str], text: str, key: str):
    name = path[0]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        known = ", ".join(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else ""
        raise ConfigError(f"--set {key}: unknown field {name!r} (known here: {known})")
    current = getattr(obj, name)
    if len(path) > 1:
        return dataclasses.replace(obj, **{name: _replace_path(current, path[1:], text, key)})
    try:
        value = _parse_value(text, current)
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"--set {key}={text}: {e}") from None
    return dataclasses.replace(obj, **{name: value})


def run_config_from_dict(d: dict) -> RunConfig:
    """Rebuild a RunConfig from its to_dict() form (checkpoints, config.json)."""
    def tup(x):
        return tuple(x) if isinstance(x, list) else x

    aug = AugmentConfig(**{k: tup(v) for k, v in d["data"]["augment"].items()})
    data = DataConfig(**{**d["data"], "augment": aug})
    model = ModelConfig(**{k: tup(v) for k, v in d["model"].items()})
    return RunConfig(preset=d.get("preset", "custom"), model=model, loss=LossConfig(**d["loss"]), data=data,
                     train=TrainConfig(**d["train"]))


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
        _check(self.lr > 0, f"probe.lr={self.lr}: must be > 0")
        for name in ("epochs", "batch_size", "sample_timesteps", "hidden", "embed_batch"):
            _check(getattr(self, name) >= 1, f"probe.{name}={getattr(self, name)}: must be >= 1")
        _check(0 <= self.warmup_fraction < 1, f"probe.warmup_fraction={self.warmup_fraction}: must be in [0, 1)")
        _check(0 <= self.end_lr_ratio <= 1, f"probe.end_lr_ratio={self.end_lr_ratio}: must be in [0, 1]")
