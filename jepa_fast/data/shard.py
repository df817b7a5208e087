"""One shard of a store: its bytes exactly as zarr writes them, and the worker that checks, quantises and writes it.

A shard file holds k rows; every row is an inner chunk compressed by the store's codec (``schema.ChunkCodec``)
and then zarr's crc32c; the file ends with zarr's shard index. ``write_shard`` runs on the builder's worker
threads (``writer.py``): it refuses NaN/Inf and negative frames, detects values beyond the quantisation
range, quantises, collects the statistics the store records, and writes the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jepa_fast.data.schema import MAX_U64, ChunkCodec, crc32c, quantize, shard_path

STATS_STRIDE = 32
"""Every this-th frame of a shard goes into the store's per-channel value histogram (mean and std)."""


def encode_shard(q: np.ndarray, k: int, codec: ChunkCodec) -> bytes | None:
    """Bytes of one shard file holding rows q (m <= k, L, C, H, W) uint8, as zarr writes them.

    Inner chunks equal to the fill value (all zero) are not stored (zarr's write_empty_chunks=False);
    returns None when every chunk is empty (zarr then writes no file).
    """
    import google_crc32c

    index = np.full((k, 2), MAX_U64, dtype="<u8")
    parts = []
    offset = 0
    for i in range(len(q)):
        row = q[i]
        if not row.any():
            continue
        b = codec.encode(row)
        index[i] = (offset, len(b))
        parts.append(b)
        offset += len(b)
    if not parts:
        return None
    index_bytes = index.tobytes()
    parts.append(index_bytes)
    parts.append(google_crc32c.value(index_bytes).to_bytes(4, "little"))
    return b"".join(parts)


class ScaleOverflow(Exception):
    """A value exceeds the quantisation range the pack chose (the packer then rescans for the exact one)."""


class BadValue(Exception):
    """NaN/Inf or a negative value at a flat frame index (the builder names the episode)."""

    def __init__(self, what: str, frame: int, channel: int):
        super().__init__(what)
        self.what, self.frame, self.channel = what, frame, channel


def write_shard(path: Path, s: int, x: np.ndarray, n: int, L: int, k: int, codec: ChunkCodec, scale: np.ndarray,
                 limit: np.ndarray | None, first_frame: int, new_episode: np.ndarray, candidates: np.ndarray
                 ) -> tuple[int | None, np.ndarray, np.ndarray, np.ndarray]:
    """Check, quantise, compress and write shard s from its frames x (>= n, C, H, W; rows of L, zero after n).
    ``new_episode`` (n,) marks the frames that start an episode; ``candidates`` (C,) the channels still static so
    far (only those are compared). Returns (CRC32C of the file or None when every row is empty, per-channel value
    histogram of the n real frames (C, 256), per-channel max of the source values, per-channel 'identical to the
    previous frame of its episode' over this shard (C,)). The histogram counts every STATS_STRIDE-th frame."""
    C = x.shape[1]
    real = x[:n]
    if x.dtype != np.uint8:
        flat = real.reshape(n, C, -1)
        mn, vmax = flat.min(axis=(0, 2)), flat.max(axis=(0, 2)).astype(np.float64)  # a NaN reaches both
        if not (np.isfinite(mn).all() and np.isfinite(vmax).all()):
            f = int(np.nonzero(~np.isfinite(flat).all(axis=(1, 2)))[0][0])
            raise BadValue("NaN or Inf", first_frame + f, int(np.nonzero(~np.isfinite(flat[f]).all(-1))[0][0]))
        if (mn < 0).any():
            f = int(np.nonzero((flat < 0).any(axis=(1, 2)))[0][0])
            raise BadValue(f"a negative value ({float(mn.min()):.4g})", first_frame + f, int(np.argmin(mn)))
        inliers = vmax if limit is None else np.array([flat[:, c][flat[:, c] <= limit[c]].max(initial=0)
                                                        for c in range(C)])
        if (inliers / scale >= 255.5).any():
            raise ScaleOverflow()
    else:
        vmax = real.reshape(n, C, -1).max(axis=(0, 2)).astype(np.float64)
    rows = -(-n // L)  # the rows holding data; any after them stay absent (zero)
    q = quantize(x[:rows * L], scale, clip=limit is not None).reshape(rows, L, *x.shape[1:])
    qr = q.reshape(-1, C, x.shape[2] * x.shape[3])[:n]
    # static channels, as stored: every frame equals the previous one of its episode
    static = candidates.copy()
    for c in np.nonzero(candidates)[0] if n > 1 else ():
        same = ~((qr[1:, c] != qr[:-1, c]).any(axis=1))  # (n-1,)
        static[c] = bool((same | new_episode[1:]).all())
    # the value statistics of every STATS_STRIDE-th frame: input normalisation needs no more, at a fraction of the cost
    hist = np.stack([np.bincount(qr[::STATS_STRIDE, c].ravel(), minlength=256) for c in range(C)])
    data = encode_shard(q, k, codec)
    p = shard_path(path, s)
    if data is None:
        p.unlink(missing_ok=True)
        return None, hist, vmax, static
    os.makedirs(p.parent, exist_ok=True)
    try:
        with open(p, "wb") as f:
            f.write(data)
    except OSError as e:  # name the file (a failed write() alone does not)
        raise OSError(e.errno, e.strerror, str(p)) from None
    return crc32c(data), hist, vmax, static
