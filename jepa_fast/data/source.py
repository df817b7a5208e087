"""Episode sources: what ``jepa-fast pack`` reads, validated up front without reading the frames.

An ``EpisodeSource`` says how many episodes there are and how long each is, the frames' shape and dtype,
the action size and the target names; ``read(e0, e1)`` gives the frames of whole episodes (flat, channels
first) with their actions and targets. Sources:

* a folder of ``.npy`` files (``NpySource``, here):
  - fixed length, the original format: ``states.npy`` (N, T, C, H, W) (or (N, T, H, W, C)),
    ``actions.npy`` (N, T-1, A), optional ``locations.npy`` or ``targets.npy`` (N, T, K);
  - episodes of any length: ``states.npy`` (F, C, H, W) / (F, H, W, C) / (F, H, W), ``actions.npy`` (F, A),
    optional ``targets.npy`` (F, K), and ``episode_ends.npy`` (E,): the frame after each episode's last;
  - uint8 or float16/32/64 frames; an optional ``meta.json`` names channels and targets
    ({"channel_names": [...], "target_names": [...]}; "protocol": "generic" opts out of the two-rooms
    recognition below) and says how flips transform actions and targets ("flips": {"lr": {"negate": [0],
    "mirror": [[0, 95.0]]}, "ud": ...}: negate action components, map target component k to c - t);
* HDF5 files in robomimic, Minari or D4RL layouts (``hdf5.py``; needs h5py);
* anything else through the ``EpisodeWriter`` API (``episodes.py``).

Every problem is one line naming the file and the fix: a missing or truncated file, a FIFO, a shape that is
not frames (rank), channel counts outside 1-4, counts that disagree, NaN/Inf in actions or targets.
The original format (2 channels, 2-d actions, locations) is recognised as the two-rooms data: its channels,
targets, flip rules and probing protocol follow.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jepa_fast.errors import JepaFastError
from jepa_fast.spec import FlipRule, flips_from_json, two_rooms_flips

FRAME_DTYPES = (np.dtype(np.uint8), np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def regular_file(f: Path) -> None:
    """Refuse a path that is not a regular file (a FIFO or a device would block or never end)."""
    try:
        mode = os.stat(f).st_mode
    except OSError as e:
        raise JepaFastError(f"{f}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise JepaFastError(f"{f}: not a regular file (a FIFO, a device or a folder); give the data file itself")


def npy_header(f: Path) -> tuple[tuple, np.dtype, int]:
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


def frame_layout(shape: tuple, where: Path, channels: str = "auto") -> tuple[tuple[int, int, int], bool]:
    """((C, H, W), channels_last) of a frame shape (C, H, W), (H, W, C) or (H, W). ``channels``: auto | first | last."""
    if len(shape) == 2:
        return (1, *shape), False
    if len(shape) != 3:
        raise JepaFastError(f"{where}: frames of shape {shape} are not images; each frame must be (C, H, W), "
                            "(H, W, C) or (H, W)")
    last = channels == "last" or (channels == "auto" and shape[-1] <= 4 < shape[0])
    C, H, W = (shape[2], shape[0], shape[1]) if last else shape
    if not 1 <= C <= 4:
        raise JepaFastError(f"{where}: frames of shape {shape} have {C} channels; 1-4 are supported (give "
                            "--channels first|last if the channel axis was guessed wrong)")
    if H < 2 or W < 2:
        raise JepaFastError(f"{where}: frames of shape {shape} are too small to be images")
    return (C, H, W), last


def check_finite(a: np.ndarray, what: str, where: Path | str, lengths: np.ndarray | None = None,
                 episode: str | None = None) -> None:
    """Refuse NaN/Inf in actions or targets, naming the first episode that holds one: ``a`` holds episodes of
    ``lengths`` frames back to back, or is one per row (fixed length), or is the one ``episode`` named."""
    bad = ~np.isfinite(np.asarray(a, dtype=np.float64)).reshape(len(a), -1).all(axis=1)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        if episode is not None:
            raise JepaFastError(f"{where}: {what} of episode {episode} contain NaN or Inf (step {i}); fix or drop "
                                "that episode")
        ep = i if lengths is None else int(np.searchsorted(np.cumsum(lengths), i, side="right"))
        raise JepaFastError(f"{where}: {what} of episode {ep} contain NaN or Inf; fix or drop that episode")


META_KEYS = ("channel_names", "target_names", "flips")


def read_meta(f: Path, protocol: bool = False) -> dict:
    """A source's meta.json ({} when there is none): ``channel_names``, ``target_names``, ``flips`` (and, for a
    .npy folder, ``protocol``), each optional; anything else is an error naming the key."""
    if not f.exists():
        return {}
    regular_file(f)
    try:
        meta = json.loads(f.read_text(encoding="utf-8-sig"))  # a byte-order mark, as some editors write, is fine
    except (ValueError, UnicodeDecodeError) as e:
        raise JepaFastError(f"{f}: not valid JSON ({e})") from None
    keys = META_KEYS + (("protocol",) if protocol else ())
    if not isinstance(meta, dict):
        raise JepaFastError(f"{f}: expected a JSON object with any of {', '.join(keys)}")
    unknown = sorted(set(meta) - set(keys))
    if unknown:
        raise JepaFastError(f"{f}: unknown key {unknown[0]!r}; the keys are {', '.join(keys)}")
    if protocol and meta.get("protocol", "two-rooms") not in ("two-rooms", "generic"):
        raise JepaFastError(f"{f}: protocol {meta['protocol']!r}: two-rooms (recognised by shape) or generic")
    return meta


def apply_meta(meta: dict, f: Path, C: int, A: int, target_names: tuple[str, ...],
               channel_names: tuple[str, ...] | None, flips: dict[str, FlipRule]):
    """(channel names, target names, flip rules) of a source: its meta.json's where it gives them, else the
    defaults given (channel names None: c0, c1, ...), each checked against the data's C, A and K."""
    for key, count, what in (("channel_names", C, "channel"), ("target_names", len(target_names), "target component")):
        v = meta.get(key)
        if v is not None and (not isinstance(v, list) or len(v) != count
                              or not all(isinstance(n, str) and n for n in v)):
            raise JepaFastError(f"{f}: {key} must list {count} non-empty names (one per {what})")
    if "flips" in meta:
        flips = flips_from_json(meta["flips"], A, len(target_names), str(f))
    return (tuple(meta.get("channel_names") or channel_names or (f"c{c}" for c in range(C))),
            tuple(meta.get("target_names") or target_names), flips)


@dataclass
class EpisodeSource:
    """What a packer needs to know of a source before reading its frames."""

    path: Path
    lengths: np.ndarray  # (E,) frames per episode
    frame_shape: tuple[int, int, int]  # (C, H, W)
    dtype: np.dtype
    action_size: int
    target_names: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ()
    flips: dict[str, FlipRule] = field(default_factory=dict)
    protocol: str = "generic"

    @property
    def episodes(self) -> int:
        return len(self.lengths)

    @property
    def where(self) -> str:
        """What error messages about the frames name: the file (and dataset) holding them."""
        return str(self.path)

    @property
    def meta_path(self) -> Path | None:
        """The meta.json this source's names and flip rules came from, if one did."""
        return None

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())

    @property
    def fixed_length(self) -> int:
        """The common episode length, or 0 when episodes differ."""
        return int(self.lengths[0]) if (self.lengths == self.lengths[0]).all() else 0

    def read(self, e0: int, e1: int, out: np.ndarray | None = None):
        """Frames (F', C, H, W) of episodes [e0, e1) (into ``out`` when given), their actions (list of (n-1, A))
        and targets (list of (n, K) or None)."""
        raise NotImplementedError

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def attrs(self) -> dict:
        """What the store records of its source."""
        return {"source": {"path": str(self.path.resolve()), "kind": type(self).__name__}}


class NpySource(EpisodeSource):
    """A folder of .npy files: fixed-length (N, T, ...) episodes, or flat frames with ``episode_ends.npy``."""

    def __init__(self, src: Path, channels: str = "auto"):
        src = Path(src)
        if not src.is_dir():
            raise JepaFastError(f"{src}: no such split folder")
        for name in ("states", "actions"):
            if not (src / f"{name}.npy").exists():
                raise JepaFastError(f"{src / (name + '.npy')}: missing; a split folder needs states.npy and "
                                    "actions.npy")
        s_shape, s_dtype, self.states_offset = npy_header(src / "states.npy")
        f = src / "states.npy"
        if s_dtype not in FRAME_DTYPES:
            raise JepaFastError(f"{f}: dtype {s_dtype}; expected uint8 or float16/32/64 frames")
        ends = src / "episode_ends.npy"
        self.flat = ends.exists()
        if self.flat:
            (C, H, W), last = frame_layout(s_shape[1:], f, channels)
            e_shape, _, _ = npy_header(ends)
            stops = np.load(ends).astype(np.int64).reshape(-1)
            if len(stops) == 0 or (np.diff(np.concatenate([[0], stops])) < 1).any() or stops[-1] != s_shape[0]:
                raise JepaFastError(f"{ends}: episode ends must increase to the frame count {s_shape[0]} "
                                    "(the frame after each episode's last)")
            lengths = np.diff(np.concatenate([[0], stops]))
        else:
            if len(s_shape) != 5:
                raise JepaFastError(f"{f}: shape {s_shape} has rank {len(s_shape)}; expected (N, T, C, H, W) "
                                    "episodes of one length, or flat frames (F, C, H, W) with episode_ends.npy")
            (C, H, W), last = frame_layout(s_shape[2:], f, channels)
            if s_shape[0] < 1 or s_shape[1] < 2:
                raise JepaFastError(f"{f}: shape {s_shape} holds no episode of two frames or more")
            lengths = np.full(s_shape[0], s_shape[1], dtype=np.int64)
        self.channels_last, self.shape = last, s_shape
        self.states = np.load(f, mmap_mode="r")
        actions = np.load(src / "actions.npy", mmap_mode="r")
        A = self._check_actions(src / "actions.npy", actions, lengths)
        targets, names = self._targets(src, lengths)
        meta = read_meta(src / "meta.json", protocol=True)
        two_rooms = meta.get("protocol", "two-rooms") == "two-rooms" and (
            not self.flat and C == 2 and A == 2 and targets is not None and names == ("agent_x", "agent_y") and H == W)
        channel_names, names, flips = apply_meta(meta, src / "meta.json", C, A, names,
                                                 ("agent", "walls") if two_rooms else None,
                                                 two_rooms_flips(W) if two_rooms else {})
        super().__init__(src, lengths, (C, H, W), s_dtype, A, names, channel_names, flips,
                         "two-rooms" if two_rooms else "generic")
        self.actions, self.targets = actions, targets
        self._stops = np.cumsum(lengths)
        self._fh = None  # states.npy, opened on the first read

    @property
    def where(self) -> str:
        return str(self.path / "states.npy")

    @property
    def meta_path(self) -> Path | None:
        f = self.path / "meta.json"
        return f if f.exists() else None

    def __del__(self) -> None:
        if getattr(self, "_fh", None) is not None:
            self._fh.close()

    def _check_actions(self, f: Path, a: np.ndarray, lengths: np.ndarray) -> int:
        if a.dtype.kind != "f":
            raise JepaFastError(f"{f}: dtype {a.dtype}; expected floats (float32)")
        if self.flat:
            if a.ndim != 2 or a.shape[0] != lengths.sum():
                raise JepaFastError(f"{f}: shape {a.shape}; expected ({lengths.sum()}, A): one action per frame")
        elif a.ndim != 3 or a.shape[0] != len(lengths) or a.shape[1] not in (lengths[0] - 1, lengths[0]):
            raise JepaFastError(f"{f}: shape {a.shape}; expected ({len(lengths)}, {lengths[0] - 1}, A) with T="
                                f"{lengths[0]} frames per episode in states.npy")
        check_finite(a, "actions", f, lengths if self.flat else None)
        return int(a.shape[-1])

    def _targets(self, src: Path, lengths: np.ndarray) -> tuple[np.ndarray | None, tuple[str, ...]]:
        for name, names in (("targets", None), ("locations", ("agent_x", "agent_y"))):
            f = src / f"{name}.npy"
            if not f.exists():
                continue
            shape, dtype, _ = npy_header(f)
            want = (int(lengths.sum()),) if self.flat else (len(lengths), int(lengths[0]))
            if dtype.kind != "f" or len(shape) != len(want) + 1 or tuple(shape[:-1]) != want:
                raise JepaFastError(f"{f}: shape {shape} {dtype}; expected float {(*want, 'K')}: one target vector "
                                    "per frame")
            t = np.load(f, mmap_mode="r")
            check_finite(t, name, f, lengths if self.flat else None)
            if names is not None and shape[-1] != 2:
                names = None
            return t, names or tuple(f"t{k}" for k in range(shape[-1]))
        return None, ()

    def fingerprint(self) -> dict:
        out = {}
        for name in ("states", "actions", "locations", "targets", "episode_ends", "meta"):
            for f in (self.path / f"{name}.npy", self.path / f"{name}.json"):
                if f.exists():
                    st = f.stat()
                    out[f.name] = [st.st_size, st.st_mtime_ns]
        return out

    def frame_range(self, e0: int, e1: int) -> tuple[int, int]:
        """Flat frame indices [a, b) of episodes [e0, e1)."""
        return (int(self._stops[e0 - 1]) if e0 else 0), int(self._stops[e1 - 1])

    def read(self, e0: int, e1: int, out: np.ndarray | None = None):
        a, b = self.frame_range(e0, e1)
        C, H, W = self.frame_shape
        if out is None:
            out = np.empty((b - a, C, H, W), dtype=self.dtype)
        out = out[: b - a]
        per_frame = self.shape[1:] if self.flat else self.shape[2:]
        if self.channels_last or len(per_frame) == 2:  # (.., H, W, C) or (.., H, W): reorder while copying
            view = self.states[a:b] if self.flat else self.states[e0:e1].reshape(-1, *per_frame)
            out[...] = np.moveaxis(view, -1, 1) if self.channels_last else view[:, None]
        else:  # channels first: one readinto straight from the file
            row = C * H * W * self.dtype.itemsize
            if self._fh is None:
                self._fh = open(self.path / "states.npy", "rb", buffering=0)  # noqa: SIM115 (kept for every read)
            self._fh.seek(self.states_offset + a * row)
            got = self._fh.readinto(memoryview(out).cast("B"))
            if got != out.nbytes:
                raise JepaFastError(f"{self.path / 'states.npy'}: short read at episode {e0}; the file changed or is "
                                    "damaged")
        if self.flat:
            actions = [np.asarray(self.actions[self.frame_range(e, e + 1)[0]:self.frame_range(e, e + 1)[1]])
                       for e in range(e0, e1)]
            targets = None if self.targets is None else [
                np.asarray(self.targets[self.frame_range(e, e + 1)[0]:self.frame_range(e, e + 1)[1]])
                for e in range(e0, e1)]
        else:
            actions = np.asarray(self.actions[e0:e1])
            targets = None if self.targets is None else np.asarray(self.targets[e0:e1])
        return out, actions, targets
