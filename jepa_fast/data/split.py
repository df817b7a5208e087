"""A packed split opened for loading: its windows of ``seq_len`` frames, decoded on demand.

Training and probing draw fixed-length windows from episodes of any length. Episode e (frames
[s_e, s_e + n_e) of the store) holds the windows that start at s_e + offset, s_e + offset + stride, ...
while a whole window fits; an episode shorter than ``seq_len`` holds none (counted and said). The
windows are numbered 0..n-1 in store order, and that number is what the ``Sampler`` shuffles and
shards, so for the two-rooms data (every episode exactly one window: seq_len = its length, stride =
seq_len) window i is trajectory i and the batches are those of fixed-length trajectories.

``SplitData`` keeps the compressed rows in RAM (``StoreReader.load_to_ram``) and the per-frame actions
and targets decoded; a window's frames come from the one or two rows it touches, straight into the
caller's buffer when the window is exactly one row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from jepa_fast.data.reader import StoreReader
from jepa_fast.errors import JepaFastError

log = logging.getLogger(__name__)

WINDOW_ARRAYS_BYTES = 256 << 20
"""Per-window copies of the actions and targets are kept (one row gather per batch instead of a gather per
frame) while they take at most this many bytes; overlapping windows of a very large store gather per frame."""


def window_starts(starts: np.ndarray, seq_len: int, stride: int, offset: int = 0) -> tuple[np.ndarray, int]:
    """(first frame of every window, episodes too short to hold one) for episodes given by ``starts`` (E + 1,)."""
    lengths = np.diff(starts)
    counts = np.maximum(0, (lengths - offset - seq_len) // stride + 1)  # windows per episode
    ep = np.repeat(np.arange(len(lengths)), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # index of each episode's first window
    j = np.arange(int(counts.sum())) - first[ep]
    return (starts[:-1][ep] + offset + j * stride).astype(np.int64), int((counts == 0).sum())


class SplitData:
    """A packed split opened for loading: compressed rows in RAM, per-frame arrays decoded, and its windows.

    ``seq_len`` 0 means the episodes' own length (they must all have the same); ``stride`` 0 means
    ``seq_len`` (windows that do not overlap); ``offset`` is where an episode's first window starts.
    """

    def __init__(self, path: Path, seq_len: int = 0, stride: int = 0, offset: int = 0, in_ram: bool = True):
        self.path = Path(path)
        self.reader = r = StoreReader(self.path)
        if in_ram:
            r.load_to_ram()
        self.spec = r.spec()
        self.starts = r.episode_starts()  # (E + 1,)
        lengths = np.diff(self.starts)
        if seq_len == 0:
            if lengths.min() != lengths.max():
                raise JepaFastError(f"{self.path}: episodes have {lengths.min()}-{lengths.max()} frames; choose the "
                                    "window length: data.seq_len (train --seq-len N)")
            seq_len = int(lengths[0])
        if seq_len < 2 or stride < 0 or offset < 0:
            raise JepaFastError(f"{self.path}: windows of {seq_len} frames (stride {stride}, offset {offset}): need "
                                "seq_len >= 2, stride >= 0, offset >= 0")
        self.T, self.stride, self.offset = seq_len, stride or seq_len, offset
        self.window_starts, skipped = window_starts(self.starts, self.T, self.stride, offset)
        if len(self.window_starts) == 0:
            raise JepaFastError(f"{self.path}: no episode holds a window of {self.T} frames (the longest has "
                                f"{lengths.max()}); use a smaller data.seq_len")
        if skipped:
            log.info("%s: %d of %d episodes are shorter than %d frames and hold no window", self.path, skipped,
                     len(lengths), self.T)
        self.skipped = skipped
        self.n = len(self.window_starts)
        self.C, self.H, self.W, self.L = r.C, r.H, r.W, r.L
        self.A = self.spec.action_size
        self.frame_actions = r.actions()  # (F, A) float32
        self.frame_targets = r.targets()  # (F, K) float32 or None
        self._window_actions = self._window_targets = None
        K = 0 if self.frame_targets is None else self.frame_targets.shape[1]
        if self.n * ((self.T - 1) * self.A + self.T * K) * 4 <= WINDOW_ARRAYS_BYTES:
            every = np.arange(self.n)
            self._window_actions = self.window_actions(every)
            self._window_targets = self.window_targets(every)
        # every window is exactly one row: decode straight into the caller's buffer (fixed-length data)
        self.aligned = self.T == self.L and bool((self.window_starts % self.L == 0).all())
        import torch  # here, not at the top: pack and inspect read stores without needing torch

        self.scale = torch.tensor(r.scale, dtype=torch.float32)  # (C,)

    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        """(T, C, H, W) of one window."""
        return (self.T, self.C, self.H, self.W)

    @property
    def summary(self) -> str:
        """'N trajectories of T frames' (every episode one window), else windows, episodes and those skipped."""
        if self.aligned and self.n == self.reader.episodes:
            return f"{self.n:,} trajectories of {self.T} frames"
        return (f"{self.n:,} windows of {self.T} frames from {self.reader.episodes - self.skipped:,} episodes"
                + (f"; {self.skipped:,} shorter episodes skipped" if self.skipped else ""))

    @property
    def has_targets(self) -> bool:
        return self.frame_targets is not None

    # frames ---------------------------------------------------------------------------------------
    def decode_window(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 frames (T, C, H, W) of window i."""
        if out is None:
            out = np.empty(self.frame_shape, dtype=np.uint8)
        s = int(self.window_starts[i])
        if self.aligned:
            return self.reader.decode(s // self.L, out)
        return self.reader.read_frames(s, self.T, out)

    def decode_into(self, indices: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Decode windows ``indices`` into out (len(indices), T, C, H, W) uint8."""
        for j, i in enumerate(indices):
            self.decode_window(int(i), out[j])
        return out

    def first_frames(self, indices: np.ndarray) -> np.ndarray:
        """The first frame of windows ``indices`` in raw value units (uint8 x scale): (len, 1, C, H, W) float32,
        what the original evaluator hands the model."""
        out = np.empty((len(indices), 1, self.C, self.H, self.W), dtype=np.float32)
        row = np.empty((self.L, self.C, self.H, self.W), dtype=np.uint8)
        scale = self.reader.scale.astype(np.float32).reshape(-1, 1, 1)
        for j, i in enumerate(indices):
            r, a = divmod(int(self.window_starts[int(i)]), self.L)
            np.multiply(self.reader.decode(r, row)[a], scale, out=out[j, 0])
        return out

    # per-frame arrays over windows ---------------------------------------------------------------
    def window_actions(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), T - 1, A) float32: the actions between the frames of each window."""
        if self._window_actions is not None:
            return self._window_actions[indices]
        frames = self.window_starts[np.asarray(indices)][:, None] + np.arange(self.T - 1)
        return self.frame_actions[frames]

    def window_targets(self, indices: np.ndarray) -> np.ndarray | None:
        """(len(indices), T, K) float32 targets of each window's frames, or None."""
        if self.frame_targets is None:
            return None
        if self._window_targets is not None:
            return self._window_targets[indices]
        frames = self.window_starts[np.asarray(indices)][:, None] + np.arange(self.T)
        return self.frame_targets[frames]
