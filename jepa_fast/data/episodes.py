"""Write a store from any source, episode by episode: the Python API for data no packer reads.

    from jepa_fast.data import EpisodeWriter

    with EpisodeWriter("data/mine/train.zarr", frame_shape=(3, 96, 96), action_size=2,
                       target_names=("agent_x", "agent_y")) as w:
        for frames, actions, targets in my_episodes():   # frames (n, 3, 96, 96) uint8, actions (n - 1, 2),
            w.add(frames, actions, targets)              # targets (n, 2) float

The store appears only when the block ends without an exception (it is built in ``<dst>.partial``). After
a crash, ``EpisodeWriter(..., resume=True)`` continues the partial store: skip the first ``w.episodes_done``
episodes of your source and add the rest (the one the crash cut is re-added whole; the writer drops the
frames it already holds). Memory stays bounded by a few shards whatever the number of episodes.

Frames are uint8, or floats with a per-channel ``value_max`` (quantised to uint8 with scale value_max / 255;
a larger value is an error naming the episode). ``flips`` (``jepa_fast.spec.FlipRule`` per 'lr'/'ud') says
how a flip transforms actions and targets; without them, flip augmentation is refused on this data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from jepa_fast import atomic, lock
from jepa_fast.data.schema import ChunkCodec
from jepa_fast.data.shard import ScaleOverflow
from jepa_fast.data.writer import StoreBuilder
from jepa_fast.errors import JepaFastError
from jepa_fast.spec import FlipRule, check_flips, flips_to_json

PROGRESS = "writer_progress.json"


class EpisodeWriter:
    """Streams episodes into a schema-4 store at ``dst``; atomic and resumable (see the module docstring)."""

    def __init__(self, dst: Path, *, frame_shape: tuple[int, int, int], action_size: int,
                 target_names: tuple[str, ...] = (), channel_names: tuple[str, ...] | None = None,
                 value_max: tuple[float, ...] | None = None, flips: dict[str, FlipRule] | None = None,
                 codec: str = "lz4", row_frames: int = 16, chunk_mib: float = 1.0, workers: int = 2,
                 overwrite: bool = False, resume: bool = False, source: str = "EpisodeWriter"):
        self.dst = Path(dst)
        self.partial = self.dst.with_name(self.dst.name + ".partial")
        C, H, W = frame_shape
        if not 1 <= C <= 4 or H < 2 or W < 2:
            raise JepaFastError(f"{self.dst}: frame_shape {frame_shape}: need (C, H, W) with 1-4 channels")
        self.frame_shape = (C, H, W)
        self.dtype = np.dtype(np.uint8) if value_max is None else np.dtype(np.float32)
        scale = np.ones(C) if value_max is None else np.asarray(value_max, np.float64) / 255.0
        if len(scale) != C or not (scale > 0).all():
            raise JepaFastError(f"{self.dst}: value_max {value_max}: need {C} positive numbers (one per channel)")
        check_flips(flips or {}, action_size, len(target_names), f"{self.dst}: EpisodeWriter")
        self._flips = flips_to_json(flips or {})
        self._channels = tuple(channel_names or (f"c{c}" for c in range(C)))
        self._source = source
        self.options = {"frame_shape": list(frame_shape), "action_size": action_size, "targets": list(target_names),
                        "scale": scale.tolist(), "codec": codec, "row_frames": row_frames, "chunk_mib": chunk_mib}
        self._lock = lock.exclusive(self.dst, "store")
        self._lock.__enter__()
        try:
            atomic.check_destination(self.dst, overwrite, "store")
            state = self._load_progress() if resume else None
            if state is None:
                if self.partial.exists() and not overwrite and not resume:
                    raise JepaFastError(f"{self.partial} holds an interrupted write; pass resume=True to continue it "
                                        "or overwrite=True to start over")
                shutil.rmtree(self.partial, ignore_errors=True)
            k = max(1, round(chunk_mib * 2**20 / (row_frames * C * H * W)))
            self._builder = StoreBuilder(self.partial, frame_shape=self.frame_shape, action_size=action_size,
                                         row_frames=row_frames, rows_per_shard=k, codec=ChunkCodec(codec),
                                         scale=scale, dtype=self.dtype, where=str(self.dst), target_names=target_names,
                                         workers=workers, state=state, on_progress=self._save_progress)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    @property
    def episodes_done(self) -> int:
        """Episodes already in the (resumed) store: skip that many of your source, then add the rest."""
        return self._builder.resume_point[0]

    def add(self, frames, actions, targets=None) -> None:
        """One episode: frames (n, C, H, W), actions (n - 1, A) (or (n, A): the last is unused), targets (n, K)."""
        frames = np.asarray(frames)
        e = self._builder.episodes
        if frames.ndim != 4 or frames.shape[1:] != self.frame_shape or len(frames) < 2:
            hint = " (channels last? np.moveaxis(frames, -1, 1))" if frames.shape[-1:] == self.frame_shape[:1] else ""
            raise JepaFastError(f"{self.dst}: episode {e}: frames have shape {frames.shape}; expected (n >= 2, "
                                f"{', '.join(map(str, self.frame_shape))}){hint}")
        if self.dtype == np.uint8 and frames.dtype != np.uint8:
            raise JepaFastError(f"{self.dst}: episode {e}: frames are {frames.dtype}; this writer takes uint8 frames "
                                "(or give value_max to store floats)")
        try:
            self._builder.add_episode(frames.astype(self.dtype, copy=False), actions, targets)
        except ScaleOverflow:
            raise JepaFastError(f"{self.dst}: a frame exceeds value_max {self.options['scale']} x 255 (around episode "
                                f"{e}); raise value_max") from None

    def close(self) -> Path:
        """Finish the store and put it at ``dst``; returns it."""
        try:
            self._builder.finish({"source": {"kind": self._source}, "protocol": "generic", "clipped_outliers": 0,
                                  "pack": {"options": self.options, "source": {}}},
                                 flips=self._flips, channel_names=self._channels)
            (self.partial / PROGRESS).unlink(missing_ok=True)
            atomic.replace_path(self.partial, self.dst)
        except ScaleOverflow:
            raise JepaFastError(f"{self.dst}: a frame exceeds value_max; raise value_max") from None
        finally:
            self._builder.close()
            self._lock.__exit__(None, None, None)
        return self.dst

    def abort(self) -> None:
        """Stop without a store; the partial one stays for ``resume=True`` (the shards in flight are finished
        and recorded first)."""
        try:
            self._builder.checkpoint()
        except (JepaFastError, OSError):
            pass  # a bad episode or a full disk: what was recorded before stays resumable
        finally:
            self._builder.close()
            self._lock.__exit__(None, None, None)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    # progress ---------------------------------------------------------------------------------------
    def _save_progress(self, builder_state: dict) -> None:
        tmp = self.partial / f".{PROGRESS}.tmp"
        tmp.write_text(json.dumps({"options": self.options, "builder": builder_state}))
        os.replace(tmp, self.partial / PROGRESS)

    def _load_progress(self) -> dict | None:
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads((self.partial / PROGRESS).read_text())
            if saved.get("options") == self.options:
                return saved.get("builder")
            raise JepaFastError(f"{self.partial}: was written with other settings ({saved.get('options')}); resume "
                                "with the same ones, or pass overwrite=True")
        return None
