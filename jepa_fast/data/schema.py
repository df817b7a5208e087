"""The packed store's schema, defined once: format name and version, shard paths, codec, quantisation.

A split is packed into one Zarr v3 group ``<split>.zarr`` that plain zarr-python can open (schema 4):

    states          uint8 (R, L, C, H, W); value = uint8 x attrs["scale"][c]. The split's F frames,
                    episode after episode, back to back, in R rows of L frames (the last row padded
                    with zeros). Sharded: one shard file (``states/c/<s>/0/0/0/0``) holds k rows (~1 MiB
                    raw); inside it every row is its own inner chunk, compressed with ``numcodecs.lz4``
                    (default) or ``zstd``
    actions         float32 (F, A): the action taken at frame f (leading to frame f + 1); the last frame
                    of each episode has none (zeros)
    targets         float32 (F, K): per-frame probe targets, named by attrs["target_names"] (optional)
    episode_starts  int64 (E + 1,): episode e is frames [episode_starts[e], episode_starts[e + 1])
    attrs           format, schema_version, complete, frames, episodes, rows, row_frames, channels,
                    height, width, action_size, channel_names, static_channels, target_names, scale,
                    value_max, source_dtype, codec, rows_per_shard, absent_shards, flips, clipped_outliers,
                    stats, source, pack, integrity

Rows, not episodes, are the unit of storage, so episodes of any length pack densely and a window of
``seq_len`` frames touches at most ceil(seq_len / L) + 1 rows. When every episode has the same length
(the two-rooms data), L is that length and a row is exactly one episode: its chunk is the bytes that
schemas 1-3 stored for one trajectory.

Why rows as inner chunks: with LZ4 the stored bytes of an inner chunk are ``<4-byte little-endian
size><raw LZ4 block><4-byte CRC32C>`` (numcodecs' framing, then zarr's standard ``crc32c`` codec), so
bytes [4, nbytes - 4) are exactly the raw block that DALI's GPU ``fn.decoders.inflate`` decompresses,
while zarr-python and our reader check every chunk's CRC. Each shard file ends with zarr's shard index:
k x (offset, nbytes) little-endian uint64 (2**64-1 = empty chunk) followed by the CRC32C of those bytes.
A shard whose chunks are all empty is not written (zarr's convention); ``attrs["absent_shards"]`` lists
those, so a missing shard file is an error, never zeros. The small arrays are zstd + crc32c zarr arrays.

Content is bound to position: ``attrs["integrity"]`` holds the CRC32C of every shard file (by shard
index; None for an absent shard), the CRC32C of each small array's bytes, and ``digest``, the SHA-256 of
the value-bearing attrs together with those CRCs. So swapped shard files, a shard deleted and listed in
``absent_shards``, or an edited ``scale`` are caught by content; the digest is also the store's
fingerprint (what a checkpoint records about its training data).

Older schemas are still read: 3 (fixed-length trajectories (N, T, C, H, W), actions (N, T-1, 2),
locations (N, T, 2), with integrity), 2 (chunk CRCs, no content binding) and 1 (no CRCs), the last two
with a one-line note saying what they cannot detect. The reader presents all of them as episodes.

Quantisation of float input: q = floor(x / scale + 0.5) with a per-channel scale >= max / 255, so
|q * scale - x| <= scale / 2 everywhere (no clipping: a value that would clip makes the packer repack
with the exact max, and outliers are refused or clipped on request). uint8 input is stored exactly
with scale 1.

The writer (``writer.py``), the reader (``reader.py``) and the packer (``pack.py``) build on this file.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from jepa_fast.errors import JepaFastError

FORMAT_NAME = "jepa-fast-zarr"
SCHEMA_VERSION = 4
"""4: episodes of any length, frames back to back in rows; any channel count, frame size, action size; named
per-frame targets. 3: fixed-length (N, T, ...) trajectories with content bound to position. 2: chunk CRCs,
no content binding. 1: no checksums. Versions 1-3 are still read (1 and 2 with a note)."""
READABLE_VERSIONS = (1, 2, 3, 4)
INTEGRITY_FIELDS = {
    3: ("n", "seq_len", "channels", "image_size", "scale", "codec", "trajectories_per_shard", "absent_shards",
        "walls_static"),
    4: ("frames", "episodes", "rows", "row_frames", "channels", "height", "width", "action_size", "scale", "codec",
        "rows_per_shard", "absent_shards", "static_channels", "target_names", "flips", "protocol"),
}
"""The attrs whose values change what the data means, per schema: covered by the integrity digest."""
SMALL_ARRAYS = {3: ("actions", "locations"), 4: ("actions", "targets", "episode_starts")}
"""The small arrays whose values the integrity record covers, per schema."""
MAX_U64 = 2**64 - 1
"""The shard index's marker of an empty (not stored, all-zero) chunk."""

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


class ChunkChecksumError(ValueError):
    """A stored chunk's bytes do not match their CRC32C: the store is corrupt."""


class ChunkCodec:
    """Compresses/decompresses one inner chunk exactly as the zarr codecs named in the metadata do.

    Schema 2 chunks end with zarr's standard ``crc32c`` codec: the 4-byte little-endian CRC32C of the
    compressed bytes. With LZ4 a chunk is therefore ``<4-byte size><raw LZ4 block><4-byte CRC32C>``, so
    the raw block GPU inflate reads stays addressable by offset: bytes [4, nbytes - 4) of the chunk.
    Schema 1 chunks have no CRC (``checksum=False``): the block is bytes [4, nbytes).
    """

    def __init__(self, name: str, level: int = 3, checksum: bool = True):
        import numcodecs

        self.name, self.level, self.checksum = name, level, checksum
        if name == "lz4":
            self._codec = numcodecs.LZ4(acceleration=1)
        elif name == "zstd":
            self._codec = numcodecs.Zstd(level=level, checksum=False)
        else:
            raise JepaFastError(f"codec {name!r}: use lz4 or zstd")

    def zarr_codecs(self) -> list:
        """The zarr codec chain after 'bytes' (compressor, then crc32c)."""
        if self.name == "lz4":
            comp = _zarr_lz4_codec()
        else:
            from zarr.codecs import ZstdCodec

            comp = ZstdCodec(level=self.level, checksum=False)
        if not self.checksum:
            return [comp]
        from zarr.codecs import Crc32cCodec

        return [comp, Crc32cCodec()]

    def encode(self, arr: np.ndarray) -> bytes:
        data = self._codec.encode(arr)
        if not self.checksum:
            return data
        import google_crc32c

        return data + google_crc32c.value(data).to_bytes(4, "little")

    def payload(self, chunk, check: bool = True) -> memoryview:
        """The compressed bytes of a stored chunk, its CRC32C checked first (schema 2) unless ``check`` is off."""
        chunk = memoryview(chunk)
        if not self.checksum:
            return chunk
        import google_crc32c

        body = chunk[:-4]
        if not check:
            return body
        if len(chunk) < 4 or google_crc32c.value(bytes(body)) != int.from_bytes(chunk[-4:], "little"):
            raise ChunkChecksumError("CRC32C mismatch")
        return body

    def decompress_into(self, payload, out: np.ndarray) -> None:
        """Decompress a chunk's payload (its CRC already checked or stripped) into ``out``."""
        self._codec.decode(payload, out=out)

    RAW_BLOCK_START = 4
    """A stored lz4 chunk's raw LZ4 block starts after numcodecs' 4-byte size header."""

    def raw_block_len(self, nbytes):
        """Length of the raw LZ4 block in a stored chunk of ``nbytes`` (int or array): minus the size header
        and, in schema 2, the trailing CRC32C."""
        return nbytes - self.RAW_BLOCK_START - (4 if self.checksum else 0)

    def raw_block(self, chunk) -> memoryview:
        """The raw LZ4 block of a stored lz4 chunk (what DALI's inflate takes), without checking the CRC."""
        chunk = memoryview(chunk)
        return chunk[self.RAW_BLOCK_START:self.RAW_BLOCK_START + self.raw_block_len(len(chunk))]

    @staticmethod
    def from_metadata(codecs: list) -> ChunkCodec:
        checksum = any(c.get("name") == "crc32c" for c in codecs)
        for c in codecs:
            name = c.get("name")
            if name == "numcodecs.lz4":
                return ChunkCodec("lz4", checksum=checksum)
            if name == "zstd":
                return ChunkCodec("zstd", c.get("configuration", {}).get("level", 3), checksum=checksum)
        raise JepaFastError(f"states codecs {codecs}: not a codec this reader knows (lz4 or zstd)")


# ---------------------------------------------------------------------------------------------
# Quantisation


def scale_for(max_value: np.ndarray, source_dtype: np.dtype, headroom: float = 1.0) -> np.ndarray:
    """Per-channel scale (value = uint8 x scale) for a channel maximum; 1 for uint8 input."""
    if np.dtype(source_dtype) == np.uint8:
        return np.ones_like(max_value, dtype=np.float64)
    m = np.asarray(max_value, dtype=np.float64) * headroom / 255.0
    return np.where(m > 0, m, 1.0)


_tls = threading.local()


def quantize(x: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None, clip: bool = False) -> np.ndarray:
    """x (..., C, H, W) -> uint8 floor(x / scale + 0.5). The caller guarantees x / scale < 255.5, unless ``clip``:
    then larger values become 255 (the packer's --clip-outliers, recorded in the store).

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
        if clip:
            np.minimum(b, 255.0, out=b)
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



def walls_static(q: np.ndarray) -> bool:
    """Is channel 1 (walls) of q (N, T, C, H, W) identical across T in every trajectory?"""
    return bool(q.shape[2] > 1 and (q[:, 1:, 1] == q[:, :1, 1]).all())



def crc32c(data) -> int:
    import google_crc32c

    return int(google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data))


def array_crc(a: np.ndarray) -> int:
    """CRC32C of a small array's bytes (float32 for actions/targets/locations, int64 for episode starts),
    computed block by block (the array may be memory-mapped)."""
    import google_crc32c

    dtype = np.int64 if np.asarray(a[:0]).dtype.kind in "iu" else np.float32
    crc = 0
    for i in range(0, len(a), 1 << 18):
        crc = google_crc32c.extend(crc, np.ascontiguousarray(a[i:i + (1 << 18)], dtype=dtype).tobytes())
    return int(crc)


def integrity_digest(attrs: dict, shards: list, arrays: dict, version: int = SCHEMA_VERSION) -> str:
    """SHA-256 over the value-bearing attrs and the per-shard and per-array CRCs (schemas 3 and 4)."""
    import hashlib
    import json

    payload = {**{k: attrs.get(k) for k in INTEGRITY_FIELDS[version]}, "shards": shards, "arrays": arrays}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def shard_path(store: Path, s: int) -> Path:
    return Path(store) / "states" / "c" / str(s) / "0" / "0" / "0" / "0"


