"""Shared helpers for the bench scripts: timing, machine/version facts, the table and the JSON line.

Every bench prints a readable table and, as its very last line, one JSON object with its figures
(ratios are named ``<fast>_vs_<baseline>``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib import metadata


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "zarr", "numcodecs", "nvidia-dali-cuda120", "accelerate", "triton"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "-"
    try:
        out["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=os.path.dirname(__file__)).stdout.strip() or "-"
    except OSError:
        out["git"] = "-"
    return out


def machine() -> dict[str, str]:
    info = {"cpu_cores": str(os.cpu_count()), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        from jepa_fast.hardware import cpu_has_native_bf16

        info["torch_cpu_kernels"] = torch.backends.cpu.get_cpu_capability()
        info["cpu_native_bf16"] = str(cpu_has_native_bf16())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None
           ) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-+-".join("-" * widths[c] for c in columns))
    for r in rows:
        print(" | ".join(_fmt(r.get(c, "")).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_json(figures: dict) -> None:
    """The bench's last line: one JSON object."""
    print(json.dumps(figures, sort_keys=True))


def header(title: str) -> None:
    print(f"# {title}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()))
    print("versions: " + ", ".join(f"{k}={v}" for k, v in versions().items()))
    print()
