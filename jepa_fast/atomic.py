"""Atomic outputs: write aside, then rename, so an interrupted job never leaves a half-written result.

Used by every command that writes something a later stage reads: ``generate`` (dataset folders),
``pack`` (Zarr stores), ``train`` (checkpoints) and ``probe`` (metrics).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jepa_fast import lock
from jepa_fast.errors import JepaFastError


def check_destination(path: Path, overwrite: bool, what: str = "output") -> None:
    """Refuse an existing, non-empty destination unless overwrite is set."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise JepaFastError(f"{what} {path} exists and is a file; choose another path or delete it")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise JepaFastError(f"{what} {path} exists and is not empty; pass --overwrite to replace it")


def check_apart(output: Path, inputs: dict[str, Path | None], what: str = "output") -> None:
    """Refuse an output that is one of the command's inputs, lies inside one, or contains one (symlinks
    resolved): writing or replacing it would destroy the input."""
    out = lock.resolved(output)
    for name, given in inputs.items():
        if given is None:
            continue
        src = lock.resolved(given)
        relation = "is" if out == src else "is inside" if src in out.parents else "contains" if out in src.parents \
            else None
        if relation:
            raise JepaFastError(f"{what} {output} {relation} the {name} {given}; writing there would destroy the "
                                "input: choose an output outside it")


def check_free_space(path: Path, needed: int, hint: str) -> None:
    """Refuse to start a job that needs more disk than the volume of ``path`` has free."""
    probe = Path(path).absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    margin = 64 << 20
    if needed + margin > free:
        raise JepaFastError(f"{path}: needs {needed / 1e9:.2f} GB but only {free / 1e9:.2f} GB are free "
                            f"on that disk; {hint}")


def _umask() -> int:
    """The process umask, read without changing it (os.umask(0) would race with threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh folder next to ``path`` (same filesystem, so the final rename is atomic), with the mode a
    plain mkdir would give (mkdtemp makes 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{tag}-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def clear_stale_temps(path: Path, tag: str = "tmp") -> None:
    """Remove temp folders of ``path`` left by a killed writer; call only while holding ``path``'s lock
    (any live writer would hold it, so what is there now is stale)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for stale in path.parent.glob(f".{path.name}.{tag}-*"):
        print(f"note: removing {stale}, left by an interrupted run", file=sys.stderr)
        shutil.rmtree(stale, ignore_errors=True)


def set_aside(dest: Path) -> Path:
    """Move ``dest`` aside (``.<name>.replaced-<pid>`` next to it) and leave an empty ``dest``: the old output
    waits there until the new one commits (``discard_aside``) or fails (``restore_aside``)."""
    dest = Path(dest)
    aside = dest.with_name(f".{dest.name}.replaced-{os.getpid()}")
    os.replace(dest, aside)
    dest.mkdir()
    return aside


def discard_aside(aside: Path) -> None:
    """The new output is committed: the old one goes (renamed first, so a kill mid-delete is not mistaken
    for a failed replacement)."""
    doomed = aside.with_name(aside.name.replace(".replaced-", ".discard-"))
    os.replace(aside, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def restore_aside(dest: Path, aside: Path) -> None:
    """The new output failed before it committed: put the old one back."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    os.replace(aside, dest)
    print(f"note: {dest} is back as it was (the run that was to replace it stopped before its first checkpoint)",
          file=sys.stderr)


def recover_asides(dest: Path, committed) -> None:
    """Finish what killed replacements left next to ``dest`` (call holding ``dest``'s lock): an old output
    whose replacement never committed (``committed(dest)`` false) is restored; any other is removed."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    for doomed in dest.parent.glob(f".{dest.name}.discard-*"):
        shutil.rmtree(doomed, ignore_errors=True)
    for aside in sorted(dest.parent.glob(f".{dest.name}.replaced-*")):
        if committed(dest):
            discard_aside(aside)
        else:
            restore_aside(dest, aside)


def replace_path(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest``, replacing whatever was there, with a window of at most one rename."""
    dest = Path(dest)
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: Path, overwrite: bool = False, what: str = "output", locked: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``dest``, on any error (or SIGTERM) it is removed.

    Holds ``dest``'s write lock throughout (one writer at a time; ``locked``: the caller already holds
    it) and first clears temp folders that a killed writer left behind."""
    dest = Path(dest)
    with contextlib.nullcontext() if locked else lock.exclusive(dest, what):
        check_destination(dest, overwrite, what)
        clear_stale_temps(dest)
        tmp = temp_sibling(dest)
        try:
            with sigterm_as_exit():
                yield tmp
            replace_path(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def atomic_write_bytes(dest: Path, data: bytes, fsync: bool = True) -> None:
    """Write a small file atomically (temp file in the same folder, optional fsync, rename)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the mode a plain open() would give (mkstemp makes 0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(dest)) from None  # name the file (a failed write() does not)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one whole line to a log (JSONL): a write cut short (a full disk) is undone, so the file never
    ends in half a line, and the OSError names the file."""
    with open(path, "a") as f:
        pos = f.tell()
        try:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
        except OSError as e:
            with contextlib.suppress(OSError):
                f.truncate(pos)
            raise OSError(e.errno, e.strerror, str(path)) from None


def atomic_write_text(dest: Path, text: str) -> None:
    atomic_write_bytes(dest, text.encode())


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit inside the block so ``finally``/cleanup code runs (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        # somebody (e.g. the trainer) already handles SIGTERM: leave their handler in place
        yield
        return

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
