"""Configuration of the simulator and of the datasets it writes (jepa_fast/sim; docs/TWO_ROOMS.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from jepa_fast.config.base import check

# ---------------------------------------------------------------------------------------------
# Simulator (docs/TWO_ROOMS.md; section numbers refer to it)


@dataclass(frozen=True)
class SimConfig:
    """Physics, rendering and sampling constants of the two-rooms environment (docs/TWO_ROOMS.md §1-§4, §8)."""

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
        check(self.image_size in (64, 65), f"sim.image_size={self.image_size}: must be 65 or 64")
        check(self.dot_std > 0, f"sim.dot_std={self.dot_std}: must be > 0")
        check(self.wall_width >= 1 and self.wall_width % 2 == 1,
               f"sim.wall_width={self.wall_width}: must be an odd number >= 1")
        check(0 <= self.cross_wall_rate <= 1, f"sim.cross_wall_rate={self.cross_wall_rate}: must be in [0, 1]")
        check(0 < self.action_lower_bd < self.action_upper_bd,
               "sim.action_lower_bd/action_upper_bd: need 0 < lower < upper")
        check(self.action_angle_noise > 0, "sim.action_angle_noise: must be > 0")
        check(self.value_scale in ("pdf", "uint8"), f"sim.value_scale={self.value_scale!r}: use 'pdf' or 'uint8'")
        lo, hi = self.exclude_wall_train
        check(lo <= hi, f"sim.exclude_wall_train={self.exclude_wall_train}: need lo <= hi")
        walls = self.wall_values()
        check(len(walls) > 0 and lo >= walls[0] and hi <= walls[-1],
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
"""Every split of a dataset root, in the original folder layout (docs/TWO_ROOMS.md §4)."""

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
    """Frames per trajectory T for every split except the expert ones (docs/TWO_ROOMS.md §4)."""
    expert_seq_len: int = 65
    """Frames per trajectory for probe_expert (64 actions; spec §8)."""

    def __post_init__(self) -> None:
        check(len(self.sizes) > 0, "dataset.sizes: at least one split is needed")
        for name, n in self.sizes.items():
            check(name in SPLITS, f"dataset split {name!r}: unknown; choose from {', '.join(SPLITS)}")
            check(isinstance(n, int) and n >= 1, f"dataset.sizes[{name!r}]={n}: must be an integer >= 1")
        check(self.seq_len >= 2, f"dataset.seq_len={self.seq_len}: must be >= 2")
        check(self.expert_seq_len >= 2, f"dataset.expert_seq_len={self.expert_seq_len}: must be >= 2")

    def seq_len_of(self, split: str) -> int:
        return self.expert_seq_len if SPLIT_KIND[split] == "expert" else self.seq_len


DATASET_PRESETS: dict[str, dict[str, int]] = {
    # docs/TWO_ROOMS.md §8: 147,008 x 17 = 2,499,136 training frames
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
    check(name in DATASET_PRESETS, f"preset {name!r}: unknown; choose from {', '.join(DATASET_PRESETS)}")
    sizes = dict(DATASET_PRESETS[name])
    if splits is not None:
        for s in splits:
            check(s in SPLITS, f"split {s!r}: unknown; choose from {', '.join(SPLITS)}")
        sizes = {s: sizes[s] for s in splits}
    if n_train is not None:
        check(n_train >= 1, f"--n {n_train}: must be >= 1")
        if "train" in sizes:
            sizes["train"] = n_train
    return DatasetConfig(sizes=sizes)

