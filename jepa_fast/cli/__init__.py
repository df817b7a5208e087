"""``jepa-fast``: the command line. Each subcommand is a thin wrapper over a library function.

    cli/data.py   generate, show, pack, inspect
    cli/run.py    train, probe, plan, import-reference, export-reference, bench, demo

Errors meant for users (``JepaFastError``, including bad config values) are printed as one line,
``error: ...``, with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from jepa_fast.cli import data, run
from jepa_fast.cli.data import add_inspect_arguments, add_pack_arguments, run_inspect, run_pack
from jepa_fast.cli.run import config_from_args
from jepa_fast.errors import JepaFastError

__all__ = ["add_inspect_arguments", "add_pack_arguments", "build_parser", "config_from_args", "main",
           "run_command", "run_inspect", "run_pack"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jepa-fast",
        description="High-throughput trainer for action-conditioned JEPA world models on two-rooms data.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_commands(sub)
    run.add_commands(sub)
    return parser


def run_command(func, args) -> int:
    """Run an entry point's function: user errors become one line on stderr and exit status 2."""
    try:
        func(args)
    except JepaFastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no: a full disk, no permission, a read-only mount, ...
        print(f"error: {describe_os_error(e, getattr(args, 'command', None) or 'pack')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


AFTER_FREEING = {"pack": "free space, then run the same pack with --resume (it continues after its last block)",
                 "train": "free space, then continue with --resume (from the last checkpoint)",
                 "demo": "free space, then run the demo again (finished stages are kept)"}
"""What to do after a full disk, per command (the others simply run again)."""


def describe_os_error(e: OSError, command: str = "") -> str:
    """One line for a file-system error: the file, what the system said, and what to do."""
    import errno
    import shutil
    from pathlib import Path

    where = e.filename or "the output"
    full = AFTER_FREEING.get(command, "free space and run again")
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and e.filename:
        probe = Path(e.filename).absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            full = f"{shutil.disk_usage(probe).free / 1e6:,.0f} MB free there; {full}"
        except OSError:
            pass
    hint = {errno.ENOSPC: f"the disk is full: {full}",
            errno.EDQUOT: f"the disk quota is exceeded: {full}",
            errno.EACCES: "no permission to write there: choose another destination",
            errno.EPERM: "no permission to write there: choose another destination",
            errno.EROFS: "a read-only file system: choose another destination",
            errno.ENOTDIR: "a part of the path is a file, not a folder: choose another destination",
            errno.EISDIR: "that is a folder, not a file"}.get(e.errno, "check the path and the disk")
    return f"{where}: {e.strerror or e}; {hint}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
