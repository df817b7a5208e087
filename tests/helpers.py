"""Helpers the tests share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path


def one_line(capsys, *needles: str) -> str:
    """The command printed exactly one 'error: ...' line, no traceback, containing every needle; returns it."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (relative name -> bytes): to prove a folder came through untouched."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
