"""Pack raw split folders into jepa-fast Zarr stores: ``python -m preprocessing.pack SRC DST``.

The same as ``jepa-fast pack``; the packer lives in ``jepa_fast.data.pack``.
"""

from __future__ import annotations

import argparse
import sys

from jepa_fast.cli import add_pack_arguments, run_command, run_pack


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocessing.pack", description=__doc__)
    add_pack_arguments(p)
    return run_command(run_pack, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
