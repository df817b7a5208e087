"""Configuration of the jobs around training: packing a store (jepa_fast/data/pack.py) and probing a
model (jepa_fast/probe.py)."""

from __future__ import annotations

from dataclasses import dataclass

from jepa_fast.config.base import at_least, check, one_of

# ---------------------------------------------------------------------------------------------
# packing raw splits into the Zarr store


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
    """k, rows per shard (a row: one fixed-length episode, or row_frames frames); 0 picks it from chunk_mib."""
    row_frames: int = 0
    """L, frames per row (the unit a window's frames are decoded in); 0 = the episodes' length when they all
    have the same (one episode per row), else 16."""
    scale: str = "sample"
    """Per-channel quantisation scale for float input: 'sample' = 1.01 x the max over a strided sample
    (one read pass; the pack re-runs with the exact max if any value would clip), 'exact' = the max
    over the whole array (an extra full read pass)."""
    workers: int = 2
    """Threads that quantise, compress and write shards."""
    clip_outliers: bool = False
    """Float input only. A value above OUTLIER_RATIO (64) x the 99.9th percentile of a strided sample of
    its channel would stretch the quantisation range until every other value of the channel rounds to 0,
    so the pack refuses it (naming the count and the first one); with this flag such values are clipped to
    the channel's range instead, and the count is recorded in the store's attrs."""

    def __post_init__(self) -> None:
        one_of(self, "pack", "codec", ("lz4", "zstd"))
        one_of(self, "pack", "scale", ("sample", "exact"))
        check(1 <= self.zstd_level <= 22, f"pack.zstd_level={self.zstd_level}: must be in 1..22")
        check(self.chunk_mib > 0, f"pack.chunk_mib={self.chunk_mib}: must be > 0")
        at_least(self, "pack", 0, "chunk_trajectories", "row_frames")
        at_least(self, "pack", 1, "workers")

    def trajectories_per_shard(self, traj_bytes: int) -> int:
        if self.chunk_trajectories:
            return self.chunk_trajectories
        return max(1, round(self.chunk_mib * 2**20 / traj_bytes))


# ---------------------------------------------------------------------------------------------
# probing: the original protocol (docs/TWO_ROOMS.md §5)


@dataclass(frozen=True)
class ProbeConfig:
    """The course project's probing protocol (and, for other data, the same prober on the store's targets).
    Defaults are the original values; change them only to experiment, since the published numbers mean
    these settings."""

    lr: float = 2e-4
    """Adam lr of the very first step; the schedule's peak is lr x batch_size / 256."""
    epochs: int = 20
    """Prober training epochs."""
    batch_size: int = 64
    """Batch size of prober training and of evaluation (both drop the last incomplete batch)."""
    sample_timesteps: int = 30
    """When T > this, each training sample uses this many random timesteps."""
    hidden: int = 256
    """Prober: Linear(D, hidden) - ReLU - Linear(hidden, K), K the number of targets (two-rooms: 2)."""
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
    seq_len: int = 0
    """Frames per probed window (a rollout from its first frame) for data other than two-rooms; 0 = the
    run's training window (data.seq_len), or the episodes' own length. Two-rooms data is always probed on
    whole trajectories, as the original protocol does."""

    def __post_init__(self) -> None:
        at_least(self, "probe", 0, "seed", "seq_len")
        at_least(self, "probe", 1, "epochs", "batch_size", "sample_timesteps", "hidden", "embed_batch")
        check(self.lr > 0, f"probe.lr={self.lr}: must be > 0")
        check(0 <= self.warmup_fraction < 1, f"probe.warmup_fraction={self.warmup_fraction}: must be in [0, 1)")
        check(0 <= self.end_lr_ratio <= 1, f"probe.end_lr_ratio={self.end_lr_ratio}: must be in [0, 1]")


# ---------------------------------------------------------------------------------------------
# planning: closed-loop goal reaching in the two-rooms simulator (jepa_fast/plan/__init__.py)


@dataclass(frozen=True)
class PlanConfig:
    """``jepa-fast plan``: the episodes, the planner and the protocol (the docstring of jepa_fast/plan/__init__.py).

    The defaults reproduce the first prototype's setting: CEM, 256 samples x 3 iterations, horizon 16,
    warm-started, 4 actions executed per re-plan, 120 simulator steps, success within 4 px, training layouts."""

    episodes: int = 40
    """Episodes per set (cross-room and same-room), drawn from ``seed``."""
    seed: int = 0
    """Seed of the episodes (layouts, starts, goals) and of the planners' sampling."""
    layouts: str = "train"
    """Wall positions of the episodes: 'train' (the training split's), 'held_out' (wall_other's), 'all'."""
    planner: str = "cem"
    """'cem' (cross-entropy method: refit a Gaussian to the elite samples) or 'mppi' (cost-weighted mean)."""
    horizon: int = 16
    """Actions per planned sequence (H)."""
    samples: int = 256
    """Action sequences sampled per episode per iteration."""
    iterations: int = 3
    """Sampling iterations per re-plan."""
    elite_fraction: float = 0.1
    """CEM: the fraction of samples the Gaussian is refit to."""
    temperature: float = 0.1
    """MPPI: weights exp(-c / temperature) on each episode's costs rescaled to [0, 1]."""
    init_std: float = 1.0
    """Std of the first sampling distribution (and after each re-plan's warm start), in units of max_step."""
    replan_every: int = 4
    """Actions executed in the simulator between re-plans (k)."""
    max_steps: int = 120
    """Simulator steps per episode."""
    success_radius: float = 4.0
    """Success: the final distance to the goal is below this (pixels)."""
    cost: str = "min"
    """Reduction of the per-step distance over the horizon: 'min' (the closest point of the plan), 'final'."""
    max_step: float = 0.0
    """Longest action (pixels per step); 0 = the data's: the simulator's action_upper_bd (1.8), the largest
    step in the datasets it writes."""
    min_distance: float = 10.0
    """Same-room episodes: start and goal at least this far apart (pixels)."""
    detour_edges: tuple[float, ...] = (4.0, 12.0)
    """Cross-room strata by detour (door-aware path length - straight distance, pixels): below the first
    edge, between, above the last."""
    batch: int = 0
    """Episodes planned together (one batched rollout per iteration); 0 = all of them."""
    graph_trajectories: int = 200
    """``plan --graph``: training trajectories of an episode's layout that its roadmap is built from."""
    graph_link: float = 1.5
    """``plan --graph``: neighbour edges join latents closer than this many steps (a step: the median latent
    distance between consecutive training frames)."""
    graph_neighbours: int = 8
    """``plan --graph``: neighbour edges per node, at most."""
    graph_lookahead: float = 8.0
    """``plan --graph``: the subgoal lies this many steps along the roadmap's shortest path to the goal
    (within the horizon, so the planner can reach it)."""

    def __post_init__(self) -> None:
        at_least(self, "plan", 1, "episodes", "horizon", "samples", "iterations", "replan_every", "max_steps")
        at_least(self, "plan", 0, "seed", "max_step", "min_distance", "batch")
        at_least(self, "plan", 1, "graph_trajectories", "graph_neighbours")
        check(self.graph_link > 0 and self.graph_lookahead > 0, "plan.graph_link and plan.graph_lookahead: must be > 0")
        one_of(self, "plan", "planner", ("cem", "mppi"))
        one_of(self, "plan", "layouts", ("train", "held_out", "all"))
        one_of(self, "plan", "cost", ("min", "final"))
        check(0 < self.elite_fraction <= 1, f"plan.elite_fraction={self.elite_fraction}: must be in (0, 1]")
        check(self.temperature > 0, f"plan.temperature={self.temperature}: must be > 0")
        check(self.init_std > 0, f"plan.init_std={self.init_std}: must be > 0")
        check(self.success_radius > 0, f"plan.success_radius={self.success_radius}: must be > 0")
        check(list(self.detour_edges) == sorted(self.detour_edges) and all(e > 0 for e in self.detour_edges),
              f"plan.detour_edges={self.detour_edges}: positive and increasing")
        check(self.replan_every <= self.horizon,
              f"plan.replan_every={self.replan_every}: cannot exceed plan.horizon={self.horizon}")
