"""The packed store: schema, writer and reader, defined once and side by side.

A split is packed into one Zarr v3 group ``<split>.zarr`` that plain zarr-python can open:

    states     uint8 (N, T, C, H, W); value = uint8 x attrs["scale"][c]
               sharded: one shard file (``states/c/<s>/0/0/0/0``) holds k whole trajectories
               (k chosen so a shard is ~1 MiB raw); inside it every trajectory is its own inner chunk,
               compressed with ``numcodecs.lz4`` (default) or ``zstd``
    actions    float32 (N, T-1, 2)
    locations  float32 (N, T, 2)          (only when the source has them)
    attrs      format, schema_version, complete, n, seq_len, channels, image_size, scale,
               value_max, source_dtype, codec, trajectories_per_shard, source, stats,
               walls_static (channel 1 identical in every frame of every trajectory)

Why one trajectory per inner chunk: it is the unit the loader samples, and with LZ4 the stored bytes of
an inner chunk are ``<4-byte little-endian size><raw LZ4 block>`` (numcodecs' framing), so skipping 4
bytes gives exactly the raw block that DALI's GPU ``fn.decoders.inflate`` decompresses. Each shard
file ends with zarr's shard index: k x (offset, nbytes) little-endian uint64 (2**64-1 = empty chunk)
followed by the CRC32C of those bytes. The reader parses these indices once and then reads chunk
bytes by offset, never through zarr's per-chunk machinery (which is ~100x slower for random access).

The writer encodes shards itself (same bytes zarr writes; a test proves it) so that quantisation and
compression run on several threads; zarr-python writes the metadata and the small arrays.

Quantisation of float input: q = floor(x / scale + 0.5) with a per-channel scale >= max / 255, so
|q * scale - x| <= scale / 2 everywhere (no clipping: a value that would clip triggers a repack with
the exact max). uint8 input is stored exactly with scale 1.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jepa_fast import atomic
from jepa_fast.config import PackConfig
from jepa_fast.errors import JepaFastError

FORMAT_NAME = "jepa-fast-zarr"
SCHEMA_VERSION = 1
MAX_U64 = 2**64 - 1
SCALE_HEADROOM = 1.01
SAMPLE_TRAJECTORIES = 64
PROGRESS_FILE = "pack_progress.json"

# We store chunks with numcodecs.lz4 on purpose (its bytes are raw LZ4 blocks DALI can inflate); zarr
# warns on every open that such codecs are outside the v3 core spec. Say it once, here, instead.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")


# ---------------------------------------------------------------------------------------------
# Codecs: the chunk compressor (bytes in the shard) and its zarr metadata twin


def _zarr_lz4_codec():
    """zarr's wrapper of numcodecs' LZ4 (metadata name "numcodecs.lz4")."""
    try:
        from zarr.codecs.numcodecs import LZ4  # zarr >= 3.1.3
    except ImportError:  # older zarr: the wrapper lived in numcodecs
        from numcodecs.zarr3 import LZ4
    return LZ4(acceleration=1)


class ChunkCodec:
    """Compresses/decompresses one inner chunk exactly as the zarr codec named in the metadata does."""

    def __init__(self, name: str, level: int = 3):
        import numcodecs

        self.name = name
        self.level = level
        if name == "lz4":
            self._codec = numcodecs.LZ4(acceleration=1)
        elif name == "zstd":
            self._codec = numcodecs.Zstd(level=level, checksum=False)
        else:
            raise JepaFastError(f"codec {name!r}: use lz4 or zstd")

    def zarr_codec(self):
        if self.name == "lz4":
            return _zarr_lz4_codec()
        from zarr.codecs import ZstdCodec

        return ZstdCodec(level=self.level, checksum=False)

    def encode(self, arr: np.ndarray) -> bytes:
        return self._codec.encode(arr)

    def decode_into(self, chunk, out: np.ndarray) -> None:
        """Decompress stored chunk bytes into ``out`` (contiguous uint8)."""
        self._codec.decode(chunk, out=out)

    @staticmethod
    def from_metadata(codecs: list) -> ChunkCodec:
        for c in codecs:
            name = c.get("name")
            if name == "numcodecs.lz4":
                return ChunkCodec("lz4")
            if name == "zstd":
                return ChunkCodec("zstd", c.get("configuration", {}).get("level", 3))
        raise JepaFastError(f"states codecs {codecs}: not a codec this reader knows (lz4 or zstd)")


def raw_lz4_block(chunk: memoryview | bytes) -> memoryview:
    """The raw LZ4 block of a stored lz4 chunk: numcodecs' framing is a 4-byte size, then the block."""
    return memoryview(chunk)[4:]


def encode_shard(q: np.ndarray, k: int, codec: ChunkCodec) -> bytes | None:
    """Bytes of one shard file holding trajectories q (m <= k, T, C, H, W) uint8, as zarr writes them.

    Inner chunks equal to the fill value (all zero) are not stored (zarr's write_empty_chunks=False);
    returns None when every chunk is empty (zarr then writes no file).
    """
    import google_crc32c

    index = np.full((k, 2), MAX_U64, dtype="<u8")
    parts = []
    offset = 0
    for i in range(len(q)):
        traj = q[i]
        if not traj.any():
            continue
        b = codec.encode(traj)
        index[i] = (offset, len(b))
        parts.append(b)
        offset += len(b)
    if not parts:
        return None
    index_bytes = index.tobytes()
    parts.append(index_bytes)
    parts.append(google_crc32c.value(index_bytes).to_bytes(4, "little"))
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# Quantisation


def scale_for(max_value: np.ndarray, source_dtype: np.dtype, headroom: float = 1.0) -> np.ndarray:
    """Per-channel scale (value = uint8 x scale) for a channel maximum; 1 for uint8 input."""
    if np.dtype(source_dtype) == np.uint8:
        return np.ones_like(max_value, dtype=np.float64)
    m = np.asarray(max_value, dtype=np.float64) * headroom / 255.0
    return np.where(m > 0, m, 1.0)


_tls = threading.local()


def quantize(x: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x (..., C, H, W) -> uint8 floor(x / scale + 0.5). The caller guarantees x / scale < 255.5.

    The product is formed in float64 (float32 would round x / scale by up to 2^-16 and break the
    |q * scale - x| <= scale / 2 bound at ties), a ~1 MiB slab of frames at a time so the temporary
    stays in cache; the slab buffer is per thread.
    """
    if out is None:
        out = np.empty(x.shape, dtype=np.uint8)
    if x.dtype == np.uint8:
        np.copyto(out, x)
        return out
    C, H, W = x.shape[-3:]
    frames = x.reshape((-1, C, H, W))  # (M, C, H, W)
    dest = out.reshape(frames.shape)
    inv = (1.0 / np.asarray(scale, dtype=np.float64)).reshape(C, 1, 1)
    slab = max(1, (1 << 17) // (C * H * W))
    buf = getattr(_tls, "buf", None)
    if buf is None or buf.shape != (slab, C, H, W):
        buf = _tls.buf = np.empty((slab, C, H, W), dtype=np.float64)
    for a in range(0, len(frames), slab):
        b = buf[: min(slab, len(frames) - a)]
        np.multiply(frames[a:a + slab], inv, out=b)
        b += 0.5
        np.copyto(dest[a:a + slab], b, casting="unsafe")
    return out


def channel_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(per-channel min, per-channel max, all finite) of x (N, T, C, H, W)."""
    N, T, C, H, W = x.shape
    v = x.reshape(N * T, C, H * W)
    mx = v.max(axis=(0, 2)).astype(np.float64)
    mn = v.min(axis=(0, 2)).astype(np.float64)
    finite = bool(np.isfinite(mx).all() and np.isfinite(mn).all())
    return mn, mx, finite


# ---------------------------------------------------------------------------------------------
# Writer


class StoreWriter:
    """Writes one split store: metadata via zarr, shards by offset, small arrays at the end."""

    def __init__(self, path: Path, n: int, T: int, C: int, H: int, W: int, k: int, codec: ChunkCodec,
                 scale: np.ndarray, has_locations: bool, attrs: dict, create: bool = True):
        import zarr

        self.path = Path(path)
        self.n, self.T, self.C, self.H, self.W, self.k = n, T, C, H, W, k
        self.codec = codec
        self.scale = np.asarray(scale, dtype=np.float64)
        self.has_locations = has_locations
        if create:
            group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            group.create_array("states", shape=(n, T, C, H, W), dtype="uint8", chunks=(1, T, C, H, W),
                               shards=(k, T, C, H, W), compressors=[codec.zarr_codec()], fill_value=0)
            rows = min(n, 1 << 16)
            group.create_array("actions", shape=(n, T - 1, 2), dtype="float32", chunks=(rows, T - 1, 2),
                               fill_value=0.0)
            if has_locations:
                group.create_array("locations", shape=(n, T, 2), dtype="float32", chunks=(rows, T, 2),
                                   fill_value=0.0)
            group.attrs.update({**attrs, "format": FORMAT_NAME, "schema_version": SCHEMA_VERSION,
                                "complete": False, "n": n, "seq_len": T, "channels": C, "image_size": H,
                                "scale": self.scale.tolist(), "codec": codec.name,
                                "trajectories_per_shard": k})

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.k)

    def shard_path(self, s: int) -> Path:
        return shard_path(self.path, s)

    def write_shard(self, s: int, q: np.ndarray) -> int:
        """Encode and write shard s from its trajectories q (uint8). Returns bytes written."""
        data = encode_shard(q, self.k, self.codec)
        p = self.shard_path(s)
        if data is None:
            p.unlink(missing_ok=True)
            return 0
        # Written in place: the store as a whole is atomic (it lives in <dst>.partial until complete),
        # and a resume rewrites every shard past the last recorded one, torn or not.
        os.makedirs(p.parent, exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        return len(data)

    def write_block(self, start: int, x: np.ndarray) -> bool:
        """Quantise and write trajectories [start, start + len(x)); start is a multiple of k.

        Returns whether the wall channel (1) is the same in every frame of every trajectory written.
        """
        q = quantize(x, self.scale)
        for a in range(0, len(q), self.k):
            self.write_shard((start + a) // self.k, q[a:a + self.k])
        return walls_static(q)

    def finalize(self, actions: np.ndarray, locations: np.ndarray | None, extra_attrs: dict) -> None:
        """Write the small arrays and the statistics, and mark the store complete."""
        import zarr

        group = zarr.open_group(str(self.path), mode="r+")
        group["actions"][...] = np.asarray(actions, dtype=np.float32)
        stats = {"action_mean": _mean(actions), "action_std": _std(actions)}
        if self.has_locations:
            group["locations"][...] = np.asarray(locations, dtype=np.float32)
            stats.update(location_mean=_mean(locations), location_std=_std(locations))
        group.attrs.update({**extra_attrs, "stats": stats, "complete": True})


def walls_static(q: np.ndarray) -> bool:
    """Is channel 1 (walls) of q (N, T, C, H, W) identical across T in every trajectory?"""
    return bool(q.shape[2] > 1 and (q[:, 1:, 1] == q[:, :1, 1]).all())


def _mean(a) -> list[float]:
    return np.asarray(a, dtype=np.float64).reshape(-1, 2).mean(0).round(6).tolist()


def _std(a) -> list[float]:
    return np.asarray(a, dtype=np.float64).reshape(-1, 2).std(0).round(6).tolist()


def shard_path(store: Path, s: int) -> Path:
    return Path(store) / "states" / "c" / str(s) / "0" / "0" / "0" / "0"


class GenerationSink:
    """Adapter used by ``jepa-fast generate --format zarr``: blocks in order -> shards, same writer."""

    def __init__(self, path: Path, n: int, T: int, image_size: int, dtype: str, scale: np.ndarray,
                 attrs: dict, pack: PackConfig):
        traj_bytes = T * 2 * image_size * image_size
        self.k = pack.trajectories_per_shard(traj_bytes)
        self.writer = StoreWriter(path, n, T, 2, image_size, image_size, self.k,
                                  ChunkCodec(pack.codec, pack.zstd_level), scale, True,
                                  {**attrs, "source_dtype": dtype})
        self.pending: list[np.ndarray] = []
        self.next_start = 0
        self.actions = np.empty((n, T - 1, 2), np.float32)
        self.locations = np.empty((n, T, 2), np.float32)
        self.value_max = np.zeros(2)
        self.walls_static = True

    def write(self, block) -> None:
        m = len(block.actions)
        self.actions[block.start:block.start + m] = block.actions
        self.locations[block.start:block.start + m] = block.locations
        _, mx, _ = channel_range(block.states)
        self.value_max = np.maximum(self.value_max, mx)
        self.pending.append(quantize(block.states, self.writer.scale))
        q = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        whole = (len(q) // self.k) * self.k
        if block.start + m == self.writer.n:
            whole = len(q)
        if whole:
            self.walls_static &= self.writer.write_block(self.next_start, q[:whole])
            self.next_start += whole
        self.pending = [q[whole:]] if whole < len(q) else []

    def close(self) -> None:
        self.writer.finalize(self.actions, self.locations, {"value_max": self.value_max.tolist(),
                                                            "walls_static": self.walls_static})


# ---------------------------------------------------------------------------------------------
# Source validation (raw split folders in the original format)


@dataclass
class Source:
    """A validated raw split folder, memory-mapped."""

    path: Path
    states: np.ndarray  # (N, T, C, H, W) memmap
    actions: np.ndarray  # (N, T-1, 2) memmap
    locations: np.ndarray | None  # (N, T, 2) memmap
    states_offset: int  # byte offset of the data in states.npy

    def fingerprint(self) -> dict:
        out = {}
        for name in ("states", "actions", "locations"):
            f = self.path / f"{name}.npy"
            if f.exists():
                st = f.stat()
                out[name] = [st.st_size, st.st_mtime_ns]
        return out


def _npy_header(f: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, with one-line errors for broken files."""
    try:
        with open(f, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (ValueError, OSError, SyntaxError, TypeError) as e:
        raise JepaFastError(f"{f}: not a readable .npy file ({e}); re-copy or regenerate it") from None
    if fortran:
        raise JepaFastError(f"{f}: Fortran-ordered array; save it C-ordered (np.ascontiguousarray)")
    need = offset + int(np.prod(shape)) * dtype.itemsize
    have = f.stat().st_size
    if have < need:
        raise JepaFastError(f"{f}: truncated: the header promises {need:,} bytes but the file holds {have:,}; "
                            "re-copy or regenerate it")
    return tuple(shape), dtype, offset


def open_source(src: Path) -> Source:
    """Validate a raw split folder (states.npy, actions.npy, optional locations.npy) without reading it."""
    src = Path(src)
    if not src.is_dir():
        raise JepaFastError(f"{src}: no such split folder")
    for name in ("states", "actions"):
        if not (src / f"{name}.npy").exists():
            raise JepaFastError(f"{src / (name + '.npy')}: missing; a split folder needs states.npy and actions.npy")
    s_shape, s_dtype, s_off = _npy_header(src / "states.npy")
    a_shape, a_dtype, _ = _npy_header(src / "actions.npy")
    if len(s_shape) != 5:
        raise JepaFastError(f"{src / 'states.npy'}: shape {s_shape} has rank {len(s_shape)}; expected (N, T, C, H, W)")
    N, T, C, H, W = s_shape
    if C != 2:
        raise JepaFastError(f"{src / 'states.npy'}: {C} channels; expected 2 (agent, walls) in axis 2 of "
                            "(N, T, C, H, W)")
    if H != W:
        raise JepaFastError(f"{src / 'states.npy'}: images are {H}x{W}; expected square frames")
    if N < 1 or T < 2 or H < 8:
        raise JepaFastError(f"{src / 'states.npy'}: shape {s_shape} is too small (need N >= 1, T >= 2, H >= 8)")
    if s_dtype not in (np.dtype(np.uint8), np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
        raise JepaFastError(f"{src / 'states.npy'}: dtype {s_dtype}; expected float32/float16/float64 or uint8")
    if len(a_shape) != 3 or a_shape[2] != 2:
        raise JepaFastError(f"{src / 'actions.npy'}: shape {a_shape}; expected (N, T-1, 2)")
    if a_shape[0] != N:
        raise JepaFastError(f"{src / 'actions.npy'}: {a_shape[0]} trajectories but states.npy has {N}")
    if a_shape[1] != T - 1:
        raise JepaFastError(f"{src / 'actions.npy'}: {a_shape[1]} actions per trajectory; states.npy has T={T}, "
                            f"so expected {T - 1}")
    locations = None
    if (src / "locations.npy").exists():
        l_shape, _, _ = _npy_header(src / "locations.npy")
        if tuple(l_shape) != (N, T, 2):
            raise JepaFastError(f"{src / 'locations.npy'}: shape {l_shape}; expected {(N, T, 2)}")
        locations = np.load(src / "locations.npy", mmap_mode="r")
    actions = np.load(src / "actions.npy", mmap_mode="r")
    states = np.load(src / "states.npy", mmap_mode="r")
    for name, arr in (("actions", actions), ("locations", locations)):
        if arr is not None and not np.isfinite(np.asarray(arr)).all():
            raise JepaFastError(f"{src / (name + '.npy')}: contains NaN or Inf; fix or drop those trajectories")
    return Source(src, states, actions, locations, s_off)


# ---------------------------------------------------------------------------------------------
# Packing


class _ScaleOverflow(Exception):
    def __init__(self, value_max):
        self.value_max = value_max


def _check_block(src: Path, x: np.ndarray, start: int, scale: np.ndarray | None) -> np.ndarray:
    """Validate a block of source frames; returns its per-channel max."""
    mn, mx, finite = channel_range(x)
    f = src / "states.npy"
    if not finite:
        bad = start + int(np.nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0][0])
        raise JepaFastError(f"{f}: trajectory {bad} contains NaN or Inf; fix or drop it before packing")
    if (mn < 0).any():
        bad = start + int(np.nonzero((x < 0).reshape(len(x), -1).any(axis=1))[0][0])
        raise JepaFastError(f"{f}: trajectory {bad} has negative values ({mn.min():.4g}); frames must be >= 0")
    if scale is not None and x.dtype != np.uint8 and (mx / scale >= 255.5).any():
        raise _ScaleOverflow(mx)
    return mx


def _read_block(fh, source: Source, a: int, b: int, buf: np.ndarray | None = None) -> np.ndarray:
    """Trajectories [a, b) of the source's states, read with one ``readinto`` (into ``buf`` if given)."""
    shape = source.states.shape
    x = np.empty((b - a,) + shape[1:], dtype=source.states.dtype) if buf is None else buf[: b - a]
    row = int(np.prod(shape[1:])) * source.states.dtype.itemsize
    fh.seek(source.states_offset + a * row)
    got = fh.readinto(memoryview(x).cast("B"))
    if got != x.nbytes:
        raise JepaFastError(f"{source.path / 'states.npy'}: short read at trajectory {a}; "
                            "the file changed or is damaged")
    return x


def _full_max(source: Source, block: int, progress: bool) -> np.ndarray:
    N = len(source.states)
    mx = np.zeros(source.states.shape[2])
    bar = frame_bar(N * source.states.shape[1], progress, "scan max")
    with open(source.path / "states.npy", "rb") as fh:
        for a in range(0, N, block):
            b = min(N, a + block)
            mx = np.maximum(mx, _check_block(source.path, _read_block(fh, source, a, b), a, None))
            bar.update((b - a) * source.states.shape[1])
    bar.close()
    return mx


def _sample_max(source: Source) -> np.ndarray:
    N = len(source.states)
    idx = np.unique(np.linspace(0, N - 1, min(N, SAMPLE_TRAJECTORIES)).round().astype(int))
    mx = np.zeros(source.states.shape[2])
    for i in idx:
        mx = np.maximum(mx, _check_block(source.path, np.asarray(source.states[i:i + 1]), int(i), None))
    return mx


def frame_bar(total: int, enabled: bool, desc: str):
    """The frames/s progress bar of generate, pack and verify."""
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", unit_scale=True, disable=not enabled, desc=desc, dynamic_ncols=True)


def pack_split(src: Path, dst: Path, cfg: PackConfig | None = None, overwrite: bool = False, resume: bool = False,
               progress: bool = True) -> dict:
    """Pack one raw split folder into ``dst`` (a ``.zarr`` store). Atomic and resumable.

    Work happens in ``<dst>.partial``; the store appears at ``dst`` only when complete. A killed pack
    leaves the partial store and ``--resume`` continues after the last complete shard. Bad input
    raises ``JepaFastError`` and removes the partial store.
    """
    cfg = cfg or PackConfig()
    src, dst = Path(src), Path(dst)
    source = open_source(src)
    atomic.check_destination(dst, overwrite, "store")
    partial = dst.with_name(dst.name + ".partial")
    N, T, C, H, W = source.states.shape
    codec = ChunkCodec(cfg.codec, cfg.zstd_level)
    k = cfg.trajectories_per_shard(T * C * H * W)
    options = {"codec": cfg.codec, "zstd_level": cfg.zstd_level, "k": k, "scale_mode": cfg.scale}
    t0 = time.perf_counter()
    state = _load_progress(partial, source, options) if resume else None
    if resume and state is None and partial.exists():
        print(f"{partial}: not resumable (source or options changed); starting over")
    try:
        if state is None:
            shutil.rmtree(partial, ignore_errors=True)
            value_max = _sample_max(source) if cfg.scale == "sample" else _full_max(source, _block_len(source, k),
                                                                                     progress)
            headroom = SCALE_HEADROOM if cfg.scale == "sample" else 1.0
            state = {"done": 0, "scale": scale_for(value_max, source.states.dtype, headroom).tolist(),
                     "value_max": [0.0] * C, "walls_static": True, "options": options,
                     "source": source.fingerprint()}
            create = True
        else:
            create = False
            for stray in partial.rglob(".*"):  # temp files of writes the kill interrupted
                if stray.is_file():
                    stray.unlink()
            print(f"resuming {partial} after trajectory {state['done']:,} of {N:,}")
        while True:
            writer = StoreWriter(partial, N, T, C, H, W, k, codec, np.array(state["scale"]),
                                 source.locations is not None, _source_attrs(source), create=create)
            _save_progress(partial, state)
            try:
                _pack_states(source, writer, state, cfg.workers, progress)
                break
            except _ScaleOverflow:
                print("a value exceeds the sampled scale; rescanning for the exact max and repacking")
                shutil.rmtree(partial, ignore_errors=True)
                value_max = _full_max(source, _block_len(source, k), progress)
                state = {**state, "done": 0, "scale": scale_for(value_max, source.states.dtype).tolist(),
                         "value_max": [0.0] * C, "walls_static": True}
                create = True
        writer.finalize(np.asarray(source.actions), None if source.locations is None else np.asarray(source.locations),
                        {"value_max": state["value_max"], "source_dtype": str(source.states.dtype),
                         "walls_static": state["walls_static"]})
        (partial / PROGRESS_FILE).unlink(missing_ok=True)
    except JepaFastError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    atomic.replace_path(partial, dst)
    seconds = time.perf_counter() - t0
    return {"store": str(dst), "n": N, "frames": N * T, "seconds": seconds, "k": k,
            "bytes_in": int(source.states.nbytes), "bytes_out": store_nbytes(dst)}


def _block_len(source: Source, k: int) -> int:
    """Trajectories per read block: a multiple of k, ~16 MiB of source bytes."""
    row = int(np.prod(source.states.shape[1:])) * source.states.dtype.itemsize
    return k * max(1, round((16 << 20) / (k * row)))


def _source_attrs(source: Source) -> dict:
    meta = {}
    for p in (source.path / "dataset.json", source.path.parent / "dataset.json",
              source.path.parent.parent / "dataset.json"):
        if p.exists():
            try:
                meta = json.loads(p.read_text())
            except ValueError:
                meta = {}
            break
    return {"source": {"path": str(source.path.resolve()), "generator": meta.get("format", "unknown"),
                       "seed": meta.get("seed")}}


def _pack_states(source: Source, writer: StoreWriter, state: dict, workers: int, progress: bool) -> None:
    N, T = source.states.shape[:2]
    block = _block_len(source, writer.k)
    bar = frame_bar(N * T, progress, "pack")
    bar.update(state["done"] * T)
    scale = np.asarray(state["scale"])
    value_max = np.asarray(state["value_max"], dtype=np.float64)
    lock = threading.Lock()

    def work(a: int, x: np.ndarray) -> None:
        mx = _check_block(source.path, x, a, scale)
        static = writer.write_block(a, x)
        with lock:
            np.maximum(value_max, mx, out=value_max)
            if not static:
                state["walls_static"] = False

    pending: deque[tuple[int, Future, np.ndarray]] = deque()
    # a fixed pool of read buffers (no page faults on fresh memory per block); bounded memory
    free = [np.empty((block,) + source.states.shape[1:], source.states.dtype) for _ in range(2 * workers + 1)]
    with open(source.path / "states.npy", "rb", buffering=0) as fh, ThreadPoolExecutor(workers) as pool:
        try:
            for a in range(state["done"], N, block):
                b = min(N, a + block)
                buf = free.pop()
                x = _read_block(fh, source, a, b, buf)
                pending.append((b, pool.submit(work, a, x), buf))
                while len(pending) > 2 * workers:
                    done, fut, used = pending.popleft()
                    fut.result()
                    free.append(used)
                    bar.update((done - state["done"]) * T)
                    state["done"] = done
                    state["value_max"] = value_max.tolist()
                    _save_progress(writer.path, state)  # tiny file, no fsync: cheap at every block
            while pending:
                done, fut, _ = pending.popleft()
                fut.result()
                bar.update((done - state["done"]) * T)
                state["done"] = done
        finally:
            for _, fut, _ in pending:
                fut.cancel()
            bar.close()
    state["value_max"] = value_max.tolist()
    _save_progress(writer.path, state)


def _save_progress(partial: Path, state: dict) -> None:
    """Record progress (tiny file; write + rename, no fsync: it must survive a killed process, not a crash)."""
    tmp = partial / f".{PROGRESS_FILE}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, partial / PROGRESS_FILE)


def _load_progress(partial: Path, source: Source, options: dict) -> dict | None:
    f = partial / PROGRESS_FILE
    if not f.exists():
        return None
    try:
        state = json.loads(f.read_text())
    except ValueError:
        return None
    if state.get("options") != options or state.get("source") != source.fingerprint():
        return None
    return state


def store_nbytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def find_splits(root: Path) -> list[str]:
    """Split folders (relative names) under a dataset root: every folder holding a states.npy."""
    root = Path(root)
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("states.npy"))


def pack_path(src: Path, dst: Path, cfg: PackConfig | None = None, overwrite: bool = False, resume: bool = False,
              progress: bool = True) -> list[dict]:
    """Pack one split folder, or a dataset root with all its splits (dst/<split>.zarr each)."""
    src, dst = Path(src), Path(dst)
    if (src / "states.npy").exists() or (src / "actions.npy").exists():
        return [pack_split(src, dst, cfg, overwrite, resume, progress)]
    if not src.is_dir():
        raise JepaFastError(f"{src}: no such folder")
    splits = find_splits(src)
    if not splits:
        raise JepaFastError(f"{src}: no split folders (folders with states.npy) found; "
                            "point at a split or a dataset root")
    if dst.suffix == ".zarr":
        raise JepaFastError(f"{dst}: a dataset root packs into a folder of <split>.zarr stores; drop the .zarr suffix")
    for s in splits:
        open_source(src / s)  # validate every split before writing any
    out = []
    for s in splits:
        print(f"packing {s}")
        out.append(pack_split(src / s, dst / f"{s}.zarr", cfg, overwrite, resume, progress))
    if (src / "dataset.json").exists():
        atomic.atomic_write_bytes(dst / "dataset.json", (src / "dataset.json").read_bytes())
    return out


# ---------------------------------------------------------------------------------------------
# Reader


class StoreReader:
    """Random access to a packed split by trajectory index, reading chunk bytes by offset.

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
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise JepaFastError(f"{self.path}: schema version {attrs.get('schema_version')}, this jepa-fast reads "
                                f"version {SCHEMA_VERSION}; re-pack it with this version's jepa-fast pack")
        if not attrs.get("complete"):
            raise JepaFastError(f"{self.path}: incomplete store (an interrupted pack?); re-run jepa-fast pack")
        names = set(group.array_keys())
        for need in ("states", "actions"):
            if need not in names:
                raise JepaFastError(f"{self.path}: array {need!r} is missing; re-pack the split")
        self.attrs = attrs
        states = group["states"]
        self.n, self.T, self.C, self.H, self.W = states.shape
        self.k = int(attrs["trajectories_per_shard"])
        self.scale = np.asarray(attrs["scale"], dtype=np.float64)
        meta = states.metadata.to_dict()
        inner = meta["codecs"][0]["configuration"]["codecs"]
        self.codec = ChunkCodec.from_metadata(list(inner))
        self.traj_bytes = self.T * self.C * self.H * self.W
        self._group = group
        self._parse_indices()
        self._blob: np.ndarray | None = None

    # index ------------------------------------------------------------------------------------
    def _parse_indices(self) -> None:
        import google_crc32c

        n_shards = -(-self.n // self.k)
        self.chunk_shard = np.repeat(np.arange(n_shards), self.k)[: self.n]
        self.chunk_offset = np.zeros(self.n, dtype=np.int64)  # within its shard file
        self.chunk_nbytes = np.zeros(self.n, dtype=np.int64)  # 0 = empty chunk (all zero)
        self.shard_size = np.zeros(n_shards, dtype=np.int64)
        tail = self.k * 16 + 4
        for s in range(n_shards):
            p = shard_path(self.path, s)
            if not p.exists():
                continue
            size = p.stat().st_size
            if size < tail:
                raise JepaFastError(f"{p}: shard {s} is truncated ({size} bytes); re-pack the split")
            with open(p, "rb") as f:
                f.seek(size - tail)
                raw = f.read(tail)
            if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise JepaFastError(f"{p}: shard {s} index fails its CRC32C check (corrupt file); re-pack the split")
            idx = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.k, 2)
            lo, hi = s * self.k, min(self.n, (s + 1) * self.k)
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

    @property
    def compressed_nbytes(self) -> int:
        return int(self.chunk_nbytes.sum())

    def load_to_ram(self) -> None:
        """Read every stored chunk into one contiguous buffer (compressed), ordered by trajectory."""
        if self._blob is not None:
            return
        starts = np.concatenate([[0], np.cumsum(self.chunk_nbytes)[:-1]]).astype(np.int64)
        blob = np.empty(int(self.chunk_nbytes.sum()), dtype=np.uint8)
        for s in np.nonzero(self.shard_size)[0]:
            lo, hi = s * self.k, min(self.n, (s + 1) * self.k)
            data = shard_path(self.path, s).read_bytes()
            for i in range(lo, hi):
                nb = self.chunk_nbytes[i]
                if nb:
                    o = self.chunk_offset[i]
                    blob[starts[i]:starts[i] + nb] = np.frombuffer(data, np.uint8, nb, o)
        self._blob = blob
        self.chunk_global = starts

    def chunk(self, i: int) -> memoryview | None:
        """Stored bytes of trajectory i's chunk (codec framing included), or None if the chunk is empty."""
        nb = int(self.chunk_nbytes[i])
        if nb == 0:
            return None
        if self._blob is not None:
            g = int(self.chunk_global[i])
            return memoryview(self._blob)[g:g + nb]
        fd = os.open(shard_path(self.path, int(self.chunk_shard[i])), os.O_RDONLY)
        try:
            return memoryview(os.pread(fd, nb, int(self.chunk_offset[i])))
        finally:
            os.close(fd)

    def raw_block(self, i: int) -> memoryview | None:
        """The raw LZ4 block of trajectory i (what DALI's inflate takes); lz4 stores only."""
        if self.codec.name != "lz4":
            raise JepaFastError(f"{self.path}: codec {self.codec.name} has no raw LZ4 blocks; re-pack with --codec lz4")
        c = self.chunk(i)
        return None if c is None else raw_lz4_block(c)

    def decode(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 frames (T, C, H, W) of trajectory i."""
        if out is None:
            out = np.empty((self.T, self.C, self.H, self.W), dtype=np.uint8)
        c = self.chunk(i)
        if c is None:
            out[...] = 0
            return out
        try:
            self.codec.decode_into(c, out)
        except Exception as e:  # numcodecs raises RuntimeError/ValueError on corrupt input
            raise JepaFastError(f"{self.path}: chunk of trajectory {i} (shard {int(self.chunk_shard[i])}) fails to "
                                f"decompress ({e}); the store is corrupt, re-pack the split") from None
        return out

    # small arrays -------------------------------------------------------------------------------
    def actions(self) -> np.ndarray:
        return np.asarray(self._group["actions"][...])

    def locations(self) -> np.ndarray | None:
        if "locations" not in set(self._group.array_keys()):
            return None
        return np.asarray(self._group["locations"][...])

    def verify(self, progress: bool = False) -> int:
        """Decode every chunk and check sizes; returns the number of chunks checked."""
        out = np.empty((self.T, self.C, self.H, self.W), dtype=np.uint8)
        bar = frame_bar(self.n * self.T, progress, "verify")
        for i in range(self.n):
            self.decode(i, out)
            bar.update(self.T)
        bar.close()
        for name, arr in (("actions", self.actions()), ("locations", self.locations())):
            if arr is not None and not np.isfinite(arr).all():
                raise JepaFastError(f"{self.path}: {name} contain NaN or Inf")
        return self.n

    def describe(self) -> dict:
        stored = store_nbytes(self.path)
        return {"store": str(self.path), "shape": [self.n, self.T, self.C, self.H, self.W],
                "trajectories_per_shard": self.k, "shards": int(-(-self.n // self.k)), "codec": self.codec.name,
                "scale": self.scale.tolist(), "value_max": self.attrs.get("value_max"),
                "source_dtype": self.attrs.get("source_dtype"), "stored_bytes": stored,
                "ratio_vs_uint8": round(self.n * self.traj_bytes / max(stored, 1), 2),
                "ratio_vs_float32": round(4 * self.n * self.traj_bytes / max(stored, 1), 2),
                "stats": self.attrs.get("stats"), "schema_version": self.attrs.get("schema_version")}
