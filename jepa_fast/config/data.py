"""Configuration of the store writer and of the loaders (jepa_fast/data)."""

from __future__ import annotations

from dataclasses import dataclass, field

from jepa_fast.config.base import check

# ---------------------------------------------------------------------------------------------
# Packing raw splits into the Zarr store (jepa_fast/data/pack.py)


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
        check(self.codec in ("lz4", "zstd"), f"pack.codec={self.codec!r}: use 'lz4' or 'zstd'")
        check(1 <= self.zstd_level <= 22, f"pack.zstd_level={self.zstd_level}: must be in 1..22")
        check(self.chunk_mib > 0, f"pack.chunk_mib={self.chunk_mib}: must be > 0")
        check(self.chunk_trajectories >= 0, f"pack.chunk_trajectories={self.chunk_trajectories}: must be >= 0")
        check(self.scale in ("sample", "exact"), f"pack.scale={self.scale!r}: use 'sample' or 'exact'")
        check(self.workers >= 1, f"pack.workers={self.workers}: must be >= 1")

    def trajectories_per_shard(self, traj_bytes: int) -> int:
        if self.chunk_trajectories:
            return self.chunk_trajectories
        return max(1, round(self.chunk_mib * 2**20 / traj_bytes))


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
            check(0.0 <= v <= 1.0, f"augment.{name}={v}: a probability must be in [0, 1]")
        check(self.noise_std >= 0, f"augment.noise_std={self.noise_std}: must be >= 0")
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
    """Drop the last incomplete batch (static shapes for the compiled step)."""
    resident: str = "auto"
    """Torch fallback: 'device' holds the decoded uint8 split on the training device and gathers there;
    'host' decodes each batch on the CPU; 'auto' = device when it fits in a quarter of its memory."""
    workers: int = 0
    """Decode threads (torch loader) or DALI Python workers; 0 = auto (1 on a CPU device, where the step
    needs the cores; half the cores, at most 8, on a GPU machine)."""
    prefetch: int = 2
    """Batches prepared ahead of the step."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentations."""

    def __post_init__(self) -> None:
        check(self.loader in ("auto", "dali", "torch"), f"data.loader={self.loader!r}: use auto, dali or torch")
        check(self.seed >= 0, f"data.seed={self.seed}: must be >= 0")
        check(self.batch_size >= 1, f"data.batch_size={self.batch_size}: must be >= 1")
        check(self.resident in ("auto", "device", "host"), f"data.resident={self.resident!r}: use auto, device, host")
        check(self.workers >= 0, f"data.workers={self.workers}: must be >= 0 (0 = auto)")
        check(self.prefetch >= 1, f"data.prefetch={self.prefetch}: must be >= 1")

