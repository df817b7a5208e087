"""One writer at a time: an exclusive lock on an output (run folder, store, dataset root, file) for a whole write.

The lock is ``flock`` on a small file next to the output (``.<name>.lock`` in its parent folder), so
the kernel releases it when the holder dies, even by kill -9: a lock file left behind by a dead
process never blocks, and the next writer clears it with a note. The file records the holder (pid,
host, start time, command) so that a second writer is refused with one line that names it.

* Locks are keyed on the output's resolved path: a symlink to a folder and the folder itself are one
  output, so two writers cannot share a folder through a link.
* A writer into a folder also takes a shared lock on every enclosing folder that has a lock file, so
  a writer of the enclosing folder (a dataset root being packed) and a writer inside it are refused
  whichever starts second.
* Not re-entrant: a second ``exclusive`` on the same output, even from the same process, is refused
  (a caller that holds the lock passes that on, e.g. ``atomic_dir(..., locked=True)``).
Advisory, like every flock: it orders jepa-fast's own writers; it does not stop other programs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from jepa_fast.errors import JepaFastError


def resolved(output: Path) -> Path:
    """The output's path with symlinks resolved (the parts that exist), the key of its lock."""
    return Path(output).expanduser().resolve()


def lock_path(output: Path) -> Path:
    output = resolved(output)
    return output.parent / f".{output.name}.lock"


def _holder(f) -> dict:
    try:
        f.seek(0)
        return json.loads(f.read() or "{}")
    except (ValueError, OSError):
        return {}


def _acquire(output: Path, path: Path, what: str):
    """Open and flock the lock file; retried if the file was replaced between open and flock (a holder
    unlinks it on release), so two writers can never hold locks on different inodes of one path."""
    for _ in range(100):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")
        except OSError as e:
            raise JepaFastError(f"{output}: cannot create its lock file {path} ({e.strerror}); choose a writable "
                                "destination") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            h = _holder(f)
            f.close()
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started"])) if "started" in h else "?"
            raise JepaFastError(f"{what} {output} is being written by another jepa-fast (pid {h.get('pid', '?')} on "
                                f"{h.get('host', '?')}, since {since}: {h.get('command', '?')}); wait for it to finish "
                                "or stop it") from None
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return f
        f.close()
    raise JepaFastError(f"{output}: could not take its lock {path}; try again")


@contextlib.contextmanager
def exclusive(output: Path, what: str = "output") -> Iterator[None]:
    """Hold the write lock of ``output`` for the block; a second holder gets a one-line JepaFastError."""
    key = resolved(output)
    with contextlib.ExitStack() as stack:
        for parent in key.parents:
            if lock_path(parent).exists():
                stack.enter_context(_shared(parent, output, what))
        path = lock_path(key)
        f = stack.enter_context(_acquire(output, path, what))
        stale = _holder(f)
        if stale.get("pid") and stale.get("pid") != os.getpid():
            print(f"note: cleared a stale lock on {output} left by pid {stale['pid']} on {stale.get('host', '?')} "
                  "(that process is gone)", file=sys.stderr)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                            "command": " ".join(sys.argv)[:200]}))
        f.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # still holding the flock: a waiter that opened this inode will see it replaced


@contextlib.contextmanager
def _shared(parent: Path, output: Path, what: str) -> Iterator[None]:
    """A shared lock on an enclosing folder's lock file, refused while a writer of that folder holds it."""
    path = lock_path(parent)
    try:
        f = open(path)
    except OSError:  # released (and removed) since we looked: nobody writes the folder now
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            h = _holder(f)
            raise JepaFastError(f"{what} {output} is inside {parent}, which is being written by another jepa-fast "
                                f"(pid {h.get('pid', '?')}: {h.get('command', '?')}); wait for it to finish, or write "
                                "elsewhere") from None
        yield
