"""Training metrics without per-step host syncs.

The loop hands device tensors to ``MetricLogger.accumulate`` every step (no ``.item()``); only
``MetricLogger.log`` (every ``log_every`` steps) moves numbers to the host: that is the loop's one
intentional sync point. It writes one JSONL record, the TensorBoard scalars (through Accelerate's
trackers) and the log line:

    step 00120/20000 | loss 1.2345 | sim ... std ... cov ... raw ... | 4.31 ms | 59,400 samples/s | ...
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from jepa_fast import atomic
from jepa_fast.errors import JepaFastError

# dense bf16 peak FLOP/s of GPUs we know (for MFU); elsewhere MFU is not reported
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class NonFiniteLoss(RuntimeError):
    pass


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class MetricLogger:
    def __init__(self, jsonl: Path | None, total_steps: int, frames_per_step: int, seq_len: int,
                 device: torch.device, flops_per_step: float | None = None, accelerator=None, is_main: bool = True,
                 reduce=None):
        self.jsonl = Path(jsonl) if jsonl else None
        self.total, self.frames_per_step, self.seq_len = total_steps, frames_per_step, seq_len
        self.device, self.accelerator, self.is_main = device, accelerator, is_main
        self.flops_per_step = flops_per_step
        self.reduce = reduce  # e.g. accelerator.reduce: average the terms over processes at log time
        self.peak = peak_flops(device)
        self._sums: dict[str, torch.Tensor] = {}
        self._n = 0  # steps whose loss terms are summed
        self._n_timed = 0  # steps since the clock started (throughput counts only these)
        self._wait = 0.0
        self._t0 = time.perf_counter()
        self.last: dict = {}

    def reset_clock(self) -> None:
        """Restart the throughput clock (e.g. after a compiling step); the summed loss terms are kept."""
        self._t0 = time.perf_counter()
        self._n_timed, self._wait = 0, 0.0

    def accumulate(self, terms: dict[str, torch.Tensor], data_wait_s: float) -> None:
        """Add this step's scalar tensors (detached, on device); no host sync."""
        for k, v in terms.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._n += 1
        self._n_timed += 1
        self._wait += data_wait_s

    def log(self, step: int, lr: float, extra: dict | None = None) -> dict:
        """Host sync (intentional, at log cadence): average, check finiteness, write everywhere."""
        if self._n == 0:
            return self.last
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self._t0
        keys = sorted(self._sums)
        sums = torch.stack([self._sums[k] for k in keys])
        if self.reduce is not None:  # every process logs at the same steps, so this collective matches up
            sums = self.reduce(sums, reduction="mean")
        values = {k: float(v) / self._n for k, v in zip(keys, sums.tolist())}  # sync point
        if not all(math.isfinite(v) for v in values.values()):
            at = f"at step {step}" if self._n == 1 else f"between steps {step - self._n + 1} and {step}"
            raise NonFiniteLoss(f"loss became NaN/Inf {at}")
        rec = {"step": step, **values, "lr": lr}
        if self._n_timed:  # no throughput for a window that holds only a compiling step
            rec.update(timed_steps=self._n_timed, seconds=elapsed, ms_per_step=1e3 * elapsed / self._n_timed,
                       frames_per_s=self.frames_per_step * self._n_timed / elapsed,
                       samples_per_s=self.frames_per_step * self._n_timed / elapsed / self.seq_len,
                       data_wait_pct=100.0 * self._wait / elapsed)
        if self.device.type == "cuda":
            rec["mem_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        else:
            import resource

            rec["mem_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS (KiB on Linux)
        if self.flops_per_step and self.peak and self._n_timed:
            rec["mfu_pct"] = 100.0 * self.flops_per_step * self._n_timed / elapsed / self.peak
        rec.update(extra or {})
        if self.is_main:
            if self.jsonl:
                atomic.append_line(self.jsonl, json.dumps(rec))  # whole lines, or nothing
            if self.accelerator is not None:
                self._tensorboard({k: v for k, v in rec.items() if k != "step"}, step)
        self._sums, self._n, self._n_timed, self._wait = {}, 0, 0, 0.0
        self._t0 = time.perf_counter()
        self.last = rec
        return rec

    def _tensorboard(self, values: dict, step: int) -> None:
        """TensorBoard is a convenience: when its writer fails (a full disk), say so once and go on with the
        JSONL log, which the run depends on."""
        try:
            self.accelerator.log(values, step=step)
        except Exception as e:
            print(f"note: TensorBoard logging stopped ({_reason(e)}); metrics.jsonl goes on", file=sys.stderr)
            self.accelerator = None

    def line(self, rec: dict) -> str:
        width = len(str(self.total))
        parts = [f"step {rec['step']:0{width}d}/{self.total}", f"loss {rec['loss']:.4f}",
                 f"sim {rec['sim']:.4f} std {rec['std']:.4f} cov {rec['cov']:.4f} raw {rec['raw']:.4f}"
                 + (f" idm {rec['idm']:.4f}" if "idm" in rec else "")]
        if "ms_per_step" in rec:
            parts += [f"{rec['ms_per_step']:.2f} ms", f"{rec['samples_per_s']:,.0f} samples/s",
                      f"{rec['frames_per_s']:,.0f} frames/s"]
        if "mfu_pct" in rec:
            parts.append(f"mfu {rec['mfu_pct']:.1f}%")
        if "data_wait_pct" in rec:
            parts.append(f"data {rec['data_wait_pct']:.1f}%")
        if "mem_gib" in rec:
            parts.append(f"mem {rec['mem_gib']:.1f}GiB")
        return " | ".join(parts)


def _records(path: Path, say: bool) -> tuple[list[str], list[dict]]:
    """(lines, records) of a JSONL log. A last line that is not whole JSON is torn (a write cut short by a kill or
    a full disk): dropped, and said if ``say``. A torn line before the last is damage and an error."""
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            if i < len(lines) - 1:
                raise JepaFastError(f"{path}: line {i + 1} is not a JSON record (damaged log); fix or remove that "
                                    "line") from None
            if say:
                print(f"note: {path}: dropped a torn last line (a write cut short)", file=sys.stderr)
            return lines[:i], records
        records.append(rec if isinstance(rec, dict) else {})
    return lines, records


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the records after ``step`` (logged by a run that was then killed before its next checkpoint), and a
    torn last line."""
    path = Path(path)
    if not path.exists():
        return
    whole = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    lines, records = _records(path, say=True)
    keep = [line for line, rec in zip(lines, records) if rec.get("step", 0) <= step]
    if len(keep) != len(whole):
        atomic.atomic_write_text(path, "".join(line + "\n" for line in keep))


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return _records(path, say=False)[1]


def plot_losses(jsonl: Path, out: Path) -> None:
    """loss.png: every loss term over steps."""
    import numpy as np

    from jepa_fast.viz import line_plot

    recs = read_jsonl(jsonl)
    if not recs:
        return
    steps = np.array([r["step"] for r in recs])
    series = {k: (steps, np.array([r[k] for r in recs])) for k in ("loss", "sim", "std", "cov", "raw")}
    line_plot(series, out, "step", "value", title="training loss terms", logy=True)


# ---------------------------------------------------------------------------------------------
# the loop's observability helpers


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return f"{e.filename or 'its event file'}: {e.strerror or e}"
    return f"{type(e).__name__}: {str(e).strip()[:100]}"


def quiet_tensorboard_thread() -> None:
    """TensorBoard writes from a background thread that prints a traceback when a write fails (a full disk)
    before the logger sees the error on its next call and says so in one line: keep that thread quiet."""
    import threading

    previous = threading.excepthook
    if getattr(previous, "_jepa_fast", False):
        return

    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread":
            return  # surfaces in MetricLogger._tensorboard as one line
        previous(args)

    hook._jepa_fast = True
    threading.excepthook = hook


def start_tensorboard(accelerator, hparams: dict) -> bool:
    """Start Accelerate's TensorBoard tracker; a failure (a full disk) is one note and the run goes on without it."""
    quiet_tensorboard_thread()
    try:
        accelerator.init_trackers("tensorboard", config=hparams)
    except Exception as e:
        print(f"note: TensorBoard logging is off ({_reason(e)}); metrics.jsonl goes on", file=sys.stderr)
        accelerator.trackers.clear()  # nothing half-started is left to log to or to close
        return False
    return True


def end_tracking(accelerator) -> None:
    """Close the trackers (TensorBoard flushes here); a failure is one note, never a traceback at exit."""
    try:
        accelerator.end_training()
    except Exception as e:
        print(f"note: TensorBoard logging could not be closed ({_reason(e)}); metrics.jsonl is complete",
              file=sys.stderr)


def profiler(path: Path, cuda: bool):
    """A started torch.profiler that writes a Chrome trace of steps 3-6 to ``path``."""
    from torch.profiler import ProfilerActivity, schedule

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=4, repeat=1),
                                  on_trace_ready=lambda p: p.export_chrome_trace(str(path)))
    prof.start()
    return prof


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
