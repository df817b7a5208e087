"""The store reader: random access to a packed split's rows of frames, its small arrays, and its checks.

``StoreReader`` parses every shard's index once and then reads chunk bytes by offset (``os.pread``,
or from one in-RAM buffer), never through zarr's per-chunk machinery (~100x slower for random
access). A chunk is one row of ``L`` frames (schema 4; in schemas 1-3, one fixed-length trajectory, which
the reader presents the same way: a row per trajectory, one episode per row). Small arrays come out flat
and per frame: ``actions`` (F, A), ``targets`` (F, K), ``episode_starts`` (E + 1,). ``spec()`` describes the
data (``jepa_fast.spec``). Windows for training and probing are ``split.SplitData``'s job.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np

from jepa_fast.data.schema import (
    FORMAT_NAME,
    INTEGRITY_FIELDS,
    MAX_U64,
    READABLE_VERSIONS,
    ChunkChecksumError,
    ChunkCodec,
    array_crc,
    crc32c,
    integrity_digest,
    shard_path,
)
from jepa_fast.data.source import regular_file
from jepa_fast.errors import JepaFastError
from jepa_fast.progress import frame_bar
from jepa_fast.spec import DataSpec, two_rooms_flips

log = logging.getLogger(__name__)
_NOTED: set[str] = set()  # stores whose old-schema note was already printed
_CANNOT = {1: "no checksums: corruption and missing shards cannot be detected",
           2: "no content binding: swapped shards or edited attrs cannot be detected"}


def store_nbytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class StoreReader:
    """Random access to a packed split by row (a chunk of ``L`` frames), reading chunk bytes by offset.

    ``load_to_ram()`` reads every shard into one contiguous buffer (the compressed store is ~50x
    smaller than uint8 frames); otherwise chunks are read with ``os.pread`` on demand.
    """

    def __init__(self, path: Path):
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise JepaFastError(f"{self.path}: not a packed store (no zarr.json); create it with jepa-fast pack")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numcodecs codecs are "not in the Zarr v3 specification"
                group = zarr.open_group(str(self.path), mode="r")
                attrs = dict(group.attrs)
        except Exception as e:  # zarr raises many types for broken metadata
            raise JepaFastError(f"{self.path}: unreadable store metadata ({type(e).__name__}: {e})") from None
        if attrs.get("format") != FORMAT_NAME:
            raise JepaFastError(f"{self.path}: not a jepa-fast store (format={attrs.get('format')!r}); "
                                "create it with jepa-fast pack")
        version = attrs.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise JepaFastError(f"{self.path}: schema version {version}, this jepa-fast reads versions "
                                f"{', '.join(map(str, READABLE_VERSIONS))}; re-pack it with this jepa-fast")
        self.version = version
        if version < 3 and str(self.path) not in _NOTED:
            _NOTED.add(str(self.path))
            log.warning("%s: schema version %s store: %s; re-pack it to upgrade", self.path, version, _CANNOT[version])
        if not attrs.get("complete"):
            raise JepaFastError(f"{self.path}: incomplete store (an interrupted pack?); re-run jepa-fast pack")
        names = set(group.array_keys())
        for need in ("states", "actions") + (("episode_starts",) if version >= 4 else ()):
            if need not in names:
                raise JepaFastError(f"{self.path}: array {need!r} is missing; re-pack the split")
        self.attrs, self._names = attrs, names
        states = group["states"]
        if len(states.shape) != 5:
            raise JepaFastError(f"{self.path}: states has shape {states.shape}, expected (rows, L, C, H, W); re-pack")
        self.rows, self.L, self.C, self.H, self.W = states.shape
        meta = states.metadata.to_dict()
        try:
            sharding = meta["codecs"][0]["configuration"]
            inner, shard_rows = list(sharding["codecs"]), int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        except (KeyError, IndexError, TypeError):
            raise JepaFastError(f"{self.path}: states is not sharded as this format writes it; re-pack") from None
        self.codec = ChunkCodec.from_metadata(inner)
        self._group = group
        self.k, self.scale = self._check_attrs(attrs, group, names, shard_rows)
        self.row_bytes = self.L * self.C * self.H * self.W
        self._checked: set[int] = set()  # shards whose content was checked against their position
        self._parse_indices()
        self._blob: np.ndarray | None = None

    def _check_attrs(self, attrs: dict, group, names: set[str], shard_rows: int) -> tuple[int, np.ndarray]:
        """The attrs must agree with the arrays: one line naming the field otherwise."""
        def bad(field: str, why: str) -> JepaFastError:
            return JepaFastError(f"{self.path}: attrs {field} {why}; the store's metadata is damaged, re-pack it")

        if self.version >= 4:
            fields = (("rows", self.rows), ("row_frames", self.L), ("channels", self.C), ("height", self.H),
                      ("width", self.W), ("rows_per_shard", shard_rows))
        else:
            fields = (("n", self.rows), ("seq_len", self.L), ("channels", self.C), ("image_size", self.H),
                      ("trajectories_per_shard", shard_rows))
        for field, want in fields:
            if attrs.get(field) != want:
                raise bad(field, f"= {attrs.get(field)!r} but the states array says {want}")
        scale = attrs.get("scale")
        if (not isinstance(scale, list) or len(scale) != self.C
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in scale)
                or not all(math.isfinite(v) and v > 0 for v in scale)):
            raise bad("scale", f"= {scale!r} is not {self.C} positive numbers")
        if self.version >= 4:
            F, A = attrs.get("frames"), attrs.get("action_size")
            if not isinstance(F, int) or not 0 < F <= self.rows * self.L:
                raise bad("frames", f"= {F!r} does not fit {self.rows} rows of {self.L} frames")
            shapes = {"actions": (F, A), "targets": (F, len(attrs.get("target_names") or [])),
                      "episode_starts": (attrs.get("episodes", -1) + 1,)}
        else:
            shapes = {"actions": (self.rows, self.L - 1, 2), "locations": (self.rows, self.L, 2)}
        for name, want in shapes.items():
            if name in names and tuple(group[name].shape) != want:
                raise JepaFastError(f"{self.path}: {name} has shape {tuple(group[name].shape)}, expected {want} "
                                    "from the attrs; re-pack the split")
        absent = attrs.get("absent_shards", [])
        if self.version >= 2 and not isinstance(absent, list):
            raise bad("absent_shards", f"= {absent!r} is not a list")
        self._absent = set(absent) if self.version >= 2 else None
        self._integrity = self._check_integrity(attrs, shard_rows, bad) if self.version >= 3 else None
        return shard_rows, np.asarray(scale, dtype=np.float64)

    def _check_integrity(self, attrs: dict, k: int, bad) -> dict:
        """Schemas 3-4: the value-bearing attrs and the per-shard/array CRCs must match their digest."""
        integ = attrs.get("integrity")
        n_shards = -(-self.rows // k)
        if (not isinstance(integ, dict) or not isinstance(integ.get("shards"), list)
                or len(integ["shards"]) != n_shards or not isinstance(integ.get("arrays"), dict)):
            raise bad("integrity", "is missing or malformed")
        if integrity_digest(attrs, integ["shards"], integ["arrays"], self.version) != integ.get("digest"):
            raise bad("values", "(frames, episodes, scale, absent_shards, ...) do not match their checksum: the "
                      "metadata was edited or damaged")
        for s, c in enumerate(integ["shards"]):
            if (c is None) != (s in self._absent):
                raise bad("absent_shards", f"disagree with the shard checksums at shard {s}")
        return integ

    # index ------------------------------------------------------------------------------------
    def _parse_indices(self) -> None:
        import google_crc32c

        n_shards = -(-self.rows // self.k)
        self.chunk_shard = np.repeat(np.arange(n_shards), self.k)[: self.rows]
        self.chunk_offset = np.zeros(self.rows, dtype=np.int64)  # within its shard file
        self.chunk_nbytes = np.zeros(self.rows, dtype=np.int64)  # 0 = empty chunk (all zero)
        self.shard_size = np.zeros(n_shards, dtype=np.int64)
        tail = self.k * 16 + 4
        for s in range(n_shards):
            p = shard_path(self.path, s)
            lo, hi = s * self.k, min(self.rows, (s + 1) * self.k)
            if not p.exists():
                if self._absent is None or s in self._absent:  # all-empty shard (schema 1 cannot tell)
                    continue
                raise JepaFastError(f"{p}: shard {s} (rows {lo}-{hi - 1}) is missing; the store is damaged: "
                                    "re-pack the split (jepa-fast pack SRC DST --overwrite)")
            try:
                regular_file(p)
            except JepaFastError:
                raise JepaFastError(f"{p}: shard {s} is not a regular file; re-pack the split") from None
            size = p.stat().st_size
            if size < tail:
                raise JepaFastError(f"{p}: shard {s} is truncated ({size} bytes); re-pack the split")
            with open(p, "rb") as f:
                f.seek(size - tail)
                raw = f.read(tail)
            if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise JepaFastError(f"{p}: shard {s} index fails its CRC32C check (corrupt file); re-pack the split")
            idx = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.k, 2)
            m = hi - lo
            present = idx[:m, 0] != MAX_U64
            off = np.where(present, idx[:m, 0], 0).astype(np.int64)
            nb = np.where(present, idx[:m, 1], 0).astype(np.int64)
            if (off + nb > size - tail).any():
                raise JepaFastError(f"{p}: shard {s} index points past the end of the file (corrupt); "
                                    "re-pack the split")
            self.chunk_offset[lo:hi] = off
            self.chunk_nbytes[lo:hi] = nb
            self.shard_size[s] = size
        self.chunk_global = None

    def __getstate__(self) -> dict:
        """Picklable (DALI's spawned workers): the zarr group is dropped; the small arrays are read before."""
        return {**self.__dict__, "_group": None}

    def ram_blob(self) -> np.ndarray:
        """The in-RAM compressed store (``load_to_ram``): chunk i is ``[chunk_global[i], + chunk_nbytes[i])``."""
        if self._blob is None:
            raise JepaFastError(f"{self.path}: the store is not loaded in RAM (StoreReader.load_to_ram)")
        return self._blob

    @property
    def in_ram(self) -> bool:
        """Whether ``load_to_ram`` has run (chunks are then served from one buffer, with no file reads)."""
        return self._blob is not None

    def load_to_ram(self) -> None:
        """Read every stored chunk into one contiguous buffer (compressed), ordered by row, checking each
        shard file's CRC32C against its position (schemas 3-4) or each chunk's (schema 2) as it enters RAM."""
        if self._blob is not None:
            return
        starts = np.concatenate([[0], np.cumsum(self.chunk_nbytes)[:-1]]).astype(np.int64)
        blob = np.empty(int(self.chunk_nbytes.sum()), dtype=np.uint8)
        for s in np.nonzero(self.shard_size)[0]:
            lo, hi = s * self.k, min(self.rows, (s + 1) * self.k)
            data = self._shard_bytes(int(s))
            for i in range(lo, hi):
                nb = self.chunk_nbytes[i]
                if nb:
                    o = self.chunk_offset[i]
                    chunk = np.frombuffer(data, np.uint8, nb, o)
                    if self._integrity is None:
                        self._check(i, chunk)  # every chunk's CRC32C, once, as it enters RAM (~10 GB/s)
                    blob[starts[i]:starts[i] + nb] = chunk
        self._blob = blob
        self.chunk_global = starts

    def _shard_bytes(self, s: int) -> bytes:
        """A shard file's bytes; in schemas 3-4 checked against the CRC32C recorded for position s."""
        p = shard_path(self.path, s)
        data = p.read_bytes()
        if self._integrity is not None:
            if crc32c(data) != self._integrity["shards"][s]:
                lo, hi = s * self.k, min(self.rows, (s + 1) * self.k)
                for i in range(lo, hi):  # a damaged chunk is named by its own CRC; else the file is not this shard
                    if self.chunk_nbytes[i]:
                        self._check(i, np.frombuffer(data, np.uint8, self.chunk_nbytes[i], self.chunk_offset[i]))
                raise JepaFastError(f"{p}: holds other bytes than were written as shard {s} (rows "
                                    f"{lo}-{hi - 1}): a swapped, replaced or damaged file; re-pack the split")
            self._checked.add(s)
        return data

    def _check(self, i: int, chunk) -> memoryview:
        try:
            return self.codec.payload(chunk)
        except ChunkChecksumError:
            what = f"row {i}" if self.version >= 4 else f"trajectory {i}"
            raise JepaFastError(f"{shard_path(self.path, int(self.chunk_shard[i]))}: the chunk of {what} "
                                f"(shard {int(self.chunk_shard[i])}) fails its CRC32C check; the store is corrupt, "
                                "re-pack the split") from None

    def chunk(self, i: int) -> memoryview | None:
        """Stored bytes of row i's chunk (codec framing included), or None if the chunk is empty."""
        nb = int(self.chunk_nbytes[i])
        if nb == 0:
            return None
        if self._blob is not None:
            g = int(self.chunk_global[i])
            return memoryview(self._blob)[g:g + nb]
        s = int(self.chunk_shard[i])
        if self._integrity is not None and s not in self._checked:
            self._shard_bytes(s)  # once per shard: its content must be what was written at this position
        fd = os.open(shard_path(self.path, s), os.O_RDONLY)
        try:
            return memoryview(os.pread(fd, nb, int(self.chunk_offset[i])))
        finally:
            os.close(fd)

    def decode(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 frames (L, C, H, W) of row i."""
        if out is None:
            out = np.empty((self.L, self.C, self.H, self.W), dtype=np.uint8)
        c = self.chunk(i)
        if c is None:
            out[...] = 0
            return out
        # chunks in RAM had their CRC32C checked as they were loaded: not again on every batch
        payload = self.codec.payload(c, check=False) if self.in_ram else self._check(i, c)
        try:
            self.codec.decompress_into(payload, out)
        except Exception as e:  # numcodecs raises RuntimeError/ValueError on corrupt input
            raise JepaFastError(f"{self.path}: chunk of row {i} (shard {int(self.chunk_shard[i])}) fails to "
                                f"decompress ({e}); the store is corrupt, re-pack the split") from None
        return out

    def read_frames(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 frames [start, start + n) of the split (n, C, H, W), from the rows they touch."""
        if out is None:
            out = np.empty((n, self.C, self.H, self.W), dtype=np.uint8)
        row, done = None, 0
        while done < n:
            r, a = divmod(start + done, self.L)
            take = min(self.L - a, n - done)
            if a == 0 and take == self.L:  # a whole row: straight into the output
                self.decode(r, out[done:done + take])
            else:
                row = self.decode(r, row)
                out[done:done + take] = row[a:a + take]
            done += take
        return out

    # small arrays, per frame ----------------------------------------------------------------------
    @property
    def frames(self) -> int:
        return int(self.attrs["frames"]) if self.version >= 4 else self.rows * self.L

    @property
    def episodes(self) -> int:
        return int(self.attrs["episodes"]) if self.version >= 4 else self.rows

    def episode_starts(self) -> np.ndarray:
        """(E + 1,) int64: episode e is frames [starts[e], starts[e + 1])."""
        if self.version >= 4:
            starts = self._small("episode_starts").astype(np.int64)
            if starts[0] != 0 or starts[-1] != self.frames or (np.diff(starts) < 1).any():
                raise JepaFastError(f"{self.path / 'episode_starts'}: not increasing from 0 to {self.frames}; the "
                                    "store is damaged, re-pack the split")
            return starts
        return np.arange(self.rows + 1, dtype=np.int64) * self.L

    def actions(self) -> np.ndarray:
        """(F, A) float32: the action taken at each frame (zeros at an episode's last frame)."""
        a = self._small("actions")
        if self.version >= 4:
            return a
        flat = np.zeros((self.rows, self.L, a.shape[-1]), np.float32)  # (N, T, 2): the last step has no action
        flat[:, :-1] = a
        return flat.reshape(-1, a.shape[-1])

    def targets(self) -> np.ndarray | None:
        """(F, K) float32 per-frame probe targets, or None."""
        name = "targets" if self.version >= 4 else "locations"
        if name not in self._names:
            return None
        t = self._small(name)
        return t if self.version >= 4 else t.reshape(-1, t.shape[-1])

    def _small(self, name: str) -> np.ndarray:
        try:
            a = np.asarray(self._group[name][...])
        except Exception as e:  # zarr's crc32c codec, a missing or truncated chunk file, ...
            raise JepaFastError(f"{self.path / name}: unreadable ({type(e).__name__}: {str(e)[:100]}); the store is "
                                "corrupt, re-pack the split") from None
        if self._integrity is not None and array_crc(a) != self._integrity["arrays"].get(name):
            raise JepaFastError(f"{self.path / name}: holds other values than were packed (swapped or edited chunk "
                                "files); re-pack the split")
        return a

    def spec(self) -> DataSpec:
        """What the data is (channels, size, actions, targets, statistics, flips): the model's and probe's view."""
        a = self.attrs
        stats = a.get("stats") or {}
        if self.version >= 4:
            return DataSpec.from_dict({
                "channels": self.C, "height": self.H, "width": self.W, "action_size": a["action_size"],
                "channel_names": a.get("channel_names") or [f"c{c}" for c in range(self.C)],
                "static_channels": a.get("static_channels") or [False] * self.C,
                "target_names": a.get("target_names") or [], "flips": a.get("flips") or {},
                **{k: stats.get(k) or [] for k in ("value_mean", "value_std", "action_mean", "action_std")},
                "protocol": a.get("protocol", "generic")})
        return DataSpec(channels=self.C, height=self.H, width=self.W, flips=two_rooms_flips(self.W),
                        static_channels=(False, bool(a.get("walls_static"))))

    def fingerprint(self) -> str:
        """What identifies this store's content: the integrity digest (schemas 3-4), else a digest of the
        value-bearing attrs and every shard index."""
        if self._integrity is not None:
            return self._integrity["digest"]
        import hashlib

        h = hashlib.sha256(json.dumps({k: self.attrs.get(k) for k in INTEGRITY_FIELDS[3]}, sort_keys=True).encode())
        h.update(self.chunk_offset.tobytes())
        h.update(self.chunk_nbytes.tobytes())
        return h.hexdigest()

    def verify(self, progress: bool = False) -> int:
        """Check every chunk's CRC32C and decode it, and the small arrays; returns the number of chunks checked.

        Opening the store already checked the attrs against the arrays, every shard index and that no
        shard is missing."""
        out = np.empty((self.L, self.C, self.H, self.W), dtype=np.uint8)
        bar = frame_bar(self.rows * self.L, progress, "verify")
        for i in range(self.rows):
            self.decode(i, out)
            bar.update(self.L)
        bar.close()
        self.episode_starts()
        for name, arr in (("actions", self.actions()), ("targets", self.targets())):
            if arr is not None and not np.isfinite(arr).all():
                raise JepaFastError(f"{self.path}: {name} contain NaN or Inf")
        return self.rows
