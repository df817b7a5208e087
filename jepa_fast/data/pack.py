"""The packer: validate raw split folders (the original .npy format), then stream them into stores.

``pack_split`` packs one split folder into ``<dst>.zarr``; ``pack_path`` packs one split or every split
of a dataset root. Work happens in ``<dst>.partial`` with a small progress file, so a killed pack
resumes after its last complete block (``--resume``) and the store appears only when complete. Reads
are bounded (a pool of ~16 MiB blocks); quantisation, compression and writes run on worker threads.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jepa_fast import atomic, lock
from jepa_fast.config import PackConfig
from jepa_fast.data.reader import store_nbytes
from jepa_fast.data.schema import ChunkCodec, channel_range, scale_for
from jepa_fast.data.source import Source, find_splits, open_source, read_block
from jepa_fast.data.writer import StoreWriter
from jepa_fast.errors import JepaFastError
from jepa_fast.progress import frame_bar

SCALE_HEADROOM = 1.01
"""With pack.scale='sample', the scale is this x the sampled max (a value above it triggers a repack)."""
SAMPLE_TRAJECTORIES = 64
"""Trajectories read (evenly strided) to estimate the per-channel max with pack.scale='sample'."""
OUTLIER_RATIO = 64.0
"""A float value above this x the 99.9th percentile of its channel's sampled positive values is an outlier:
quantising with its range would lose the channel's other values (the packer refuses, or clips on request)."""
MAX_SHARD_MIB = 64
"""A shard holds at most this much raw data: the packer's read buffers are a few shards of the source dtype."""
PROGRESS_FILE = "pack_progress.json"

# ---------------------------------------------------------------------------------------------
# Packing


class _ScaleOverflow(Exception):
    def __init__(self, value_max):
        self.value_max = value_max


def _check_block(src: Path, x: np.ndarray, start: int, scale: np.ndarray | None,
                 limit: np.ndarray | None = None) -> np.ndarray:
    """Validate a block of source frames; returns its per-channel max. With ``limit`` (clipping outliers),
    values above it may exceed the scale: they are clipped."""
    mn, mx, finite = channel_range(x)
    f = src / "states.npy"
    if not finite:
        bad = start + int(np.nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0][0])
        raise JepaFastError(f"{f}: trajectory {bad} contains NaN or Inf; fix or drop it before packing")
    if (mn < 0).any():
        bad = start + int(np.nonzero((x < 0).reshape(len(x), -1).any(axis=1))[0][0])
        raise JepaFastError(f"{f}: trajectory {bad} has negative values ({mn.min():.4g}); frames must be >= 0")
    if scale is not None and x.dtype != np.uint8:
        over = mx / scale >= 255.5
        if limit is not None:  # clipping: only values below the outlier limit must fit the scale
            over &= np.array([(x[:, :, c][x[:, :, c] <= limit[c]].max(initial=0) / scale[c]) >= 255.5
                              for c in range(x.shape[2])])
        if over.any():
            raise _ScaleOverflow(mx)
    return mx


def _sample_stats(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """(per-channel max, outlier limit) of an evenly strided sample of trajectories. The limit is
    OUTLIER_RATIO x the 99.9th percentile of the sampled positive values (infinite for uint8 input or a
    channel the sample shows empty: nothing to judge by)."""
    N, C = len(source.states), source.states.shape[2]
    idx = np.unique(np.linspace(0, N - 1, min(N, SAMPLE_TRAJECTORIES)).round().astype(int))
    mx, limit = np.zeros(C), np.full(C, np.inf)
    sample = np.stack([np.asarray(source.states[i]) for i in idx])  # (S, T, C, H, W)
    for j, i in enumerate(idx):
        mx = np.maximum(mx, _check_block(source.path, sample[j:j + 1], int(i), None))
    if source.states.dtype != np.uint8:
        for c in range(C):
            pos = sample[:, :, c][sample[:, :, c] > 0]
            if pos.size:
                limit[c] = OUTLIER_RATIO * float(np.percentile(pos, 99.9))
    return mx, limit


def _full_scan(source: Source, block: int, progress: bool, limit: np.ndarray, clip: bool) -> tuple[np.ndarray, int]:
    """One read pass: (the per-channel max the scale must cover, outliers found). Outliers (values above
    ``limit``) are refused with their count and the first one, unless ``clip``: then the max covers only
    the other values and the outliers are clipped when quantised."""
    N, T, C = source.states.shape[:3]
    mx, inliers, count, first = np.zeros(C), np.zeros(C), np.zeros(C, dtype=np.int64), {}
    bar = frame_bar(N * T, progress, "scan max")
    with open(source.path / "states.npy", "rb") as fh:
        for a in range(0, N, block):
            b = min(N, a + block)
            x = read_block(fh, source, a, b)
            mx = np.maximum(mx, _check_block(source.path, x, a, None))
            for c in np.nonzero(mx > limit)[0]:
                out = x[:, :, c] > limit[c]  # (m, T, H, W)
                n = int(out.sum())
                if n:
                    count[c] += n
                    first.setdefault(int(c), (a, *np.argwhere(out)[0], float(x[:, :, c][out].max())))
                inliers[c] = max(inliers[c], float(x[:, :, c][~out].max(initial=0)))
            inliers = np.where(mx > limit, inliers, mx)
            bar.update((b - a) * T)
    bar.close()
    if count.sum() and not clip:
        c = int(np.nonzero(count)[0][0])
        a, i, t, y, x_, big = first[c]
        raise JepaFastError(f"{source.path / 'states.npy'}: {int(count[c]):,} value(s) of channel {c} are above "
                            f"{limit[c]:.4g} ({OUTLIER_RATIO:g}x the 99.9th percentile of a strided sample), e.g. "
                            f"{big:.4g} at trajectory {a + i}, frame {t}, pixel (y={y}, x={x_}): quantising with "
                            "that range would round the channel's other values to 0; fix or drop them, or pass "
                            "--clip-outliers to clip them (recorded in the store)")
    return inliers, int(count.sum())


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
    N, T, C, H, W = source.states.shape
    k = min(N, cfg.trajectories_per_shard(T * C * H * W))  # a shard never holds more than the split
    if k * T * C * H * W > MAX_SHARD_MIB << 20:
        raise JepaFastError(f"pack: shards of {k:,} trajectories would hold {k * T * C * H * W / 2**30:.2f} GiB each "
                            f"(at most {MAX_SHARD_MIB} MiB): use a smaller --chunk-trajectories, or --chunk-mib "
                            f"(default 1)")
    options = {"codec": cfg.codec, "zstd_level": cfg.zstd_level, "k": k, "scale_mode": cfg.scale,
               "clip_outliers": cfg.clip_outliers}
    atomic.check_apart(dst, {"source": src}, "store")
    with lock.exclusive(dst, "store"):
        if resume and _packed_from(dst, source, options):  # finished before the interruption: keep it
            print(f"{dst}: already packed from this source with these options; kept")
            return _summary(dst, source, k, 0.0)
        atomic.check_destination(dst, overwrite, "store")
        return _pack_split_locked(source, dst, cfg, k, options, overwrite, resume, progress)


def _packed_from(dst: Path, source: Source, options: dict) -> bool:
    """Is ``dst`` a complete store packed from this very source file with these options?"""
    try:
        attrs = json.loads((dst / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return bool(attrs.get("complete")) and attrs.get("pack") == {"options": options, "source": source.fingerprint()}


def _summary(dst: Path, source: Source, k: int, seconds: float) -> dict:
    N, T = source.states.shape[:2]
    return {"store": str(dst), "n": N, "frames": N * T, "seconds": seconds, "k": k,
            "bytes_in": int(source.states.nbytes), "bytes_out": store_nbytes(dst)}


def _pack_split_locked(source: Source, dst: Path, cfg: PackConfig, k: int, options: dict, overwrite: bool,
                       resume: bool, progress: bool) -> dict:
    partial = dst.with_name(dst.name + ".partial")
    N, T, C, H, W = source.states.shape
    codec = ChunkCodec(cfg.codec, cfg.zstd_level)
    t0 = time.perf_counter()
    state = _load_progress(partial, source, options) if resume else None
    if resume and state is None and partial.exists():
        print(f"{partial}: not resumable (source or options changed); starting over")
    if not resume and not overwrite and (partial / PROGRESS_FILE).exists():
        done = _progress_done(partial)
        raise JepaFastError(f"{partial} holds an interrupted pack ({done} of {N:,} trajectories done); pass --resume "
                            "to continue it, or --overwrite to start over")
    try:
        if state is None:
            shutil.rmtree(partial, ignore_errors=True)
            sample_max, limit = _sample_stats(source)
            clipped = 0
            if cfg.scale == "sample" and not cfg.clip_outliers and (sample_max <= limit).all():
                value_max, headroom = sample_max, SCALE_HEADROOM
            else:  # the exact range, outliers found (and refused, or counted for clipping)
                value_max, clipped = _full_scan(source, _block_len(source, k), progress, limit, cfg.clip_outliers)
                headroom = 1.0
            state = {"done": 0, "scale": scale_for(value_max, source.states.dtype, headroom).tolist(),
                     "value_max": [0.0] * C, "walls_static": True, "options": options,
                     "source": source.fingerprint(), "clipped": clipped,
                     "limit": [float(v) if np.isfinite(v) else None for v in limit]}
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
            writer.clip = cfg.clip_outliers
            writer.absent = set(state.get("absent", []))
            writer.shard_crc = {int(s): c for s, c in state.get("shard_crc", {}).items()}
            writer.check_written(state["done"] // k)  # what a resume keeps must still be there
            _save_progress(partial, state)
            try:
                _pack_states(source, writer, state, cfg.workers, progress)
                break
            except _ScaleOverflow:
                print("a value exceeds the sampled scale; rescanning for the exact max and repacking")
                shutil.rmtree(partial, ignore_errors=True)
                limit = np.array([np.inf if v is None else v for v in state["limit"]])
                value_max, clipped = _full_scan(source, _block_len(source, k), progress, limit, cfg.clip_outliers)
                state = {**state, "done": 0, "scale": scale_for(value_max, source.states.dtype).tolist(),
                         "value_max": [0.0] * C, "walls_static": True, "clipped": clipped}
                create = True
        writer.finalize(np.asarray(source.actions), None if source.locations is None else np.asarray(source.locations),
                        {"value_max": state["value_max"], "source_dtype": str(source.states.dtype),
                         "walls_static": state["walls_static"], "clipped_outliers": state.get("clipped", 0),
                         "pack": {"options": options, "source": source.fingerprint()}})
        (partial / PROGRESS_FILE).unlink(missing_ok=True)
    except JepaFastError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    atomic.replace_path(partial, dst)
    return _summary(dst, source, k, time.perf_counter() - t0)


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
    limit = np.array([np.inf if v is None else v for v in state["limit"]]) if writer.clip else None
    value_max = np.asarray(state["value_max"], dtype=np.float64)
    guard = threading.Lock()  # value_max and walls_static are updated from the worker threads

    def work(a: int, x: np.ndarray) -> None:
        mx = _check_block(source.path, x, a, scale, limit)
        static = writer.write_block(a, x)
        with guard:
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
                x = read_block(fh, source, a, b, buf)
                pending.append((b, pool.submit(work, a, x), buf))
                while len(pending) > 2 * workers:
                    done, fut, used = pending.popleft()
                    fut.result()
                    free.append(used)
                    bar.update((done - state["done"]) * T)
                    state["done"] = done
                    state["value_max"] = value_max.tolist()
                    state.update(writer.progress())  # all-empty shards and the CRCs of those written so far
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
    state.update(writer.progress())
    _save_progress(writer.path, state)


def _save_progress(partial: Path, state: dict) -> None:
    """Record progress (tiny file; write + rename, no fsync: it must survive a killed process, not a crash)."""
    tmp = partial / f".{PROGRESS_FILE}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, partial / PROGRESS_FILE)


def _progress_done(partial: Path) -> str:
    try:
        return f"{int(json.loads((partial / PROGRESS_FILE).read_text())['done']):,}"
    except (ValueError, KeyError, TypeError, OSError):
        return "?"


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


def pack_path(src: Path, dst: Path, cfg: PackConfig | None = None, overwrite: bool = False, resume: bool = False,
              progress: bool = True) -> list[dict]:
    """Pack one split folder, or a dataset root with all its splits (dst/<split>.zarr each).

    A root packs into ``<dst>.partial`` and appears at ``dst`` only when every split is packed: a bad
    split leaves nothing new behind, and a killed pack leaves a whole that ``--resume`` continues split
    by split (finished splits are kept, the interrupted one resumes after its last complete block).
    """
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
    partial = dst.with_name(dst.name + ".partial")
    atomic.check_apart(dst, {"source": src}, "packed dataset folder")
    with lock.exclusive(dst, "packed dataset folder"):
        atomic.check_destination(dst, overwrite, "packed dataset folder")
        before = set(os.listdir(dst)) if dst.is_dir() else set()
        if partial.exists() and not resume:
            if not overwrite:
                raise JepaFastError(f"{partial} holds an interrupted pack of a dataset root; pass --resume to continue "
                                    "it, or --overwrite to start over")
            shutil.rmtree(partial)
        out = []
        try:
            for s in splits:
                print(f"packing {s}")
                # inside the root's own partial folder: a store that does not match is simply redone
                out.append(pack_split(src / s, partial / f"{s}.zarr", cfg, True, resume, progress))
            if (src / "dataset.json").exists():
                atomic.atomic_write_bytes(partial / "dataset.json", (src / "dataset.json").read_bytes())
        except JepaFastError:
            shutil.rmtree(partial, ignore_errors=True)  # bad input: nothing new stays behind
            raise
        appeared = sorted(set(os.listdir(dst)) - before) if dst.is_dir() else []
        if appeared:  # written by something else while we packed: never replace what we did not see
            raise JepaFastError(f"{dst / appeared[0]} appeared in {dst} while this pack ran (written by another "
                                f"program); the packed splits wait in {partial}: move it out of {dst} and run the "
                                "same pack with --resume")
        atomic.replace_path(partial, dst)
    for r in out:
        r["store"] = str(dst / Path(r["store"]).relative_to(partial))
    return out
