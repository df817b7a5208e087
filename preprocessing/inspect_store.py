"""Describe (and optionally verify) packed stores: ``python -m preprocessing.inspect_store DST.zarr``.

The same as ``jepa-fast inspect``.
"""

from __future__ import annotations

import argparse
import sys

from jepa_fast.cli import add_inspect_arguments, run_inspect
from jepa_fast.errors import JepaFastError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocessing.inspect_store", description=__doc__)
    add_inspect_arguments(p)
    try:
        run_inspect(p.parse_args(argv))
    except JepaFastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
