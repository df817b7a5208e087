"""The store writer: encodes shards (the same bytes zarr writes) and writes a split store.

Shards are encoded here rather than through zarr so that quantisation and compression run on several
threads; zarr-python writes the metadata and the small arrays. A test proves the shard bytes equal
zarr's. Used by the packer (``pack.py``) and by ``jepa-fast generate --format zarr`` (the simulator
depends on this writer, never the reverse).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from jepa_fast.data.schema import (
    FORMAT_NAME,
    MAX_U64,
    SCHEMA_VERSION,
    ChunkCodec,
    array_crc,
    crc32c,
    integrity_digest,
    quantize,
    shard_path,
    walls_static,
)
from jepa_fast.errors import JepaFastError


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
        self.clip = False  # values above the scale's range become 255 (set by the packer's --clip-outliers)
        self.absent: set[int] = set()  # shards with no file (every chunk empty); a resume restores it
        self.shard_crc: dict[int, int] = {}  # CRC32C of every shard file written (schema 3); a resume restores it
        self._absent_lock = threading.Lock()
        if create:
            group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            group.create_array("states", shape=(n, T, C, H, W), dtype="uint8", chunks=(1, T, C, H, W),
                               shards=(k, T, C, H, W), compressors=codec.zarr_codecs(), fill_value=0)
            rows = min(n, 1 << 16)
            small = _small_array_codecs()
            group.create_array("actions", shape=(n, T - 1, 2), dtype="float32", chunks=(rows, T - 1, 2),
                               compressors=small, fill_value=0.0)
            if has_locations:
                group.create_array("locations", shape=(n, T, 2), dtype="float32", chunks=(rows, T, 2),
                                   compressors=small, fill_value=0.0)
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
            with self._absent_lock:
                self.absent.add(s)
                self.shard_crc.pop(s, None)
            return 0
        with self._absent_lock:
            self.absent.discard(s)
            self.shard_crc[s] = crc32c(data)
        # Written in place: the store as a whole is atomic (it lives in <dst>.partial until complete),
        # and a resume rewrites every shard past the last recorded one, torn or not.
        os.makedirs(p.parent, exist_ok=True)
        try:
            with open(p, "wb") as f:
                f.write(data)
        except OSError as e:  # name the file (a failed write() alone does not)
            raise OSError(e.errno, e.strerror, str(p)) from None
        return len(data)

    def progress(self) -> dict:
        """What a resume needs to restore about the shards written so far (taken under the writers' lock)."""
        with self._absent_lock:
            return {"absent": sorted(self.absent), "shard_crc": {str(s): c for s, c in self.shard_crc.items()}}

    def check_written(self, upto: int) -> None:
        """Shards [0, upto) are on disk, or recorded as all-empty: a shard deleted from a partial store must
        not pass for an empty one."""
        for s in range(upto):
            if s not in self.absent and not self.shard_path(s).exists():
                raise JepaFastError(f"{self.shard_path(s)}: shard {s} of the store being written is missing (deleted "
                                    "during the pack?); the partial store is discarded, run the pack again")

    def write_block(self, start: int, x: np.ndarray) -> bool:
        """Quantise and write trajectories [start, start + len(x)); start is a multiple of k.

        Returns whether the wall channel (1) is the same in every frame of every trajectory written.
        """
        q = quantize(x, self.scale, clip=self.clip)
        for a in range(0, len(q), self.k):
            self.write_shard((start + a) // self.k, q[a:a + self.k])
        return walls_static(q)

    def finalize(self, actions: np.ndarray, locations: np.ndarray | None, extra_attrs: dict) -> None:
        """Write the small arrays and the statistics, and mark the store complete."""
        import zarr

        group = zarr.open_group(str(self.path), mode="r+")
        group["actions"][...] = np.asarray(actions, dtype=np.float32)
        stats = {"action_mean": _mean(actions), "action_std": _std(actions)}
        arrays = {"actions": array_crc(actions), "locations": None}
        if self.has_locations:
            group["locations"][...] = np.asarray(locations, dtype=np.float32)
            stats.update(location_mean=_mean(locations), location_std=_std(locations))
            arrays["locations"] = array_crc(locations)
        self.check_written(self.n_shards)
        attrs = {**dict(group.attrs), **extra_attrs, "stats": stats, "absent_shards": sorted(self.absent)}
        shards = [self.shard_crc.get(s) for s in range(self.n_shards)]
        integrity = {"shards": shards, "arrays": arrays, "digest": integrity_digest(attrs, shards, arrays)}
        group.attrs.update({**extra_attrs, "stats": stats, "absent_shards": sorted(self.absent),
                            "integrity": integrity, "complete": True})



def _mean(a) -> list[float]:
    return np.asarray(a, dtype=np.float64).reshape(-1, 2).mean(0).round(6).tolist()


def _std(a) -> list[float]:
    return np.asarray(a, dtype=np.float64).reshape(-1, 2).std(0).round(6).tolist()


def _small_array_codecs() -> list:
    """actions/locations: zstd, then zarr's crc32c (zarr checks it on every read)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=3), Crc32cCodec()]
