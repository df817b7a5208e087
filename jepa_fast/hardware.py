"""Machine-dependent defaults, resolved once, in one place: precision, compile, CPU threads, loader workers,
the allocator.

Each ``auto`` setting is decided here from what the hardware can do, with a one-line reason that the
trainer prints in its header. The run's ``config.json`` keeps what was asked for (``auto`` included);
what this machine resolved it to goes to ``resolved.json`` and into every checkpoint, and a resumed
run resolves ``auto`` again on its own machine (saying what changed):

    precision  bf16 on a CUDA device that supports it; fp16 (with loss scaling) on an older CUDA device;
               on a CPU, bf16 only where the CPU computes it natively (AVX512_BF16 or AMX, and torch
               dispatching AVX-512 kernels), else fp32 ('no'): emulated bf16 autocast measured 4.5x
               slower than fp32 per step (ours-small, batch 64, 2 cores: 2,181 vs 478 ms)
    compile    on for CUDA. On a CPU: on for a bf16 run (native bf16) of at least 1M frames, off otherwise.
               Eager bf16 with channels-last spends 37% of the step in BatchNorm's backward (a slow path);
               inductor fuses BatchNorm and ReLU into its own kernels. 2-core Intel Xeon (AMX), bf16:
               reference model, batch 64, 293 -> 179 ms/step (1.64x; 3.11x the reference loop); `ours`,
               batch 512, 2,538 -> 1,581 ms/step. Compilation costs ~83 s cold (~9 s from inductor's
               cache), paid back after ~0.7M frames. fp32 on a 2-core Zen 3 (AVX2): no faster than eager.
               bench_train --variant compiled=train.compile=on measures it on another machine
    threads    torch's intra-op threads: OMP_NUM_THREADS when set, else the cores this process may use
               divided among the processes of this machine
    workers    loader threads (torch loader) or Python workers (DALI): 1 on a CPU device, where decoding
               a batch is ~1% of a step and every extra thread takes a core from the step; on a GPU
               machine, half the cores of this process, at most 8
    malloc     on Linux with glibc, freed blocks of up to 1 GiB stay in the process (mallopt M_MMAP_THRESHOLD
               and M_TRIM_THRESHOLD): by default glibc maps every block above 32 MiB afresh and unmaps it when
               freed, so each of a CPU step's large activations (batch 64 x 17 frames x 8 x 33 x 33 fp32 =
               38 MiB; 8x that at batch 512) costs a page fault per 4 KiB page, every step (on a 2-core Zen 3
               VM, 75% of the CPU in the kernel). `ours` (batch 512), 12 steps twice each, interleaved, on
               that VM: 67.2 / 67.6 s default vs 56.1 / 56.9 s kept (1.19x for the whole run, start-up
               included). jepa-fast's step of the reference model at batch 64 (bench_train, AVX2, separate runs
               on a noisy VM): 312 ms default, 239-245 ms kept. Left alone when MALLOC_MMAP_THRESHOLD_ is set or
               JEPA_FAST_MALLOC=default
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import os
import re
import sys

import torch

log = logging.getLogger(__name__)


def resolve_device(device: str | None) -> torch.device:
    """A command's --device: cpu, cuda or cuda:N that exists on this machine (one line otherwise); None = cuda
    when present, else cpu."""
    from jepa_fast.errors import JepaFastError

    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise JepaFastError(f"--device {device}: use cpu, cuda or cuda:N")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise JepaFastError(f"--device {device}: no CUDA device here; use --device cpu")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise JepaFastError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def cpu_has_native_bf16() -> bool:
    """Does this CPU compute bf16 natively, with torch dispatching kernels that use it?

    torch.backends.cpu.get_cpu_capability() names the ISA torch dispatches to ('AVX512', 'AVX2', ...;
    lowered by ATEN_CPU_CAPABILITY), and torch.cpu reports the bf16 instructions (AVX512_BF16, AMX).
    """
    cap = torch.backends.cpu.get_cpu_capability()
    if not cap.startswith("AVX512"):
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(precision, why) for train.precision = auto | bf16 | fp16 | no on ``device``."""
    cuda = device.type == "cuda"
    if requested == "auto":
        if cuda:
            if torch.cuda.is_bf16_supported():
                return "bf16", "auto: CUDA bf16"
            return "fp16", "auto: CUDA without bf16, fp16 with loss scaling"
        if cpu_has_native_bf16():
            return "bf16", "auto: CPU with native bf16"
        return "no", "auto: CPU without native bf16"
    if requested == "bf16" and not cuda and not cpu_has_native_bf16():
        log.warning("train.precision=bf16 on a CPU without native bf16: autocast emulates it, several times "
                    "slower than fp32 (train.precision=auto picks fp32 here)")
        return "bf16", "requested; emulated on this CPU"
    if requested == "fp16" and not cuda:
        log.warning("train.precision=fp16 needs a CUDA device (Accelerate applies no fp16 autocast on a CPU); "
                    "running fp32")
        return "no", "fp16 requested, no CUDA device: fp32"
    return requested, "requested"


COMPILE_MIN_FRAMES = 1_000_000
"""A CPU run compiles under ``auto`` only from this many training frames: below it, ~80 s of cold
compilation on 2 cores costs more than the faster step saves."""


def resolve_compile(requested: str, device: torch.device, precision: str = "no",
                    frames: int | None = None) -> tuple[bool, str]:
    """(compile, why) for train.compile = auto | on | off; ``precision`` as resolved, ``frames`` the run's
    planned training frames (None: not a training run)."""
    if requested == "auto":
        if device.type == "cuda":
            return True, "auto: CUDA"
        if precision != "bf16" or not cpu_has_native_bf16():
            return False, "auto: CPU without native bf16, where it measured no faster"
        if frames is None or frames < COMPILE_MIN_FRAMES:
            return False, "auto: CPU bf16 run under 1M frames, shorter than compilation pays back"
        return True, "auto: CPU bf16 run of >= 1M frames"
    return requested == "on", "requested"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(requested: int) -> tuple[int, str]:
    """torch's intra-op thread count: requested (> 0), else OMP_NUM_THREADS, else this process's share of cores."""
    if requested > 0:
        return requested, "requested"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "auto: OMP_NUM_THREADS"
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    n = max(1, _cores() // local)
    return n, f"auto: {_cores()} cores / {local} process(es)"


def resolve_workers(requested: int, device: torch.device) -> tuple[int, str]:
    if requested > 0:
        return requested, "requested"
    if device.type != "cuda":
        return 1, "auto: CPU device, the step needs the cores"
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(8, _cores() // local // 2)), "auto: half the cores of this process"


_KEEP_BELOW = 1 << 30  # blocks up to this size are reused from the heap instead of mapped per allocation
_malloc_state: str | None = None


def keep_freed_memory() -> str:
    """Make glibc keep freed large blocks for reuse (see the module docstring); idempotent, returns why."""
    global _malloc_state
    if _malloc_state is not None:
        return _malloc_state
    if os.environ.get("JEPA_FAST_MALLOC", "") == "default" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        _malloc_state = "glibc default (JEPA_FAST_MALLOC=default or MALLOC_MMAP_THRESHOLD_ set)"
        return _malloc_state
    mallopt = None
    if sys.platform.startswith("linux"):
        try:
            mallopt = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt", None)
        except OSError:
            pass
    if mallopt is None:
        _malloc_state = "system default (not glibc on Linux)"
        return _malloc_state
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = mallopt(m_mmap_threshold, _KEEP_BELOW) == 1 and mallopt(m_trim_threshold, _KEEP_BELOW) == 1
    _malloc_state = "auto: large blocks kept for reuse" if ok else "glibc default (mallopt refused)"
    return _malloc_state


def dali_extra() -> tuple[str, str]:
    """(pip extra, DALI wheel) matching this torch's CUDA major version: DALI's CUDA must match the driver's
    major version family (12 or 13); a CPU-only torch takes the CUDA 12 build, whose CPU mode runs anywhere."""
    cuda = torch.version.cuda or ""
    if cuda.split(".")[0] == "13":
        return "cuda13", "nvidia-dali-cuda130"
    return "cuda12", "nvidia-dali-cuda120"


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What this machine resolved the run's machine-dependent settings to, and why each was chosen.

    Kept apart from the run's config (which keeps what the user asked for, ``auto`` included): a run
    resumed on another machine resolves ``auto`` again there."""

    precision: str
    compile: bool
    threads: int
    workers: int
    why: dict[str, str]
    malloc: str = "default"

    def header(self) -> str:
        return (f"precision {self.precision} ({self.why['precision']}) | "
                f"compile {'on' if self.compile else 'off'} ({self.why['compile']}) | "
                f"threads {self.threads} ({self.why['threads']}) | workers {self.workers} ({self.why['workers']}) | "
                f"malloc ({self.malloc})")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def changes_from(self, before: dict | None) -> str:
        """'precision no -> bf16, threads 2 -> 16' against an earlier resolution ('' if none or no change)."""
        if not isinstance(before, dict):
            return ""
        fmt = {"compile": lambda v: "on" if v else "off"}
        out = []
        for name in ("precision", "compile", "threads", "workers"):
            old, new = before.get(name), getattr(self, name)
            if old is not None and old != new:
                f = fmt.get(name, str)
                out.append(f"{name} {f(old)} -> {f(new)} ({self.why[name]})")
        return ", ".join(out)


def resolve(run, device: torch.device, frames: int | None = None) -> Resolved:
    """Every machine-dependent setting of ``run`` (a RunConfig as asked for) resolved on this machine;
    ``frames``: the training run's planned frames (compile's auto rule on a CPU).

    Sets torch's intra-op thread count; ``run`` itself is not changed."""
    precision, why_p = resolve_precision(run.train.precision, device)
    compile_on, why_c = resolve_compile(run.train.compile, device, precision, frames)
    threads, why_t = resolve_threads(run.train.threads)
    workers, why_w = resolve_workers(run.data.workers, device)
    torch.set_num_threads(threads)
    why = {"precision": why_p, "compile": why_c, "threads": why_t, "workers": why_w}
    return Resolved(precision, compile_on, threads, workers, why, keep_freed_memory())


if __name__ == "__main__":  # python -m jepa_fast.hardware dali-extra: the pip extra `make install` picks
    if sys.argv[1:] == ["dali-extra"]:
        print(dali_extra()[0])
