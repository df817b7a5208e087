"""Where one training step's time goes: jepa-fast's step under torch.profiler, by phase and by operator.

    python -m bench.profile_step [--preset reference] [--batch 64] [--warmup 5] [--steps 10]
                                 [--precision auto] [--set section.field=value ...]

Builds the step exactly as ``jepa-fast train`` does (``jepa_fast.train._setup``: Accelerate, autocast,
channels-last, compile per ``train.compile``) on a simulated two-rooms split, runs ``--warmup`` untimed
steps, then profiles ``--steps`` steps of ``train_step``. Phases are marked with ``record_function``: encode
(frames -> latents), predict (GRU and projectors), loss, and ``train_step``'s own marks, backward and
optimizer (clip, step, EMA). Prints each phase's share of the step's wall time, the operators with the
most self CPU time, and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench._data import train_split
from bench.common import header, print_json, print_table
from jepa_fast import hardware
from jepa_fast.config import apply_overrides, run_preset
from jepa_fast.data.loader import build_loader
from jepa_fast.data.split import SplitData
from jepa_fast.schedule import total_steps

PHASES = ("encode", "predict", "loss", "backward", "optimizer")


def _marked(fn, name):
    def wrapper(*args, **kw):
        with record_function(name):
            return fn(*args, **kw)
    return wrapper


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="reference", help="run preset (bench_train times the reference model)")
    ap.add_argument("--n", type=int, default=1024, help="simulated train trajectories")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "no"])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--top", type=int, default=15, help="operators listed")
    args = ap.parse_args(argv)
    import jepa_fast.model as model_mod
    import jepa_fast.train as train_mod

    header("profile_step: one jepa-fast training step by phase and operator")
    work = Path(tempfile.mkdtemp(prefix="profile_step-"))
    try:
        _, store = train_split(work, args.n)
        run = apply_overrides(run_preset(args.preset), [f"data.batch_size={args.batch}", "train.log_every=1000",
                                                         f"train.precision={args.precision}", *args.set])
        device = torch.device("cpu")
        split = SplitData(store, run.data.seq_len, run.data.stride, run.data.window_offset)
        loader = build_loader(split, run.data, device)
        frames_per_step = run.data.batch_size * split.T
        total = total_steps(run.train, frames_per_step, len(loader))
        machine = hardware.resolve(run, device, total * frames_per_step)  # precision, compile, threads: as train
        # phase marks: the model's encode and predict, the loss; backward and the optimizer below
        patches = [(model_mod.JEPA, "encode_stored", "encode"), (model_mod.JEPA, "predict_for_training", "predict"),
                   (train_mod, "jepa_loss", "loss")]
        saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
        for obj, attr, name in patches:
            setattr(obj, attr, _marked(getattr(obj, attr), name))
        try:
            t, _ = train_mod._setup(run, split.spec, work / "run", loader, total, 1, device, machine, None)
            batches = iter(_forever(loader))
            for _ in range(args.warmup):
                train_mod.train_step(t, next(batches))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    train_mod.train_step(t, next(batches))
                wall = (time.perf_counter() - t0) / args.steps
        finally:
            for obj, attr, fn in saved:
                setattr(obj, attr, fn)
        events = prof.key_averages()
        by_name = {e.key: e for e in events}
        rows = [{"phase": p, "ms/step": by_name[p].cpu_time_total / 1e3 / args.steps,
                 "share of step": by_name[p].cpu_time_total / 1e6 / args.steps / wall}
                for p in PHASES if p in by_name]
        print(f"{run.preset}, batch {args.batch}, precision {machine.precision or 'no'}, compile "
              f"{machine.compile}, threads {torch.get_num_threads()}: {wall * 1e3:.0f} ms/step over {args.steps} "
              f"profiled steps\n")
        print_table(rows, ["phase", "ms/step", "share of step"])
        ops = sorted((e for e in events if e.key.startswith(("aten::", "mkldnn::", "Optimizer"))),
                     key=lambda e: -e.self_cpu_time_total)[:args.top]
        op_rows = [{"operator (self time)": e.key, "ms/step": e.self_cpu_time_total / 1e3 / args.steps,
                    "share of step": e.self_cpu_time_total / 1e6 / args.steps / wall,
                    "calls/step": e.count // args.steps} for e in ops]
        print()
        print_table(op_rows, ["operator (self time)", "ms/step", "share of step", "calls/step"])
        fig = {"bench": "profile_step", "preset": run.preset, "batch": args.batch,
               "precision": machine.precision or "no", "ms_per_step": round(wall * 1e3, 1),
               **{f"{r['phase']}_ms": round(r["ms/step"], 1) for r in rows},
               **{f"op_{r['operator (self time)']}_ms": round(r["ms/step"], 1) for r in op_rows[:8]}}
        print_json(fig)
        return fig
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _forever(loader):
    while True:
        yield from loader


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
