"""Reading a source for what packing must know before it writes: the frames' value range (sampled, or
exact in one pass), outliers that would wreck a channel's quantisation, NaN/Inf and negative values; and the
blocks of whole episodes every pass reads (``BLOCK_BYTES`` of frames each, so memory stays bounded).
"""

from __future__ import annotations

import numpy as np

from jepa_fast.data.source import EpisodeSource
from jepa_fast.errors import JepaFastError
from jepa_fast.progress import frame_bar

SAMPLE_EPISODES = 64
"""Episodes read (evenly strided) to estimate the per-channel max with pack.scale='sample'."""
SAMPLE_FRAMES = 4096
"""At most this many frames of the sampled episodes are looked at (evenly strided within them)."""
OUTLIER_RATIO = 64.0
"""A float value above this x the 99.9th percentile of its channel's sampled positive values is an outlier:
quantising with its range would lose the channel's other values (the packer refuses, or clips on request)."""
BLOCK_BYTES = 16 << 20
"""Source frames read per block."""



def episode_blocks(source: EpisodeSource, start: int = 0):
    """[e0, e1) blocks of whole episodes of about BLOCK_BYTES of frames each."""
    C, H, W = source.frame_shape
    per = max(1, C * H * W * source.dtype.itemsize)
    e = start
    while e < source.episodes:
        stops = np.cumsum(source.lengths[e:])
        e1 = e + max(1, int(np.searchsorted(stops, BLOCK_BYTES // per, side="right")))
        yield e, min(e1, source.episodes)
        e = e1


def bad_value(source: EpisodeSource, e0: int, x: np.ndarray, lengths: np.ndarray) -> None:
    """Refuse NaN/Inf or negative frames in block [e0, ...), naming the episode, frame and channel."""
    if x.dtype == np.uint8:
        return
    flat = x.reshape(len(x), x.shape[1], -1)
    finite = np.isfinite(flat).all(axis=2)
    neg = (flat < 0).any(axis=2)
    for bad, what in ((~finite, "NaN or Inf"), (neg, "a negative value")):
        if bad.any():
            f, c = (int(v) for v in np.argwhere(bad)[0])
            ep = int(np.searchsorted(np.cumsum(lengths), f, side="right"))
            first = int(np.sum(lengths[:ep]))
            raise JepaFastError(f"{source.where}: episode {e0 + ep}, frame {f - first}, channel {c} contains {what}; "
                                "fix or drop that episode before packing (frames must be finite and >= 0)")


def sample_stats(source: EpisodeSource) -> tuple[np.ndarray, np.ndarray]:
    """(per-channel max, outlier limit) of an evenly strided sample of episodes. The limit is OUTLIER_RATIO x
    the 99.9th percentile of the sampled positive values (infinite for uint8 input or a channel the sample
    shows empty: nothing to judge by)."""
    C = source.frame_shape[0]
    idx = np.unique(np.linspace(0, source.episodes - 1, min(source.episodes, SAMPLE_EPISODES)).round().astype(int))
    parts = []
    for e in idx:
        x, _, _ = source.read(int(e), int(e) + 1)
        bad_value(source, int(e), x, source.lengths[e:e + 1])
        parts.append(x[:: max(1, len(x) * len(idx) // SAMPLE_FRAMES)])
    sample = np.concatenate(parts)  # (S, C, H, W)
    mx = sample.reshape(len(sample), C, -1).max(axis=(0, 2)).astype(np.float64)
    limit = np.full(C, np.inf)
    if source.dtype != np.uint8:
        for c in range(C):
            pos = sample[:, c][sample[:, c] > 0]
            if pos.size:
                limit[c] = OUTLIER_RATIO * float(np.percentile(pos, 99.9))
    return mx, limit


def full_scan(source: EpisodeSource, progress: bool, limit: np.ndarray, clip: bool) -> tuple[np.ndarray, int]:
    """One read pass: (the per-channel max the scale must cover, outliers found). Outliers (values above
    ``limit``) are refused with their count and the first one, unless ``clip``: then the max covers only the
    other values and the outliers are clipped when quantised."""
    C = source.frame_shape[0]
    mx, inliers, count, first = np.zeros(C), np.zeros(C), np.zeros(C, dtype=np.int64), {}
    bar = frame_bar(source.frames, progress, "scan max")
    for e0, e1 in episode_blocks(source):
        x, _, _ = source.read(e0, e1)
        lengths = source.lengths[e0:e1]
        bad_value(source, e0, x, lengths)
        mx = np.maximum(mx, x.reshape(len(x), C, -1).max(axis=(0, 2)))
        for c in np.nonzero(mx > limit)[0]:
            out = x[:, c] > limit[c]  # (f, H, W)
            n = int(out.sum())
            if n:
                count[c] += n
                f, y, x_ = (int(v) for v in np.argwhere(out)[0])
                ep = int(np.searchsorted(np.cumsum(lengths), f, side="right"))
                first.setdefault(int(c), (e0 + ep, f - int(lengths[:ep].sum()), y, x_, float(x[:, c][out].max())))
            inliers[c] = max(inliers[c], float(x[:, c][~out].max(initial=0)))
        inliers = np.where(mx > limit, inliers, mx)
        bar.update(int(lengths.sum()))
    bar.close()
    if count.sum() and not clip:
        c = int(np.nonzero(count)[0][0])
        ep, t, y, x_, big = first[c]
        raise JepaFastError(f"{source.where}: {int(count[c]):,} value(s) of channel {c} are above {limit[c]:.4g} "
                            f"({OUTLIER_RATIO:g}x the 99.9th percentile of a strided sample), e.g. {big:.4g} at "
                            f"episode {ep}, frame {t}, pixel (y={y}, x={x_}): quantising with that range would round "
                            "the channel's other values to 0; fix or drop them, or pass --clip-outliers to clip them "
                            "(recorded in the store)")
    return inliers, int(count.sum())
