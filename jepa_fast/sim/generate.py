"""Write simulated datasets in the original on-disk format (one folder per split of .npy files).

A dataset root holds the seven splits of ``config.SPLITS``; each split folder has ``states.npy``
(N, T, 2, H, W), ``actions.npy`` (N, T-1, 2) and ``locations.npy`` (N, T, 2), plus a root
``dataset.json`` recording how it was made. Generation streams blocks of trajectories into
``np.lib.format.open_memmap`` files (memory stays bounded whatever N is) inside a temporary folder
that is renamed into place only when every split is complete.

Determinism: block b of split s is drawn from ``SeedSequence([seed, s, b])``, so the same seed gives
byte-identical files and each split has its own independent stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jepa_fast import atomic
from jepa_fast.config import SPLIT_KIND, SPLITS, DatasetConfig, PackConfig, SimConfig, to_dict
from jepa_fast.data.schema import ChunkCodec
from jepa_fast.data.writer import StoreBuilder
from jepa_fast.errors import JepaFastError
from jepa_fast.progress import frame_bar
from jepa_fast.sim import env, splits
from jepa_fast.spec import flips_to_json, two_rooms_flips

FORMAT_NAME = "two-rooms-npy"
BLOCK_FRAMES = 4352
"""Frames per generation block (256 trajectories of 17 frames): ~150 MB of float32 states."""


def block_size(T: int) -> int:
    """Trajectories per block for sequences of T frames (fixed per T: it defines the random streams)."""
    return max(1, BLOCK_FRAMES // T)


@dataclass
class Block:
    """One rendered block of a split: trajectories [start, start + N)."""

    start: int
    states: np.ndarray  # (N, T, 2, H, W) float32 | uint8
    actions: np.ndarray  # (N, T-1, 2) float32
    locations: np.ndarray  # (N, T, 2) float32
    wall_x: np.ndarray  # (N,) int64
    door_y: np.ndarray  # (N,) int64


def iter_blocks(split: str, n: int, T: int, sim: SimConfig, seed: int, dtype: str = "float32",
                render: bool = True, blocks: range | None = None) -> Iterator[Block]:
    """Generate split ``split`` block by block (deterministic for a given seed, n and T).

    The states of every block are rendered into one reused buffer (no page faults for fresh memory
    per block): consume or copy ``block.states`` before asking for the next block. ``blocks`` selects
    a range of block indices (e.g. one worker's share); by default all of them.
    """
    kind = SPLIT_KIND[split]
    split_id = SPLITS.index(split)
    bs = block_size(T)
    buf = np.empty((min(bs, n), T, 2, sim.image_size, sim.image_size), dtype=dtype) if render else None
    for b in blocks if blocks is not None else range(-(-n // bs)):
        start = b * bs
        m = min(bs, n - start)
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, b]))
        tr = splits.generate(kind, rng, sim, m, T, offset=start)
        states = env.render(sim, tr.locations, tr.wall_x, tr.door_y, dtype=dtype, out=buf[:m]) if render else None
        yield Block(start, states, tr.actions.astype(np.float32), tr.locations.astype(np.float32),
                    tr.wall_x, tr.door_y)


def split_nbytes(n: int, T: int, image_size: int, dtype: str) -> int:
    """Bytes one split takes on disk as .npy files."""
    item = np.dtype(dtype).itemsize
    return n * T * 2 * image_size * image_size * item + n * (T - 1) * 2 * 4 + n * T * 2 * 4 + 3 * 128


def dataset_nbytes(ds: DatasetConfig, sim: SimConfig, dtype: str) -> int:
    return sum(split_nbytes(n, ds.seq_len_of(s), sim.image_size, dtype) for s, n in ds.sizes.items())


class NpySplitWriter:
    """Streams one split into states/actions/locations .npy files (the original format).

    Each file gets its .npy header up front; blocks are then written with plain sequential
    ``write`` calls (much cheaper than faulting in memmap pages), at the block's row offset.
    """

    def __init__(self, split_dir: Path, n: int, T: int, image_size: int, dtype: str):
        split_dir.mkdir(parents=True, exist_ok=True)
        shapes = {"states": ((n, T, 2, image_size, image_size), np.dtype(dtype)),
                  "actions": ((n, T - 1, 2), np.dtype(np.float32)),
                  "locations": ((n, T, 2), np.dtype(np.float32))}
        self.files = {}
        for name, (shape, dt) in shapes.items():
            f = open(split_dir / f"{name}.npy", "wb")
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dt),
                                                     "fortran_order": False, "shape": shape})
            row = int(np.prod(shape[1:])) * dt.itemsize
            self.files[name] = (f, f.tell(), row, dt)
            f.truncate(f.tell() + n * row)  # full size now: a short file would mean a broken write

    def write(self, block: Block) -> None:
        for name in ("states", "actions", "locations"):
            f, offset, row, dt = self.files[name]
            arr = np.ascontiguousarray(getattr(block, name), dtype=dt)
            f.seek(offset + block.start * row)
            try:
                f.write(memoryview(arr).cast("B"))
            except OSError as e:  # name the file (a failed write() alone does not)
                raise OSError(e.errno, e.strerror, f.name) from None

    def close(self) -> None:
        for f, *_ in self.files.values():
            f.close()


class ZarrSplitWriter:
    """Streams one split straight into a packed store (``generate --format zarr``) with the packer's builder:
    one row per trajectory, the two-rooms channels, targets, flips and probing protocol."""

    def __init__(self, path: Path, n: int, T: int, image_size: int, dtype: str, scale: np.ndarray,
                 attrs: dict, pack: PackConfig):
        k = min(n, pack.trajectories_per_shard(T * 2 * image_size * image_size))
        self.attrs, self.size = attrs, image_size
        self.builder = StoreBuilder(path, frame_shape=(2, image_size, image_size), action_size=2, row_frames=T,
                                    rows_per_shard=k, codec=ChunkCodec(pack.codec, pack.zstd_level), scale=scale,
                                    dtype=dtype, where=str(path), target_names=("agent_x", "agent_y"),
                                    workers=pack.workers)

    def write(self, block) -> None:
        for i in range(len(block.actions)):  # the builder copies: the block's buffer is reused for the next one
            self.builder.add_episode(block.states[i], block.actions[i], block.locations[i])

    def close(self) -> None:
        try:
            flips = flips_to_json(two_rooms_flips(self.size))
            self.builder.finish({**self.attrs, "protocol": "two-rooms", "clipped_outliers": 0}, flips=flips,
                                channel_names=("agent", "walls"))
        finally:
            self.builder.close()


def generate_dataset(out: Path, ds: DatasetConfig, sim: SimConfig, seed: int = 0, dtype: str = "float32",
                     overwrite: bool = False, progress: bool = True, fmt: str = "npy",
                     pack: PackConfig | None = None) -> dict:
    """Generate every split of ``ds`` into the dataset root ``out``; returns a summary dict.

    fmt: 'npy' writes the original format; 'zarr' writes each split straight into the packed store
    schema (``jepa_fast.data.schema``) with the packer's writer without ever holding float32 frames on disk.
    """
    out = Path(out)
    if not isinstance(seed, int) or seed < 0:
        raise JepaFastError(f"--seed {seed}: must be an integer >= 0")
    if dtype not in ("float32", "uint8"):
        raise JepaFastError(f"--dtype {dtype}: use float32 or uint8")
    if fmt not in ("npy", "zarr"):
        raise JepaFastError(f"--format {fmt}: use npy or zarr")
    if dtype == "uint8" and sim.value_scale != "uint8":
        raise JepaFastError("--dtype uint8 writes the x255 value scale; build SimConfig(value_scale='uint8')")
    atomic.check_destination(out, overwrite, "dataset folder")
    if fmt == "npy":
        need = dataset_nbytes(ds, sim, dtype)
        atomic.check_free_space(out, need, "use --dtype uint8 (4x smaller), --format zarr, or a smaller --n")
    total_frames = sum(n * ds.seq_len_of(s) for s, n in ds.sizes.items())
    bar = frame_bar(total_frames, progress, "generate")
    t0 = time.perf_counter()
    summary: dict = {"format": FORMAT_NAME if fmt == "npy" else "jepa-fast-zarr", "seed": seed, "dtype": dtype,
                     "sim": to_dict(sim), "splits": {}}
    with atomic.atomic_dir(out, overwrite, "dataset folder") as tmp:
        for split, n in ds.sizes.items():
            T = ds.seq_len_of(split)
            if fmt == "npy":
                writer = NpySplitWriter(tmp / split, n, T, sim.image_size, dtype)
            else:
                # the simulator knows its exact maximum: both channels peak at pixel_peak (or 255)
                peak = 255.0 if dtype == "uint8" else sim.pixel_peak
                scale = np.full(2, 1.0 if dtype == "uint8" else peak / 255.0)
                attrs = {"source": {"generator": "jepa-fast generate", "seed": seed, "split": split,
                                    "sim": to_dict(sim)}}
                writer = ZarrSplitWriter(tmp / f"{split}.zarr", n, T, sim.image_size, dtype, scale, attrs,
                                        pack or PackConfig())
            for block in iter_blocks(split, n, T, sim, seed, dtype):
                writer.write(block)
                bar.update(len(block.actions) * T)
            writer.close()
            summary["splits"][split] = {"n": n, "T": T, "kind": SPLIT_KIND[split]}
        # the manifest holds no timings: the same seed must give byte-identical files
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2))
    bar.close()
    return {**summary, "seconds": round(time.perf_counter() - t0, 3)}


def load_split(split_dir: Path, mmap: bool = True) -> dict[str, np.ndarray]:
    """Open a split folder in the original format (states/actions/locations .npy), memory-mapped."""
    split_dir = Path(split_dir)
    out = {}
    for name in ("states", "actions", "locations"):
        f = split_dir / f"{name}.npy"
        if not f.exists():
            if name == "locations":
                continue
            raise JepaFastError(f"{f}: missing; a split folder needs states.npy and actions.npy")
        out[name] = np.load(f, mmap_mode="r" if mmap else None)
    return out
