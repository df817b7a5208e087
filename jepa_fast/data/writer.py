"""The store writer: episodes in, a schema-4 store out (``StoreBuilder``), with zarr's own shard bytes.

Frames arrive episode after episode (``add_episode``, or whole shards in place for fixed-length data:
``staging_view`` + ``commit``); they are laid back to back in rows of ``row_frames`` frames, ``rows_per_shard``
rows to a shard. A full shard goes to a worker thread that checks, quantises, compresses and writes it
(the bytes zarr would write: a test proves it), so memory stays bounded by a few shards whatever the
split's size. Actions, targets and episode starts are appended to raw files as episodes arrive and
become zarr arrays at ``finish``, which also writes the metadata, the statistics and the integrity
record. The builder reports its durable position after every shard (``state``) so a killed pack
resumes (``resume_point``). Used by the packer, the simulator's ``generate --format zarr`` and the
``EpisodeWriter`` API (``episodes.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jepa_fast.data.schema import (
    FORMAT_NAME,
    MAX_U64,
    SCHEMA_VERSION,
    ChunkCodec,
    array_crc,
    integrity_digest,
    quantize,
    shard_path,
)
from jepa_fast.data.shard import BadValue, write_shard
from jepa_fast.errors import JepaFastError

IN_FLIGHT_BYTES = 64 << 20
"""Source frames staged or in flight to the shard workers, at most (a deeper queue rides out slow file opens)."""
PROGRESS_EVERY_S = 1.0
"""The durable position is reported at most this often (and whenever no shard is in flight): a kill loses
at most this much work, and tiny shards do not each cost a progress write."""


class StoreBuilder:
    """Builds one split store in ``path`` (a partial folder the caller renames when ``finish`` returns)."""

    def __init__(self, path: Path, *, frame_shape: tuple[int, int, int], action_size: int, row_frames: int,
                 rows_per_shard: int, codec: ChunkCodec, scale: np.ndarray, dtype, where: str,
                 target_names: tuple[str, ...] = (), clip_limit: np.ndarray | None = None, workers: int = 2,
                 state: dict | None = None, on_progress=None):
        self.path, self.where = Path(path), where
        self.C, self.H, self.W = frame_shape
        self.A, self.K, self.target_names = action_size, len(target_names), tuple(target_names)
        self.L, self.k, self.codec = row_frames, rows_per_shard, codec
        self.scale, self.dtype, self.limit = np.asarray(scale, np.float64), np.dtype(dtype), clip_limit
        self.shard_frames = self.L * self.k
        self.on_progress = on_progress
        st = state or {}
        self.shards_done = int(st.get("shards_done", 0))
        self.hist = np.asarray(st.get("hist", np.zeros((self.C, 256))), dtype=np.int64)
        self.value_max = np.asarray(st.get("value_max", np.zeros(self.C)), dtype=np.float64)
        self.static = np.asarray(st.get("static", np.ones(self.C, bool)), dtype=bool)
        self.absent: set[int] = set(st.get("absent", []))
        self.shard_crc: dict[int, int] = {int(s): c for s, c in st.get("shard_crc", {}).items()}
        self.path.mkdir(parents=True, exist_ok=True)
        self._raw = {n: self.path / f".{n}.raw" for n in ("actions", "targets", "starts")}
        F0 = self.shards_done * self.shard_frames  # frames safely in written shards
        self.starts = self._resume_small_arrays(F0) if state else []
        self.frames = F0  # frames handed to shards or staged
        self._skip = 0  # frames of the next episode that the written shards already hold (resume)
        if self.starts and self.starts[-1] < F0:  # the episode the last written shard cut: its rest follows
            self._skip = F0 - self.starts[-1]
        self._files = {n: open(p, "ab") for n, p in self._raw.items()}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="jepa-pack")
        self._pending: deque = deque()
        shard_bytes = self.shard_frames * self.C * self.H * self.W * np.dtype(self.dtype).itemsize
        n_buf = max(2 * workers + 2, min(8 * workers + 2, IN_FLIGHT_BYTES // max(1, shard_bytes)))
        self._free = [np.zeros((self.shard_frames, self.C, self.H, self.W), self.dtype) for _ in range(n_buf)]
        self._staging = self._free.pop()
        self._fill = 0
        self._last = None  # the last frame handed to a shard, as given (static channels across shard boundaries)
        self._last_stored = self._stored_last_frame() if self.shards_done else None
        self._saved = time.monotonic()  # progress is saved at most once a second (and when nothing is in flight)

    # -- resume -----------------------------------------------------------------------------------
    def _resume_small_arrays(self, F0: int) -> list[int]:
        """Cut the raw small arrays back to the written shards' frames; returns the episode starts kept."""
        starts = np.fromfile(self._raw["starts"], dtype=np.int64) if self._raw["starts"].exists() else np.zeros(0)
        keep = starts[starts < F0] if F0 else starts[:0]
        for name, row in (("actions", self.A * 4), ("targets", self.K * 4), ("starts", 8)):
            p = self._raw[name]
            if p.exists():
                with open(p, "r+b") as f:
                    f.truncate((F0 if name != "starts" else len(keep)) * row)
        return [int(v) for v in keep]

    def _stored_last_frame(self) -> np.ndarray | None:
        """The last frame of the last written shard, as stored (uint8): what a resumed build compares across."""
        p = shard_path(self.path, self.shards_done - 1)
        if not p.exists():
            return None
        data = p.read_bytes()
        index = np.frombuffer(data[-(self.k * 16 + 4):-4], dtype="<u8").reshape(self.k, 2)
        present = np.nonzero(index[:, 0] != MAX_U64)[0]
        if not len(present):
            return None
        off, nb = (int(v) for v in index[present[-1]])
        row = np.empty((self.L, self.C, self.H, self.W), np.uint8)
        self.codec.decompress_into(self.codec.payload(memoryview(data)[off:off + nb], check=False), row)
        return row[-1]

    @property
    def resume_point(self) -> tuple[int, int]:
        """(episode to add next, its frames already written): a resumed pack re-adds from that episode; the
        builder drops the frames it already holds."""
        if self._skip:
            return len(self.starts) - 1, self._skip
        return len(self.starts), 0

    # -- adding episodes ------------------------------------------------------------------------
    def add_episode(self, frames, actions, targets=None) -> None:
        """One episode: frames (n, C, H, W), actions (n - 1, A) (or (n, A), the last unused), targets (n, K)."""
        frames = np.asarray(frames)
        n = len(frames)
        skip, self._skip = self._skip, 0
        if not skip:
            self._meta(n, actions, targets)
        else:  # resuming inside this episode: its start and first frames are on disk already
            self._meta(n, actions, targets, skip=skip)
        i = skip
        while i < n:
            take = min(n - i, self.shard_frames - self._fill)
            self._staging[self._fill:self._fill + take] = frames[i:i + take]
            self._fill += take
            i += take
            if self._fill == self.shard_frames:
                self._submit()
        self.frames += n - skip

    @property
    def at_shard_start(self) -> bool:
        """No frame of the shard being assembled is staged yet (whole shards can be read in place)."""
        return self._fill == 0

    def staging_view(self) -> np.ndarray:
        """The free frames of the shard being assembled, to fill in place (then ``commit``)."""
        return self._staging[self._fill:]

    def commit(self, lengths, actions, targets=None) -> None:
        """Episodes of ``lengths`` frames were written into ``staging_view()``: record them (actions (m, T-1, A)
        or a list per episode, targets (m, T, K)). Equal lengths with array actions take one vectorised write."""
        lengths = [int(n) for n in lengths]
        if isinstance(actions, np.ndarray) and actions.ndim == 3 and len(set(lengths)) == 1:
            m, T = len(lengths), lengths[0]
            self._meta_block(m, T, np.asarray(actions, dtype=np.float32), targets)
            self.frames += m * T
        else:
            for j, n in enumerate(lengths):
                self._meta(n, actions[j], None if targets is None else targets[j])
                self.frames += n
        self._fill += sum(lengths)
        if self._fill == self.shard_frames:
            self._submit()

    def _meta_block(self, m: int, T: int, actions: np.ndarray, targets, skip: int = 0) -> None:
        """Record m episodes of T frames: actions (m, T - 1 or T, A), targets (m, T, K) or None. ``skip``
        (resume, m = 1): the frames of the episode that the written shards already hold."""
        if actions.shape[1] not in (T - 1, T):
            raise JepaFastError(f"{self.where}: episode {self.episodes} has {T} frames but {actions.shape[1]} actions; "
                                f"expected {T - 1} (one between consecutive frames) or {T}")
        full = np.zeros((m, T, self.A), np.float32)
        full[:, :T - 1] = actions[:, :T - 1]
        if not np.isfinite(full).all():
            e = self.episodes + int(np.nonzero(~np.isfinite(full).all(axis=(1, 2)))[0][0])
            raise JepaFastError(f"{self.where}: episode {e}: actions contain NaN or Inf; fix or drop them")
        self._files["actions"].write(full[:, skip:].tobytes())
        if self.K:
            if targets is None:
                raise JepaFastError(f"{self.where}: episode {self.episodes} has no targets; every episode needs "
                                    f"{', '.join(self.target_names)}")
            t = np.asarray(targets, dtype=np.float32).reshape(m, T, self.K)
            if not np.isfinite(t).all():
                e = self.episodes + int(np.nonzero(~np.isfinite(t).all(axis=(1, 2)))[0][0])
                raise JepaFastError(f"{self.where}: episode {e}: targets contain NaN or Inf; fix or drop them")
            self._files["targets"].write(t[:, skip:].tobytes())
        if not skip:
            starts = self.frames + T * np.arange(m, dtype=np.int64)
            self._files["starts"].write(starts.tobytes())
            self.starts.extend(starts.tolist())

    def _meta(self, n: int, actions, targets, skip: int = 0) -> None:
        """Record one episode of n frames (actions (n - 1 or n, A), targets (n, K) or None)."""
        actions = np.asarray(actions, dtype=np.float32).reshape(1, -1, self.A)
        self._meta_block(1, n, actions, None if targets is None else np.asarray(targets), skip)

    @property
    def episodes(self) -> int:
        return len(self.starts)

    # -- shards ---------------------------------------------------------------------------------
    def _submit(self, n: int | None = None) -> None:
        n = self.shard_frames if n is None else n
        s = self.shards_done + len(self._pending)
        buf = self._staging
        if n < self.shard_frames:
            buf[n:] = 0  # the last row's padding, and rows past the end
        first = s * self.shard_frames
        new = np.zeros(n, bool)  # the frames of this shard that start an episode
        starts = np.asarray(self.starts[-(n + 1):], dtype=np.int64)
        new[starts[(starts >= first) & (starts < first + n)] - first] = True
        # a channel stays static only while every frame equals its episode's previous one: within a shard the
        # worker compares; across the boundary with the previous shard, here
        clip = self.limit is not None
        if not new[0] and self.static.any():  # compared as stored (quantised), like the worker's comparisons
            last = quantize(self._last, self.scale, clip=clip)[0] if self._last is not None else self._last_stored
            if last is not None:
                q0 = quantize(buf[:1], self.scale, clip=clip)[0]
                self.static &= ~((q0 != last).reshape(self.C, -1).any(axis=1))
        self._last = buf[n - 1:n].copy()  # quantised only if the next shard continues its episode
        self._last_stored = None
        fut = self._pool.submit(write_shard, self.path, s, buf, n, self.L, self.k, self.codec, self.scale,
                                self.limit, first, new, self.static.copy())
        self._pending.append((s, fut, buf))
        while not self._free:  # every buffer is in flight: wait for the oldest shard
            self._retire()
        self._staging, self._fill = self._free.pop(), 0

    def _retire(self) -> None:
        """Wait for the oldest shard; fold its results in and move the durable position past it."""
        s, fut, buf = self._pending.popleft()
        try:
            crc, hist, vmax, static = fut.result()
        except BadValue as e:
            raise JepaFastError(self._locate(e)) from None
        except BaseException:
            self._cancel()
            raise
        self._free.append(buf)
        if crc is None:
            self.absent.add(s)
            self.shard_crc.pop(s, None)
        else:
            self.absent.discard(s)
            self.shard_crc[s] = crc
        self.hist += hist
        np.maximum(self.value_max, vmax, out=self.value_max)
        self.static &= static
        self.shards_done = s + 1
        if self.on_progress is not None and (time.monotonic() - self._saved > PROGRESS_EVERY_S or not self._pending):
            self._saved = time.monotonic()
            for f in self._files.values():
                f.flush()
            self.on_progress(self.state())

    def _locate(self, e: BadValue) -> str:
        ep = int(np.searchsorted(np.asarray(self.starts), e.frame, side="right")) - 1
        return (f"{self.where}: episode {ep}, frame {e.frame - self.starts[ep]}, channel {e.channel} contains "
                f"{e.what}; fix or drop that episode before packing (frames must be finite and >= 0)")

    def _cancel(self) -> None:
        for _, fut, _ in self._pending:
            fut.cancel()
        self._pending.clear()

    def state(self) -> dict:
        """The durable position: enough to resume after a kill (see ``resume_point``)."""
        return {"shards_done": self.shards_done, "hist": self.hist.tolist(), "value_max": self.value_max.tolist(),
                "static": self.static.tolist(), "absent": sorted(self.absent),
                "shard_crc": {str(s): c for s, c in self.shard_crc.items()}}

    def checkpoint(self) -> None:
        """Wait for the shards in flight and report the durable position (for a caller that stops early and
        wants to resume later; the frames staged for an unfinished shard are not kept)."""
        while self._pending:
            self._retire()
        for f in self._files.values():
            f.flush()
        if self.on_progress is not None:
            self.on_progress(self.state())

    def close(self) -> None:
        """Stop the workers and close the raw files (after ``finish``, or when abandoning the build)."""
        self._cancel()
        self._pool.shutdown(wait=True)
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()

    # -- the end ----------------------------------------------------------------------------------
    def finish(self, attrs: dict, flips: dict | None = None, channel_names: tuple[str, ...] | None = None) -> dict:
        """Write the last shard, the small arrays, the metadata and the integrity record; returns the attrs."""
        import zarr

        if self._skip:
            raise JepaFastError(f"{self.where}: the pack ended inside episode {len(self.starts) - 1}")
        if self._fill:
            self._submit(self._fill)
        while self._pending:
            self._retire()
        for f in self._files.values():
            f.close()
        F, L, k = self.frames, self.L, self.k
        R = max(1, -(-F // L))
        if self.episodes == 0:
            raise JepaFastError(f"{self.where}: no episode to pack")
        for s in range(-(-R // k)):
            if s not in self.absent and not shard_path(self.path, s).exists():
                raise JepaFastError(f"{shard_path(self.path, s)}: shard {s} of the store being written is missing "
                                    "(deleted during the pack?); run the pack again")
        actions = np.memmap(self._raw["actions"], np.float32, "r", shape=(F, self.A))
        starts = np.append(np.asarray(self.starts, np.int64), F)
        g = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        g.create_array("states", shape=(R, L, self.C, self.H, self.W), dtype="uint8", chunks=(1, L, self.C, self.H,
                       self.W), shards=(k, L, self.C, self.H, self.W), compressors=self.codec.zarr_codecs(),
                       fill_value=0)
        arrays = {"actions": _small(g, "actions", actions), "episode_starts": _small(g, "episode_starts", starts),
                  "targets": None}
        acted = np.ones(F, bool)
        acted[starts[1:] - 1] = False  # an episode's last frame has no action
        stats = dict(zip(("action_mean", "action_std"), _moments(actions, acted)))
        if self.K:
            targets = np.memmap(self._raw["targets"], np.float32, "r", shape=(F, self.K))
            arrays["targets"] = _small(g, "targets", targets)
            stats.update(zip(("target_mean", "target_std"), _moments(targets)))
        levels = np.arange(256, dtype=np.float64)
        count = self.hist.sum(axis=1).clip(min=1)
        mean_q = self.hist @ levels / count
        var_q = self.hist @ levels**2 / count - mean_q**2
        stats.update(value_mean=(mean_q * self.scale).tolist(),
                     value_std=(np.sqrt(np.maximum(var_q, 0)) * self.scale).tolist())
        lengths = np.diff(starts)
        attrs = {**attrs, "format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "frames": int(F),
                 "episodes": int(self.episodes), "rows": int(R), "row_frames": int(L), "channels": self.C,
                 "height": self.H, "width": self.W, "action_size": self.A,
                 "channel_names": list(channel_names or [f"c{c}" for c in range(self.C)]),
                 "static_channels": [bool(v) for v in self.static], "target_names": list(self.target_names),
                 "scale": self.scale.tolist(), "value_max": self.value_max.tolist(), "source_dtype": str(self.dtype),
                 "codec": self.codec.name, "rows_per_shard": k, "absent_shards": sorted(self.absent),
                 "flips": flips or {}, "episode_length": [int(lengths.min()), int(lengths.max())], "stats": stats}
        shards = [self.shard_crc.get(s) for s in range(-(-R // k))]
        attrs["integrity"] = {"shards": shards, "arrays": arrays, "digest": integrity_digest(attrs, shards, arrays)}
        g.attrs.update({**attrs, "complete": True})
        for p in self._raw.values():
            p.unlink(missing_ok=True)
        self._pool.shutdown(wait=True)
        return attrs


def _small(group, name: str, values: np.ndarray) -> int:
    """Write a small array (zstd + crc32c, chunked by rows) and return the CRC32C of its values."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    rows = max(1, min(len(values), (8 << 20) // max(1, values[:1].nbytes)))
    a = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(rows, *values.shape[1:]),
                           compressors=[ZstdCodec(level=3), Crc32cCodec()], fill_value=0)
    for i in range(0, len(values), rows):  # chunk by chunk: bounded memory for memory-mapped values
        a[i:i + rows] = np.asarray(values[i:i + rows])
    return array_crc(values)


def _moments(a: np.ndarray, rows: np.ndarray | None = None) -> tuple[list[float], list[float]]:
    """Per-column mean and std of a (F, X) array (of the rows where ``rows`` is True), in blocks (it may be
    memory-mapped)."""
    X = a.shape[1]
    s, ss, n = np.zeros(X), np.zeros(X), 0
    for i in range(0, len(a), 1 << 20):
        b = np.asarray(a[i:i + (1 << 20)], dtype=np.float64)
        if rows is not None:
            b = b[rows[i:i + (1 << 20)]]
        s += b.sum(0)
        ss += (b**2).sum(0)
        n += len(b)
    mean = s / max(n, 1)
    return mean.round(6).tolist(), np.sqrt(np.maximum(ss / max(n, 1) - mean**2, 0)).round(6).tolist()
