"""The sampler: the single owner of randomness in data loading and of the loading position.

For a seed it fixes, per epoch, the permutation of trajectories, the split of every global batch
into disjoint per-process shards, and every augmentation decision. Loaders (DALI or torch) only
execute its ``Plan``s, so the same seed gives the same batches whichever loader runs them, and the
position (epoch, step) is all a checkpoint needs to resume the rest of an epoch exactly.

The position is changed only here: ``plans()`` and ``plan_at()`` are pure, and ``consume()`` moves
the position past each batch as the loader hands it to the consumer (not when it is prefetched), so
a checkpoint taken while holding a batch resumes with the next one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from jepa_fast.config import AugmentConfig
from jepa_fast.errors import JepaFastError

Item = TypeVar("Item")


@dataclass
class Plan:
    """One batch for one process: which trajectories and what to do to each."""

    epoch: int
    step: int
    indices: np.ndarray  # (B,) int64 trajectory indices
    flip_lr: np.ndarray  # (B,) bool
    flip_ud: np.ndarray  # (B,) bool
    brightness: np.ndarray  # (B,) float32 factor (1 = none)
    noise_std: np.ndarray  # (B,) float32 (0 = none), in units of the channel maximum


class Sampler:
    """Seeded epochs of shuffled, sharded batches with augmentation decisions; resumable.

    Global batch g of an epoch holds ``perm[g*B*W : (g+1)*B*W]``; process ``rank`` takes its
    ``rank``-th share of B. With drop_last the incomplete tail (m < B*W trajectories) is dropped, the
    same for every rank. Without it the tail is one more global batch, split over the W ranks as
    evenly as possible: sizes differ by at most one, ranks in order, and no rank is ever handed an
    empty batch (every process must take every step): when m < W, ranks m..W-1 each get one
    trajectory repeated from the start of the epoch's permutation (perm[0], perm[1], ...), so the
    epoch covers every trajectory once and W - m of them twice, as torch's DistributedSampler pads.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True, augment: AugmentConfig | None = None,
                 name: str = "split"):
        if not 0 <= rank < world_size:
            raise JepaFastError(f"sampler: rank {rank} is outside world_size {world_size}")
        if batch_size > n:
            raise JepaFastError(f"{name}: batch size {batch_size} is larger than the split ({n} trajectories); "
                                "lower data.batch_size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment = augment or AugmentConfig()
        per_step = batch_size * world_size
        self.steps_per_epoch = n // per_step if drop_last else -(-n // per_step)
        if self.steps_per_epoch == 0:
            raise JepaFastError(f"{name}: {n} trajectories make no full batch of {batch_size} for each of "
                                f"{world_size} processes; use fewer processes or a smaller batch")
        self._epoch = 0
        self._step = 0  # the next batch to hand out is (self._epoch, self._step)
        self._draws: tuple[int, np.ndarray] | None = None

    # -- determinism --------------------------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.n).astype(np.int64)

    def plan(self, epoch: int, step: int, perm: np.ndarray | None = None) -> Plan:
        """The batch of this rank at (epoch, step)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside 0..{self.steps_per_epoch - 1}")
        perm = self.permutation(epoch) if perm is None else perm
        B, W = self.batch_size, self.world_size
        chunk = perm[step * B * W:(step + 1) * B * W]
        if len(chunk) == B * W:
            idx = chunk[self.rank * B:(self.rank + 1) * B]
            pos = step * B * W + self.rank * B + np.arange(len(idx))
        else:  # the tail without drop_last: see the class docstring
            m = len(chunk)
            if m >= W:
                part = np.array_split(np.arange(m), W)[self.rank]
                idx, pos = chunk[part], step * B * W + part
            elif self.rank < m:
                idx, pos = chunk[self.rank:self.rank + 1], step * B * W + np.array([self.rank])
            else:
                pos = np.array([(self.rank - m) % self.n])
                idx = perm[pos]
        return self._decide(epoch, step, idx, pos)

    def _decide(self, epoch: int, step: int, idx: np.ndarray, pos: np.ndarray) -> Plan:
        """Augmentation decisions, keyed by (seed, epoch, position in the epoch): identical on every rank/loader."""
        a = self.augment
        m = len(idx)
        if not a.enabled:
            return Plan(epoch, step, idx, np.zeros(m, bool), np.zeros(m, bool), np.ones(m, np.float32),
                        np.zeros(m, np.float32))
        # one stream per epoch, indexed by position in the epoch (drawn once per epoch, then cached)
        if self._draws is None or self._draws[0] != epoch:
            self._draws = (epoch, np.random.default_rng([self.seed, epoch, 0xA06]).random((self.n, 5)))
        u = self._draws[1][pos]  # (m, 5) uniform draws for this batch's positions
        lo, hi = a.brightness_range
        flip_lr = u[:, 0] < a.flip_lr
        flip_ud = u[:, 1] < a.flip_ud
        bright = np.where(u[:, 2] < a.brightness_p, lo + (hi - lo) * u[:, 3], 1.0).astype(np.float32)
        noise = np.where(u[:, 4] < a.noise_p, a.noise_std, 0.0).astype(np.float32)
        return Plan(epoch, step, idx, flip_lr, flip_ud, bright, noise)

    # -- the position ---------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def step(self) -> int:
        return self._step

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, step) of the next batch to hand out."""
        return self._epoch, self._step

    def plans(self) -> Iterator[Plan]:
        """The plans of the rest of the current epoch, from the position on (pure: see ``consume``)."""
        epoch, start = self.position
        perm = self.permutation(epoch)
        for step in range(start, self.steps_per_epoch):
            yield self.plan(epoch, step, perm)

    def plan_at(self, start: tuple[int, int], epoch_offset: int, iteration: int) -> Plan | None:
        """For a pipeline started at position ``start`` that counts its own epochs and iterations (DALI's
        ``BatchInfo``): the plan of its ``iteration``-th batch of its ``epoch_offset``-th epoch, or None
        past the end of that epoch. Pure."""
        epoch = start[0] + epoch_offset
        step = iteration + (start[1] if epoch_offset == 0 else 0)
        return self.plan(epoch, step) if step < self.steps_per_epoch else None

    def consume(self, items: Iterable[tuple[tuple[int, int], Item]]) -> Iterator[Item]:
        """Hand out ``items`` ((epoch, step) of its plan, item) in order, moving the position past each
        one as it is handed out; after an epoch's last batch the position is the next epoch's start.
        An item that is not the one at the position is a loader bug and raises."""
        for (epoch, step), item in items:
            if (epoch, step) != self.position:
                raise RuntimeError(f"loader handed out batch {(epoch, step)} while the sampler is at {self.position}")
            self._step += 1
            if self._step == self.steps_per_epoch:
                self._epoch, self._step = self._epoch + 1, 0
            yield item

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "n": self.n,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "n", "batch_size", "world_size"):
            if state.get(key) != getattr(self, key):
                raise JepaFastError(f"sampler state: {key}={state.get(key)} does not match this run's "
                                    f"{getattr(self, key)}; resume with the same data and settings")
        epoch, step = int(state["epoch"]), int(state["step"])
        if step >= self.steps_per_epoch:  # a position at an epoch's end is the next epoch's start
            epoch, step = epoch + 1, 0
        self._epoch, self._step = epoch, step
