"""A raw split folder in the original on-disk format: validated without reading it, read in blocks.

A split folder holds ``states.npy`` (N, T, 2, H, W) float32/float16/float64/uint8, ``actions.npy``
(N, T-1, 2) and optionally ``locations.npy`` (N, T, 2). ``open_source`` checks headers, shapes,
dtypes and sizes and gives a one-line error for every kind of broken file; the packer then reads
``states.npy`` in blocks with one ``readinto`` each.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jepa_fast.errors import JepaFastError


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


def regular_file(f: Path) -> None:
    """Refuse a path that is not a regular file (a FIFO or a device would block or never end)."""
    try:
        mode = os.stat(f).st_mode
    except OSError as e:
        raise JepaFastError(f"{f}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise JepaFastError(f"{f}: not a regular file (a FIFO, a device or a folder); give the data file itself")


def _npy_header(f: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, with one-line errors for broken files."""
    regular_file(f)
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
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise JepaFastError(f"{f}: header shape {shape} is not a shape; re-copy or regenerate it")
    need = offset + math.prod(shape) * dtype.itemsize  # Python ints: a crafted huge shape cannot overflow
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
    if a_dtype.kind != "f":
        raise JepaFastError(f"{src / 'actions.npy'}: dtype {a_dtype}; expected floats (float32)")
    if len(a_shape) != 3 or a_shape[2] != 2:
        raise JepaFastError(f"{src / 'actions.npy'}: shape {a_shape}; expected (N, T-1, 2)")
    if a_shape[0] != N:
        raise JepaFastError(f"{src / 'actions.npy'}: {a_shape[0]} trajectories but states.npy has {N}")
    if a_shape[1] != T - 1:
        raise JepaFastError(f"{src / 'actions.npy'}: {a_shape[1]} actions per trajectory; states.npy has T={T}, "
                            f"so expected {T - 1}")
    locations = None
    if (src / "locations.npy").exists():
        l_shape, l_dtype, _ = _npy_header(src / "locations.npy")
        if l_dtype.kind != "f":
            raise JepaFastError(f"{src / 'locations.npy'}: dtype {l_dtype}; expected floats (float32)")
        if tuple(l_shape) != (N, T, 2):
            raise JepaFastError(f"{src / 'locations.npy'}: shape {l_shape}; expected {(N, T, 2)}")
        locations = np.load(src / "locations.npy", mmap_mode="r")
    actions = np.load(src / "actions.npy", mmap_mode="r")
    states = np.load(src / "states.npy", mmap_mode="r")
    for name, arr in (("actions", actions), ("locations", locations)):
        if arr is not None and not np.isfinite(np.asarray(arr)).all():
            raise JepaFastError(f"{src / (name + '.npy')}: contains NaN or Inf; fix or drop those trajectories")
    return Source(src, states, actions, locations, s_off)


def read_block(fh, source: Source, a: int, b: int, buf: np.ndarray | None = None) -> np.ndarray:
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


def find_splits(root: Path) -> list[str]:
    """Split folders (relative names) under a dataset root: every folder holding a states.npy."""
    root = Path(root)
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("states.npy"))
