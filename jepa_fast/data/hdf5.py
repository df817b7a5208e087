"""HDF5 episodes, in the layouts people already have (needs h5py: ``pip install 'jepa-fast[hdf5]'``).

* one group per episode, as robomimic (``data/demo_0/obs/agentview_image``, ``data/demo_0/actions``) and
  Minari (``episode_0/observations/pixels``, ``episode_0/actions``) write them: the groups are found by name
  (a trailing number orders them) or given with ``--episodes 'data/demo_*'``;
* flat datasets with episode boundaries, as D4RL writes them (``observations``, ``actions``, ``terminals``
  and/or ``timeouts``).

Which datasets are frames, actions and probe targets is chosen with ``--frames KEY --actions KEY --targets
KEY[,KEY...]`` (paths inside an episode group, or at the root for the flat layout). Without ``--frames``,
the one image dataset (uint8 of rank 3 or 4 per frame, preferring names with image/pixels/rgb) is taken;
``--actions`` defaults to ``actions``. Frames may be (n, H, W, C), (n, C, H, W) or (n, H, W); an episode's
actions are (n - 1, A) (Minari) or (n, A) (robomimic: the last one is not used); targets are (n, K) or (n,).
What the datasets mean (channel and target names, flip rules) comes from a meta.json of the same form as a
.npy folder's (``source.read_meta``): ``--meta FILE``, else ``X.meta.json`` beside ``X.hdf5`` when there is one.
Every problem is one line naming the file, the episode group and the key.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import numpy as np

from jepa_fast.data.source import (
    FRAME_DTYPES,
    EpisodeSource,
    apply_meta,
    check_finite,
    frame_layout,
    read_meta,
    regular_file,
)
from jepa_fast.errors import JepaFastError

IMAGE_HINTS = ("image", "pixels", "rgb", "frames", "camera")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise JepaFastError("reading HDF5 needs h5py: pip install 'jepa-fast[hdf5]' (or pip install h5py)") from None
    return h5py


def _number(name: str) -> tuple:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def meta_beside(path: Path) -> Path:
    """The meta.json an HDF5 file ``X.hdf5`` may have beside it: ``X.meta.json``."""
    return path.with_name(path.stem + ".meta.json")


class Hdf5Source(EpisodeSource):
    """Episodes of an HDF5 file: one group per episode, or flat datasets split at terminals/timeouts."""

    def __init__(self, path: Path, channels: str = "auto", frames: str | None = None, actions: str | None = None,
                 targets: str | None = None, target_names: str | None = None, episodes: str | None = None,
                 meta: str | Path | None = None):
        h5py = _h5py()
        path = Path(path)
        regular_file(path)
        try:
            self._f = h5py.File(path, "r")
        except OSError as e:
            raise JepaFastError(f"{path}: not a readable HDF5 file ({e})") from None
        self._actions_key = actions or "actions"
        self._target_keys = [k.strip() for k in targets.split(",") if k.strip()] if targets else []
        groups = self._episode_groups(path, episodes)
        if groups:
            self._groups = groups
            self._frames_key = frames or self._find_frames(path, groups[0])
            lengths = [self._dataset(path, g, self._frames_key).shape[0] for g in groups]
            first = self._dataset(path, groups[0], self._frames_key)
            for g in groups:
                d = self._dataset(path, g, self._frames_key)
                if d.shape[1:] != first.shape[1:]:
                    raise JepaFastError(f"{path}: episode {g.name} has frames {d.shape[1:]} but {groups[0].name} has "
                                        f"{first.shape[1:]}; every episode's frames must have one shape")
        else:  # the flat (D4RL) layout
            self._groups = None
            self._frames_key = frames or self._find_frames(path, self._f)
            first = self._dataset(path, self._f, self._frames_key)
            lengths = self._flat_lengths(path, first.shape[0])
        if first.dtype not in FRAME_DTYPES:
            raise JepaFastError(f"{path}: {self._frames_key} has dtype {first.dtype}; expected uint8 or float frames")
        (C, H, W), self.channels_last = frame_layout(first.shape[1:], f"{path}:{self._frames_key}", channels)
        lengths = np.asarray(lengths, dtype=np.int64)
        if (lengths < 2).any():
            e = int(np.nonzero(lengths < 2)[0][0])
            raise JepaFastError(f"{path}: episode {self._name(e)} has {lengths[e]} frame(s); an episode needs 2 or "
                                "more (drop it)")
        A, K = self._check_arrays(path, lengths)
        names = tuple(n.strip() for n in target_names.split(",")) if target_names else self._target_names(K)
        if len(names) != K:
            raise JepaFastError(f"--target-names: {len(names)} names for {K} target components")
        self.meta_file = Path(meta) if meta else meta_beside(path)
        if meta and not self.meta_file.exists():
            raise JepaFastError(f"--meta {meta}: no such file")
        info = read_meta(self.meta_file)
        if target_names and info.get("target_names") and tuple(info["target_names"]) != names:
            raise JepaFastError(f"--target-names {','.join(names)} and {self.meta_file}'s target_names "
                                f"{','.join(map(str, info['target_names']))} differ; give one")
        channel_names, names, flips = apply_meta(info, self.meta_file, C, A, names, None, {})
        super().__init__(path, lengths, (C, H, W), first.dtype, A, names, channel_names, flips)

    @property
    def where(self) -> str:
        return f"{self.path}:{self._frames_key}"

    @property
    def meta_path(self) -> Path | None:
        return self.meta_file if self.meta_file.exists() else None

    # layout -----------------------------------------------------------------------------------------
    def _episode_groups(self, path: Path, pattern: str | None) -> list:
        h5py = _h5py()
        found = []

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and name and (fnmatch.fnmatch(name, pattern) if pattern else
                                                         re.search(r"\d+$", name.split("/")[-1])
                                                         and self._actions_key in obj):
                found.append(name)

        self._f.visititems(visit)
        if pattern and not found:
            raise JepaFastError(f"{path}: no group matches --episodes {pattern!r}")
        if not pattern and found:  # the episode groups are siblings: keep those under the most common parent
            parents = [n.rsplit("/", 1)[0] if "/" in n else "" for n in found]
            top = max(set(parents), key=parents.count)
            found = [n for n, p in zip(found, parents) if p == top]
        return [self._f[n] for n in sorted(found, key=lambda n: _number(n.split("/")[-1]))]

    def _find_frames(self, path: Path, group) -> str:
        h5py = _h5py()
        cands = []
        group.visititems(lambda n, o: cands.append(n) if isinstance(o, h5py.Dataset) and o.ndim in (3, 4)
                         and o.dtype == np.uint8 else None)
        if not cands:
            raise JepaFastError(f"{path}: no image dataset (uint8, (n, H, W[, C])) in {group.name}; name the frames "
                                "with --frames KEY")
        if len(cands) > 1:
            hinted = [c for c in cands if any(h in c.lower() for h in IMAGE_HINTS)]
            if len(hinted) != 1:
                raise JepaFastError(f"{path}: several image datasets in {group.name} ({', '.join(cands[:4])}); choose "
                                    "one with --frames KEY")
            cands = hinted
        return cands[0]

    def _dataset(self, path: Path, group, key: str):
        h5py = _h5py()
        d = group.get(key)
        if not isinstance(d, h5py.Dataset):
            keys = []
            group.visititems(lambda n, o: keys.append(n) if isinstance(o, h5py.Dataset) else None)
            raise JepaFastError(f"{path}: {group.name} has no dataset {key!r} (it has: {', '.join(keys[:8])}); "
                                "choose the keys with --frames/--actions/--targets")
        return d

    def _flat_lengths(self, path: Path, F: int) -> list[int]:
        ends = np.zeros(F, bool)
        for key in ("terminals", "timeouts"):
            if key in self._f:
                flags = np.asarray(self._f[key]).astype(bool).reshape(-1)
                if len(flags) != F:
                    raise JepaFastError(f"{path}: {key} has {len(flags)} entries for {F} frames")
                ends |= flags
        stops = np.nonzero(ends)[0] + 1
        if not len(stops) or stops[-1] != F:
            stops = np.append(stops, F)
        return np.diff(np.concatenate([[0], stops])).tolist()

    def _name(self, e: int) -> str:
        return self._groups[e].name if self._groups is not None else str(e)

    def _check_arrays(self, path: Path, lengths: np.ndarray) -> tuple[int, int]:
        """Action size and target size; every episode's actions and targets have the right rank and length. The
        actions and targets are kept (they are small next to the frames): ``read`` takes them from here."""
        A = K = None
        self._actions, self._targets = [], []
        for e in range(len(lengths)):
            g, sl = self._parts_of(e, lengths)
            n = int(lengths[e])
            a = self._dataset(path, g, self._actions_key)
            rows = a.shape[0] if self._groups is not None else n
            if a.ndim not in (1, 2) or (self._groups is not None and rows not in (n - 1, n)):
                raise JepaFastError(f"{path}: {g.name}/{self._actions_key} has shape {a.shape}; expected ({n - 1}, A) "
                                    f"or ({n}, A) for {n} frames")
            A = A or (a.shape[1] if a.ndim == 2 else 1)
            act = np.asarray(a[sl], dtype=np.float32)
            check_finite(act, "actions", path, episode=self._name(e))
            self._actions.append(act.reshape(len(act), -1))
            k, parts = 0, []
            for key in self._target_keys:
                t = self._dataset(path, g, key)
                if t.ndim not in (1, 2) or (self._groups is not None and t.shape[0] != n):
                    raise JepaFastError(f"{path}: {g.name}/{key} has shape {t.shape}; expected ({n}, K) or ({n},): "
                                        "one target per frame")
                values = np.asarray(t[sl], dtype=np.float32)
                check_finite(values, f"targets {key}", path, episode=self._name(e))
                parts.append(values.reshape(n, -1))
                k += t.shape[1] if t.ndim == 2 else 1
            if parts:
                self._targets.append(np.concatenate(parts, axis=1))
            K = k
        return int(A), int(K)

    def _parts_of(self, e: int, lengths: np.ndarray):
        if self._groups is not None:
            return self._groups[e], slice(None)
        a = int(np.sum(lengths[:e]))
        return self._f, slice(a, a + int(lengths[e]))

    def _target_names(self, K: int) -> tuple[str, ...]:
        names = []
        g = self._groups[0] if self._groups is not None else self._f
        for key in self._target_keys:
            d = g[key]
            width = d.shape[1] if d.ndim == 2 else 1
            base = key.split("/")[-1]
            names += [base] if width == 1 else [f"{base}_{i}" for i in range(width)]
        return tuple(names)

    # reading --------------------------------------------------------------------------------------
    def read(self, e0: int, e1: int, out: np.ndarray | None = None):
        C, H, W = self.frame_shape
        total = int(self.lengths[e0:e1].sum())
        if out is None:
            out = np.empty((total, C, H, W), dtype=self.dtype)
        actions, targets, a = [], [] if self._target_keys else None, 0
        for e in range(e0, e1):
            g, sl = self._parts_of(e, self.lengths)
            n = int(self.lengths[e])
            x = np.asarray(g[self._frames_key][sl])
            out[a:a + n] = np.moveaxis(x, -1, 1) if self.channels_last else (x[:, None] if x.ndim == 3 else x)
            actions.append(self._actions[e])
            if targets is not None:
                targets.append(self._targets[e])
            a += n
        return out[:total], actions, targets

    def fingerprint(self) -> dict:
        out = {}
        for f in (self.path, self.meta_file):
            if f.exists():
                st = f.stat()
                out[f.name] = [st.st_size, st.st_mtime_ns]
        return {**out, "keys": [self._frames_key, self._actions_key, *self._target_keys]}

    def attrs(self) -> dict:
        meta = {"meta": str(self.meta_path.resolve())} if self.meta_path else {}
        return {"source": {"path": str(self.path.resolve()), "kind": "hdf5", "frames": self._frames_key,
                           "actions": self._actions_key, "targets": self._target_keys, **meta}}
