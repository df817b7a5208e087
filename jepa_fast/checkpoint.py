"""Checkpoints: everything needed to continue a run exactly, written atomically, read without running code.

A checkpoint is a folder ``<run>/checkpoints/step_0001234/`` holding

    state.pt       model (unwrapped from DDP and torch.compile; includes the EMA target projector),
                   optimizer, scheduler, step, sampler position, the config as asked for, what this
                   machine resolved it to (precision, compile, threads, workers), and the training
                   data's fingerprint
    rng_<rank>.pt  each process's torch / CUDA / numpy / python RNG states (tensors and plain values)

Writing: each file is serialised in memory, then written into ``.step_0001234.tmp`` and the folder is
renamed when complete; ``latest`` names the newest. The previous checkpoint stays until the new one is
complete, and a full disk ends with one line that names the file and the space it needs.

Reading: ``torch.load(weights_only=True)``: tensors, containers and plain values only, so a file that
pickles code (``os.system``...) is refused instead of run. Older checkpoints stored numpy arrays in
their RNG files; those few numpy globals are allow-listed. A malformed checkpoint (not a dict, missing
keys, a garbage RNG file) is one line naming the file.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from jepa_fast import atomic, lock
from jepa_fast.config import flat_config, run_config_from_dict, to_dict
from jepa_fast.errors import JepaFastError
from jepa_fast.spec import DataSpec

log = logging.getLogger(__name__)


def _numpy_globals() -> list:
    """What older RNG files (numpy's MT19937 state as an array) need beyond tensors: array reconstruction only."""
    out = [np.ndarray, np.dtype]
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            out.append(__import__(name, fromlist=["_reconstruct"])._reconstruct)
        except (ImportError, AttributeError):
            continue
    out += [getattr(np.dtypes, n) for n in ("UInt32DType", "Int64DType", "Float64DType") if hasattr(np, "dtypes")]
    return out


def ckpt_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


# ---------------------------------------------------------------------------------------------
# RNG states as tensors and plain values (loadable with weights_only=True)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    else:  # written by an older version: numpy's own tuple
        np.random.set_state(n)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# writing


def _serialize(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _write_checkpoint_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write(path: Path, data: bytes, run: Path, need: int) -> None:
    """Write one checkpoint file; an OSError becomes one line naming the file (and, on a full disk, the
    ``need`` bytes the whole checkpoint takes, what is free, and the last good checkpoint)."""
    try:
        _write_checkpoint_file(path, data)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise JepaFastError(f"{path}: {e.strerror or 'No space left on device'}: this checkpoint needs "
                                f"{need / 1e6:.1f} MB and {free / 1e6:.1f} MB are free; free space, then continue "
                                f"with --resume (last good checkpoint: {latest(run) or 'none'})") from None
        raise OSError(e.errno, e.strerror, str(path)) from None


def save(run: Path, step: int, state: dict, rank: int, world_size: int, barrier, keep: int) -> Path | None:
    """Collective: every rank writes its RNG state, rank 0 writes the rest and publishes the folder.
    The previous checkpoints are removed only once this one is complete."""
    root = ckpt_dir(run)
    name = f"step_{step:07d}"
    tmp = root / f".{name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    final = root / name
    try:
        rng = _serialize(rng_state())
        blob = _serialize({**state, "world_size": world_size}) if rank == 0 else b""
        need = len(blob) + world_size * len(rng)
        _write(tmp / f"rng_{rank}.pt", rng, run, need)
        barrier()
        if rank == 0:
            _write(tmp / "state.pt", blob, run, need)
    except BaseException:  # a full disk, a kill: never leave a half-written checkpoint behind
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank == 0:
        atomic.replace_path(tmp, final)
        atomic.atomic_write_text(root / "latest", name + "\n")
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final if rank == 0 else None


def size_estimate(model: torch.nn.Module) -> int:
    """Bytes a checkpoint of this model takes (weights + AdamW's two moments + a margin)."""
    return 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (1 << 20)


# ---------------------------------------------------------------------------------------------
# reading


def latest(run: Path) -> Path | None:
    """The newest complete checkpoint of a run folder: the one ``latest`` names, or (if that pointer is
    missing or damaged) the newest complete step folder."""
    root = ckpt_dir(run)
    pointer = root / "latest"
    if pointer.exists():
        try:
            name = pointer.read_text().strip()
        except (UnicodeDecodeError, OSError):
            name = ""
        p = root / name
        if name.startswith("step_") and "/" not in name and (p / "state.pt").exists():
            return p
        print(f"note: {pointer} does not name a complete checkpoint; using the newest complete one", file=sys.stderr)
    done = sorted(p for p in root.glob("step_*") if (p / "state.pt").exists())
    return done[-1] if done else None


def load_file(f: Path, what: str):
    """torch.load with weights_only=True: one line naming the file for anything else than plain data."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(e))
        if found:  # a callable or class weights_only refuses: loading it would run code
            raise JepaFastError(f"{f}: refused: this {what} holds more than tensors and plain values (it names "
                                f"{found.group(1)}); jepa-fast never writes such files: do not load it") from None
        raise JepaFastError(f"{f}: unreadable {what} (not a torch file of plain data); it is damaged: use another "
                            "checkpoint") from None
    except Exception as e:  # truncated zip, not a torch file at all, ...
        raise JepaFastError(f"{f}: unreadable {what} ({type(e).__name__}: {str(e).strip()[:120]}); "
                            "it is damaged: use another checkpoint") from None


STATE_KEYS = {"model": dict, "config": dict, "step": int}
RESUME_KEYS = {"optimizer": dict, "scheduler": dict, "sampler": dict, "world_size": int}


def _check_keys(state, f: Path, keys: dict) -> None:
    if not isinstance(state, dict):
        raise JepaFastError(f"{f}: not a jepa-fast checkpoint (it holds a {type(state).__name__}, not a dict)")
    for key, kind in keys.items():
        if key not in state:
            raise JepaFastError(f"{f}: not a complete jepa-fast checkpoint (no {key!r})")
        if not isinstance(state[key], kind):
            raise JepaFastError(f"{f}: {key!r} is a {type(state[key]).__name__}, expected a {kind.__name__}; the "
                                "checkpoint is damaged")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise JepaFastError(f"{f}: 'model' holds values that are not tensors; the checkpoint is damaged")


def load(path: Path, rank: int, for_resume: bool = False) -> tuple[dict, dict | None]:
    """(state, this rank's RNG state) of a checkpoint folder. The RNG file is required to resume (without
    it the resumed run would silently differ from an uninterrupted one); otherwise it is not read."""
    path = Path(path)
    f = path / "state.pt"
    if not f.exists():
        raise JepaFastError(f"{path}: not a checkpoint (no state.pt)")
    state = load_file(f, "checkpoint")
    _check_keys(state, f, {**STATE_KEYS, **(RESUME_KEYS if for_resume else {})})
    if not for_resume:
        return state, None
    rng_file = path / f"rng_{rank}.pt"
    if not rng_file.exists():
        raise JepaFastError(f"{rng_file}: missing; a resumed run needs every process's RNG state to continue "
                            "exactly. Restore the file, or start a new run from these weights with --init")
    rng = load_file(rng_file, "RNG state")
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and "numpy" in rng
            and "python" in rng):
        raise JepaFastError(f"{rng_file}: not an RNG state (expected torch, numpy and python entries); it is damaged")
    return state, rng


def restore(run: Path, rank: int, world: int, config: dict, model, optimizer, scheduler, sampler
            ) -> tuple[int, dict]:
    """Load the latest checkpoint of ``run`` into these live objects (and this rank's RNG state), after
    checking that it may continue a run of ``config`` with ``world`` processes.

    Returns (its step, the state it was loaded from: ``resolved``, ``data`` and the rest)."""
    found = latest(run)
    if found is None:
        raise JepaFastError(f"--resume: no checkpoint in {ckpt_dir(run)}")
    probe, _ = load(found, rank)
    if "optimizer" not in probe and "imported_from" in probe:
        raise JepaFastError(f"{found}: holds model weights only (imported), nothing to resume; start a fine-tune "
                            f"with --init {run} and another --out")
    state, rng = load(found, rank, for_resume=True)
    check_unchanged(state["config"], config, found)
    if state["world_size"] != world:
        raise JepaFastError(f"{found}: saved with {state['world_size']} processes, resuming with {world}; "
                            "resume with the same number")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise JepaFastError(f"{found / 'state.pt'}: does not fit this run ({str(e).strip().splitlines()[0][:160]})"
                            ) from None
    sampler.load_state_dict(state["sampler"])
    set_rng_state(rng)
    log.info("resumed from %s at step %d", found, state["step"])
    return state["step"], state


def recover(run: Path) -> None:
    """Put back a run folder that an ``--overwrite`` killed before its first checkpoint set aside (a no-op
    while a trainer holds the folder, or when nothing was set aside)."""
    run = Path(run)
    if not any(run.parent.glob(f".{run.name}.replaced-*")) and not any(run.parent.glob(f".{run.name}.discard-*")):
        return
    try:
        with lock.exclusive(run, "run folder"):
            atomic.recover_asides(run, lambda d: latest(d) is not None)
    except JepaFastError:  # a live trainer holds it: its own failure path restores the old run
        pass


def load_model_weights(path: Path) -> tuple[dict, dict, DataSpec]:
    """(model state dict, run config dict, data spec) of a checkpoint folder, or of a run folder's latest
    checkpoint. Checkpoints written before data specs hold the two-rooms model."""
    path = Path(path)
    if path.is_dir() and not (path / "state.pt").exists():
        recover(path)
    if not path.exists():
        raise JepaFastError(f"{path}: no such checkpoint or run folder")
    if path.is_dir() and not (path / "state.pt").exists():
        found = latest(path)
        if found is None:
            raise JepaFastError(f"{path}: no checkpoint found (expected {ckpt_dir(path)}/step_*/state.pt)")
        path = found
    state, _ = load(path if path.is_dir() else path.parent, 0)
    return state["model"], state["config"], DataSpec.from_dict(state.get("spec"))


RESUME_MAY_CHANGE = {"preset", "train.log_every", "train.save_every", "train.keep_checkpoints", "train.compile",
                     "train.threads", "data.workers", "data.prefetch", "data.loader", "data.resident"}
"""Fields a resumed run may change: they affect speed and bookkeeping, not what is computed."""


def check_unchanged(saved: dict, now: dict, where: Path) -> None:
    """Refuse to resume with changed settings: the checkpoint's schedule, data order and model would not
    be what config.json then claims."""
    a, b = flat_config(to_dict(run_config_from_dict(saved))), flat_config(now)  # older names and defaults filled in
    changed = [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b))
               if k not in RESUME_MAY_CHANGE and a.get(k) != b.get(k)]
    if changed:
        raise JepaFastError(f"--resume: {where} was trained with other settings ({'; '.join(changed[:5])}"
                            f"{'; ...' if len(changed) > 5 else ''}); resume without changing them, or start a new run "
                            "from its weights with --init")
