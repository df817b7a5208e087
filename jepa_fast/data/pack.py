"""The packer: episode sources (``source.py``, ``hdf5.py``) streamed into schema-4 stores (``writer.py``).

``pack_split`` packs one source (a split folder of .npy files, or an HDF5 file) into ``<dst>.zarr``;
``pack_path`` packs one source or every split of a dataset root. Work happens in ``<dst>.partial`` with a
small progress file, so a killed pack resumes after its last complete shard (``--resume``) and the store
appears only when complete. Reads are bounded (blocks of ~16 MiB of frames); quantisation, compression
and writes run on worker threads. Float frames are quantised to uint8 with a per-channel scale taken from
a strided sample of episodes (or the exact maximum); a value that would stretch a channel's range until
the rest of it rounds to zero is refused, or clipped on request.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from jepa_fast import atomic, lock
from jepa_fast.config import PackConfig
from jepa_fast.data import scan
from jepa_fast.data.hdf5 import Hdf5Source
from jepa_fast.data.reader import store_nbytes
from jepa_fast.data.schema import ChunkCodec, scale_for
from jepa_fast.data.shard import BadValue, ScaleOverflow
from jepa_fast.data.source import EpisodeSource, NpySource
from jepa_fast.data.writer import StoreBuilder
from jepa_fast.errors import JepaFastError
from jepa_fast.progress import frame_bar
from jepa_fast.spec import flips_to_json

SCALE_HEADROOM = 1.01
"""With pack.scale='sample', the scale is this x the sampled max (a value above it triggers a repack)."""
MAX_SHARD_MIB = 64
"""A shard holds at most this much raw data: the packer's buffers are a few shards of the source dtype."""
ROW_FRAMES = 16
"""Frames per row when episodes differ in length (fixed-length episodes make one row each)."""
PROGRESS_FILE = "pack_progress.json"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


# ---------------------------------------------------------------------------------------------
# sources


def open_episodes(src: Path, channels: str = "auto", keys: dict | None = None) -> EpisodeSource:
    """The episode source at ``src``: a folder of .npy files, or an HDF5 file (``keys`` chooses its datasets)."""
    src = Path(src)
    if src.suffix.lower() in HDF5_SUFFIXES:
        return Hdf5Source(src, channels=channels, **(keys or {}))
    if keys and "meta" in keys:
        raise JepaFastError(f"--meta: names an HDF5 file's meta.json; {src} is a folder of .npy files, whose meta is "
                            f"{src / 'meta.json'} (put it there)")
    if keys:
        raise JepaFastError(f"--{next(iter(keys)).replace('_', '-')}: chooses datasets of an HDF5 file; {src} is a "
                            "folder of .npy files (it names its arrays states/actions/targets.npy)")
    return NpySource(src, channels)


def find_splits(root: Path) -> dict[str, Path]:
    """The splits under a dataset root, by name: every folder holding a states.npy (named by its path
    under the root) and every HDF5 file (named by its path without the suffix)."""
    root = Path(root)
    found = {str(p.parent.relative_to(root)): p.parent for p in root.rglob("states.npy")}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in HDF5_SUFFIXES and p.is_file():
            name = str(p.relative_to(root).with_suffix(""))
            if name in found:
                raise JepaFastError(f"{root}: split {name!r} is both {found[name]} and {p}; keep one")
            found[name] = p
    return dict(sorted(found.items()))


# ---------------------------------------------------------------------------------------------
# packing one source


def pack_split(src: Path, dst: Path, cfg: PackConfig | None = None, overwrite: bool = False, resume: bool = False,
               progress: bool = True, channels: str = "auto", keys: dict | None = None) -> dict:
    """Pack one source (a split folder of .npy files, or an HDF5 file) into ``dst`` (a ``.zarr`` store).

    Work happens in ``<dst>.partial``; the store appears at ``dst`` only when complete. A killed pack
    leaves the partial store and ``--resume`` continues after the last complete shard. Bad input
    raises ``JepaFastError`` and removes the partial store. ``channels`` (auto | first | last) says where
    the channel axis of the frames is; ``keys`` chooses an HDF5 file's datasets (``hdf5.py``).
    """
    cfg = cfg or PackConfig()
    src, dst = Path(src), Path(dst)
    source = open_episodes(src, channels, keys)
    C, H, W = source.frame_shape
    L = cfg.row_frames or source.fixed_length or ROW_FRAMES
    rows = -(-source.frames // L)
    k = min(rows, cfg.trajectories_per_shard(L * C * H * W))  # a shard never holds more than the split
    if k * L * C * H * W > MAX_SHARD_MIB << 20:
        raise JepaFastError(f"pack: shards of {k:,} rows of {L} frames would hold {k * L * C * H * W / 2**30:.2f} GiB "
                            f"each (at most {MAX_SHARD_MIB} MiB): use a smaller --chunk-trajectories, or --chunk-mib "
                            f"(default 1)")
    options = {"codec": cfg.codec, "zstd_level": cfg.zstd_level, "k": k, "row_frames": L, "scale_mode": cfg.scale,
               "clip_outliers": cfg.clip_outliers}
    atomic.check_apart(dst, {"source": src}, "store")
    with lock.exclusive(dst, "store"):
        if resume and _packed_from(dst, source, options):  # finished before the interruption: keep it
            print(f"{dst}: already packed from this source with these options; kept")
            return _summary(dst, source, k, 0.0)
        atomic.check_destination(dst, overwrite, "store")
        return _pack_split_locked(source, dst, cfg, L, k, options, overwrite, resume, progress)


def _packed_from(dst: Path, source: EpisodeSource, options: dict) -> bool:
    """Is ``dst`` a complete store packed from this very source with these options?"""
    try:
        attrs = json.loads((dst / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return bool(attrs.get("complete")) and attrs.get("pack") == {"options": options, "source": source.fingerprint()}


def _summary(dst: Path, source: EpisodeSource, k: int, seconds: float) -> dict:
    C, H, W = source.frame_shape
    return {"store": str(dst), "n": source.episodes, "frames": source.frames, "seconds": seconds, "k": k,
            "bytes_in": source.frames * C * H * W * source.dtype.itemsize, "bytes_out": store_nbytes(dst),
            "meta": None if source.meta_path is None else str(source.meta_path)}


def _pack_split_locked(source: EpisodeSource, dst: Path, cfg: PackConfig, L: int, k: int, options: dict,
                       overwrite: bool, resume: bool, progress: bool) -> dict:
    partial = dst.with_name(dst.name + ".partial")
    t0 = time.perf_counter()
    state = _load_progress(partial, source, options) if resume else None
    if resume and state is None and partial.exists():
        print(f"{partial}: not resumable (source or options changed); starting over")
    if not resume and not overwrite and (partial / PROGRESS_FILE).exists():
        raise JepaFastError(f"{partial} holds an interrupted pack ({_progress_done(partial, source)} done); pass "
                            "--resume to continue it, or --overwrite to start over")
    try:
        if state is None:
            shutil.rmtree(partial, ignore_errors=True)
            state = _new_state(source, cfg, options, progress, rescan=False)
        else:
            for stray in partial.rglob(".*.tmp"):  # temp files of writes the kill interrupted
                stray.unlink()
            print(f"resuming {partial} after {state['builder']['shards_done']:,} shards")
        while True:
            partial.mkdir(parents=True, exist_ok=True)
            _save_progress(partial, state)
            builder = _builder(source, partial, cfg, L, k, state)
            try:
                _feed(source, builder, progress)
                builder.finish({**source.attrs(), "protocol": source.protocol, "clipped_outliers": state["clipped"],
                                "pack": {"options": options, "source": source.fingerprint()}},
                               flips=flips_to_json(source.flips), channel_names=source.channel_names)
                break
            except ScaleOverflow:
                builder.close()
                print("a value exceeds the sampled scale; rescanning for the exact max and repacking")
                shutil.rmtree(partial, ignore_errors=True)
                state = _new_state(source, cfg, options, progress, rescan=True, limit=state["limit"])
            except BaseException:
                builder.close()
                raise
        (partial / PROGRESS_FILE).unlink(missing_ok=True)
    except JepaFastError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    atomic.replace_path(partial, dst)
    return _summary(dst, source, k, time.perf_counter() - t0)


def _new_state(source: EpisodeSource, cfg: PackConfig, options: dict, progress: bool, rescan: bool,
               limit: list | None = None) -> dict:
    """The quantisation scale (sampled, or exact after a rescan) and a fresh progress record."""
    if limit is None:
        sample_max, lim = scan.sample_stats(source)
    else:
        lim = np.array([np.inf if v is None else v for v in limit])
    clipped = 0
    if not rescan and cfg.scale == "sample" and not cfg.clip_outliers and (sample_max <= lim).all():
        value_max, headroom = sample_max, SCALE_HEADROOM
    else:  # the exact range, outliers found (and refused, or counted for clipping)
        value_max, clipped = scan.full_scan(source, progress, lim, cfg.clip_outliers)
        headroom = 1.0
    return {"scale": scale_for(value_max, source.dtype, headroom).tolist(), "options": options,
            "source": source.fingerprint(), "clipped": clipped, "builder": None,
            "limit": [float(v) if np.isfinite(v) else None for v in lim]}


def _builder(source: EpisodeSource, partial: Path, cfg: PackConfig, L: int, k: int, state: dict) -> StoreBuilder:
    limit = np.array([np.inf if v is None else v for v in state["limit"]]) if cfg.clip_outliers else None

    def saved(b: dict) -> None:
        state["builder"] = b
        _save_progress(partial, state)

    return StoreBuilder(partial, frame_shape=source.frame_shape, action_size=source.action_size, row_frames=L,
                        rows_per_shard=k, codec=ChunkCodec(cfg.codec, cfg.zstd_level), scale=np.array(state["scale"]),
                        dtype=source.dtype, where=source.where, target_names=source.target_names,
                        clip_limit=limit, workers=cfg.workers, state=state["builder"], on_progress=saved)


def _feed(source: EpisodeSource, b: StoreBuilder, progress: bool) -> None:
    """Every episode from the builder's resume point on, in blocks; fixed-length .npy episodes that fill whole
    shards are read straight into the shard's buffer (no copy)."""
    e, skip = b.resume_point
    bar = frame_bar(source.frames, progress, "pack")
    bar.update(int(source.lengths[:e].sum()) + skip)
    T = source.fixed_length
    direct = (T == b.L and isinstance(source, NpySource) and not source.flat and not source.channels_last
              and len(source.shape) == 5)
    try:
        while e < source.episodes:
            if direct and not skip and b.at_shard_start:
                m = min(b.k, source.episodes - e)
                _, actions, targets = source.read(e, e + m, out=b.staging_view())
                b.commit([T] * m, actions, targets)
                e += m
                bar.update(m * T)
                continue
            e1 = next(scan.episode_blocks(source, e))[1]
            x, actions, targets = source.read(e, e1)
            a = 0
            for j in range(e1 - e):
                n = int(source.lengths[e + j])
                b.add_episode(x[a:a + n], actions[j], None if targets is None else targets[j])
                a += n
            bar.update(a - skip)
            skip, e = 0, e1
    except BadValue as err:
        raise JepaFastError(b._locate(err)) from None
    finally:
        bar.close()


def _save_progress(partial: Path, state: dict) -> None:
    """Record progress (tiny file; write + rename, no fsync: it must survive a killed process, not a crash)."""
    tmp = partial / f".{PROGRESS_FILE}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, partial / PROGRESS_FILE)


def _progress_done(partial: Path, source: EpisodeSource) -> str:
    """'F of N frames' written by the interrupted pack in ``partial``."""
    try:
        state = json.loads((partial / PROGRESS_FILE).read_text())
        opts = state["options"]
        done = int(state["builder"]["shards_done"]) * int(opts["k"]) * int(opts["row_frames"])
    except (ValueError, KeyError, TypeError, OSError):
        done = 0
    return f"{min(done, source.frames):,} of {source.frames:,} frames"


def _load_progress(partial: Path, source: EpisodeSource, options: dict) -> dict | None:
    f = partial / PROGRESS_FILE
    if not f.exists():
        return None
    try:
        state = json.loads(f.read_text())
    except ValueError:
        return None
    if state.get("options") != options or state.get("source") != source.fingerprint() or not state.get("builder"):
        return None
    return state


# ---------------------------------------------------------------------------------------------
# packing a dataset root


def pack_path(src: Path, dst: Path, cfg: PackConfig | None = None, overwrite: bool = False, resume: bool = False,
              progress: bool = True, channels: str = "auto", keys: dict | None = None) -> list[dict]:
    """Pack one source (a split folder or an HDF5 file), or a dataset root with all its splits (dst/<split>.zarr).

    A root packs into ``<dst>.partial`` and appears at ``dst`` only when every split is packed: a bad
    split leaves nothing new behind, and a killed pack leaves a whole that ``--resume`` continues split
    by split (finished splits are kept, the interrupted one resumes after its last complete shard).
    """
    src, dst = Path(src), Path(dst)
    if src.is_file() or (src / "states.npy").exists() or (src / "actions.npy").exists():
        return [pack_split(src, dst, cfg, overwrite, resume, progress, channels, keys)]
    if not src.is_dir():
        raise JepaFastError(f"{src}: no such folder or file")
    splits = find_splits(src)
    if not splits:
        raise JepaFastError(f"{src}: no splits found (folders with states.npy, or HDF5 files); point at a split, an "
                            "HDF5 file or a dataset root")
    if dst.suffix == ".zarr":
        raise JepaFastError(f"{dst}: a dataset root packs into a folder of <split>.zarr stores; drop the .zarr suffix")
    for path in splits.values():
        open_episodes(path, channels, keys)  # validate every split before writing any
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
            for s, path in splits.items():
                print(f"packing {s}")
                # inside the root's own partial folder: a store that does not match is simply redone
                out.append(pack_split(path, partial / f"{s}.zarr", cfg, True, resume, progress, channels, keys))
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
