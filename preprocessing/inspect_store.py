"""Describe (and optionally verify) packed stores: ``python -m preprocessing.inspect_store DST.zarr``.

The same as ``jepa-fast inspect``.
"""

from __future__ import annotations

import argparse
import sys

from jepa_fast.cli import add_inspect_arguments, run_command, run_inspect


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocessing.inspect_store", description=__doc__)
    add_inspect_arguments(p)
    return run_command(run_inspect, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
