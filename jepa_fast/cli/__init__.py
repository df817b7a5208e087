"""``jepa-fast``: the command line. Each subcommand is a thin wrapper over a library function.

    cli/data.py   generate, show, pack, inspect
    cli/run.py    train, probe, import-reference, export-reference, bench, demo

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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
