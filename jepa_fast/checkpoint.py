"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a folder ``<run>/checkpoints/step_0001234/`` holding

    state.pt       model (unwrapped from DDP and torch.compile; includes the EMA target projector),
                   optimizer, scheduler, step, sampler position, the config as asked for
                   and what this machine resolved it to (precision, compile, threads, workers)
    rng_<rank>.pt  each process's torch / CUDA / numpy / python RNG states

It is written into ``.step_0001234.tmp`` and renamed when complete; ``latest`` names the newest.
Only complete checkpoints are ever read.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from jepa_fast import atomic
from jepa_fast.config import flat_config
from jepa_fast.errors import JepaFastError

log = logging.getLogger(__name__)


def ckpt_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run: Path, step: int, state: dict, rank: int, world_size: int, barrier, keep: int) -> Path | None:
    """Collective: every rank writes its RNG state, rank 0 writes the rest and publishes the folder."""
    root = ckpt_dir(run)
    name = f"step_{step:07d}"
    tmp = root / f".{name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    final = root / name
    try:
        torch.save(rng_state(), tmp / f"rng_{rank}.pt")
        barrier()
        if rank == 0:
            torch.save({**state, "world_size": world_size}, tmp / "state.pt")
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


def latest(run: Path) -> Path | None:
    root = ckpt_dir(run)
    pointer = root / "latest"
    if pointer.exists():
        p = root / pointer.read_text().strip()
        if (p / "state.pt").exists():
            return p
    done = sorted(p for p in root.glob("step_*") if (p / "state.pt").exists())
    return done[-1] if done else None


def load(path: Path, rank: int, map_location="cpu") -> tuple[dict, dict | None]:
    """(state, this rank's RNG state or None)."""
    path = Path(path)
    f = path / "state.pt"
    if not f.exists():
        raise JepaFastError(f"{path}: not a checkpoint (no state.pt)")
    try:
        state = torch.load(f, map_location=map_location, weights_only=False)
    except Exception as e:
        raise JepaFastError(f"{f}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    rng_file = path / f"rng_{rank}.pt"
    rng = torch.load(rng_file, weights_only=False) if rng_file.exists() else None
    return state, rng


def restore(run: Path, rank: int, world: int, config: dict, model, optimizer, scheduler, sampler
            ) -> tuple[int, dict | None]:
    """Load the latest checkpoint of ``run`` into these live objects (and this rank's RNG state), after
    checking that it may continue a run of ``config`` with ``world`` processes.

    Returns (its step, the machine resolution it was saved with, or None if it predates that record)."""
    found = latest(run)
    if found is None:
        raise JepaFastError(f"--resume: no checkpoint in {ckpt_dir(run)}")
    state, rng = load(found, rank)
    if "optimizer" not in state:
        raise JepaFastError(f"{found}: holds model weights only (imported), nothing to resume; start a fine-tune "
                            f"with --init {run} and another --out")
    check_unchanged(state["config"], config, found)
    if state["world_size"] != world:
        raise JepaFastError(f"{found}: saved with {state['world_size']} processes, resuming with {world}; "
                            "resume with the same number")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    if rng is not None:
        set_rng_state(rng)
    log.info("resumed from %s at step %d", found, state["step"])
    return state["step"], state.get("resolved")


def load_model_weights(path: Path) -> tuple[dict, dict]:
    """(model state dict, run config dict) of a checkpoint folder, a run folder (its latest) or a .pt."""
    path = Path(path)
    if not path.exists():
        raise JepaFastError(f"{path}: no such checkpoint or run folder")
    if path.is_dir() and not (path / "state.pt").exists():
        found = latest(path)
        if found is None:
            raise JepaFastError(f"{path}: no checkpoint found (expected {ckpt_dir(path)}/step_*/state.pt)")
        path = found
    state, _ = load(path if path.is_dir() else path.parent, 0)
    return state["model"], state["config"]


RESUME_MAY_CHANGE = {"preset", "train.log_every", "train.save_every", "train.keep_checkpoints", "train.compile",
                     "train.threads", "data.workers", "data.prefetch", "data.loader", "data.resident"}
"""Fields a resumed run may change: they affect speed and bookkeeping, not what is computed."""


def check_unchanged(saved: dict, now: dict, where: Path) -> None:
    """Refuse to resume with changed settings: the checkpoint's schedule, data order and model would not
    be what config.json then claims."""
    a, b = flat_config(saved), flat_config(now)
    changed = [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b))
               if k not in RESUME_MAY_CHANGE and a.get(k) != b.get(k)]
    if changed:
        raise JepaFastError(f"--resume: {where} was trained with other settings ({'; '.join(changed[:5])}"
                            f"{'; ...' if len(changed) > 5 else ''}); resume without changing them, or start a new run "
                            "from its weights with --init")
