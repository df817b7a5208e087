"""Training throughput: the reference project's loop vs jepa-fast, same model, same data, same steps.

    python -m bench.bench_train [--n 2048] [--batch 64] [--warmup 5] [--steps 30] [--window 5] [--rounds 2]
                                [--precision auto|all] [--compile auto|on|off] [--profile trace.json]
                                [--variant LABEL=SECTION.FIELD=VALUE[,SECTION.FIELD=VALUE...] ...]

(a) reference: what the course project's users run: the naive loader (np.load mmap of the float32
    .npy, per-item ``torch.from_numpy(states[i]).float().to(device)``, DataLoader shuffle/drop_last),
    eager fp32, the torch loss, AdamW + cosine + clipping + EMA, every frame through both encoders,
    ``loss.item()`` every step (it logs every step).
(b) jepa-fast: ``jepa_fast.train.train`` on the packed store: its loader (auto), mixed precision
    (``--precision all``: every precision the device runs, side by side; the headline is the one
    ``train.precision=auto`` picks here), torch.compile (``--compile auto``: as ``train.compile=auto``
    decides for each precision in a run of one epoch of the full train split: on with CUDA, on a CPU for
    native bf16), Triton VICReg kernels on a GPU (torch loss on a CPU), the static wall channel encoded
    once per trajectory.
(c) ``--variant``: more jepa-fast loops at the auto precision with settings changed (e.g.
    ``--variant nchw=train.channels_last=false --variant compiled=train.compile=on``), timed in the same
    rounds over the same steps, each with its own ratio to the reference: ablations of the step's
    settings in one run, on one machine.
Both use the ``reference`` model (477,664 parameters).

Timing: each loop runs ``--warmup`` untimed steps (compilation included), then exactly ``--steps``
timed steps, cut into windows of ``--window`` steps. jepa-fast is timed by its own metrics (one
record per window, ``train.log_every = --window``: the loop's only host sync, so on a GPU each window
ends with a synchronize); the reference loop is timed at the same step boundaries. ``--rounds``
repeats the pair alternately (reference, jepa-fast, reference, ...) so that drift on a shared machine
hits both. Every loop runs in a fresh process (spawned; its start-up is not timed), as its users run it:
what one loop sets in its process (jepa-fast's glibc setting that keeps freed large blocks, torch's
threads, compile state) never reaches the next. In one process the reference loop ran faster after the
first jepa-fast loop had set the allocator (on a 2-core EPYC: 807 -> ~670 ms/step), so its rounds
differed. The headline ratio is frames/s over all timed steps of all rounds (total frames / total
seconds, identical step counts on both sides); the spread is min/median/max of the per-window
frames/s, and of the per-round ratios, so a single noisy window cannot make the headline. To compare
against a reference loop whose glibc also keeps freed blocks, set ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` (every loop inherits them).

Targets: >= 3x on a 2-core CPU; on one GPU >= 10x, and an epoch of the full train split (the ``full``
dataset preset) in <= 5 s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench._data import train_split
from bench.common import header, print_json, print_table
from bench.naive import naive_loader
from jepa_fast.config import LossConfig, apply_overrides, dataset_preset, model_preset, run_preset
from jepa_fast.errors import JepaFastError
from jepa_fast.hardware import cpu_has_native_bf16, resolve_compile, resolve_precision
from jepa_fast.loss import jepa_loss
from jepa_fast.metrics import read_jsonl
from jepa_fast.model import JEPA
from jepa_fast.schedule import cosine_schedule
from jepa_fast.train import train

NAMES = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclasses.dataclass
class Timing:
    """One loop's timed steps: per-window (steps, seconds), frames per step, seconds waiting for data."""

    windows: list[tuple[int, float]]
    frames_per_step: int
    wait_s: float = 0.0

    @property
    def steps(self) -> int:
        return sum(n for n, _ in self.windows)

    @property
    def seconds(self) -> float:
        return sum(s for _, s in self.windows)

    @property
    def fps(self) -> float:
        return self.steps * self.frames_per_step / self.seconds

    def window_fps(self) -> list[float]:
        return [n * self.frames_per_step / s for n, s in self.windows]

    def merged(self, other: Timing) -> Timing:
        return Timing(self.windows + other.windows, self.frames_per_step, self.wait_s + other.wait_s)

    def figures(self) -> dict:
        w = self.window_fps()
        return {"frames_per_s": self.fps, "ms_per_step": 1e3 * self.seconds / self.steps, "timed_steps": self.steps,
                "window_fps_min": min(w), "window_fps_median": statistics.median(w), "window_fps_max": max(w),
                "data_wait_pct": 100 * self.wait_s / self.seconds}


def _fresh_process(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a new spawned interpreter; returns (its result, that process's pid)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_with_pid, fn, *args, **kwargs).result()


def _with_pid(fn, *args, **kwargs):
    return fn(*args, **kwargs), os.getpid()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_loop(split: Path, batch: int, warmup: int, steps: int, window: int, device: torch.device,
                   T: int) -> Timing:
    """The reference project's training loop, as its users run it, timed window by window after warm-up."""
    torch.manual_seed(0)
    model = JEPA(model_preset("reference", static_once=False)).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=1e-4)
    total = warmup + steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, total, 0, 0.1))
    dl = naive_loader(split, batch, device)
    cfg = LossConfig()
    it, done, wait, windows, t0 = iter(dl), 0, 0.0, [], None
    while done < total:
        tw = time.perf_counter()
        try:
            states, actions = next(it)
        except StopIteration:
            it = iter(dl)
            continue
        if done >= warmup:
            wait += time.perf_counter() - tw
        latents = model.encode_stored(states, torch.ones(states.shape[2], device=device))  # raw float frames
        pred, lat, pp, pt = model.predict_for_training(latents, actions, "teacher")
        loss = jepa_loss(pred, lat, pp, pt, cfg)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        model.update_target(0.996)
        loss.item()  # the reference logs every step
        done += 1
        if done >= warmup and (done - warmup) % window == 0:
            _sync(device)
            now = time.perf_counter()
            if t0 is not None:
                windows.append((window, now - t0))
            t0 = now
    return Timing(windows, batch * T, wait)


def jepa_fast_loop(store: Path, out: Path, precision: str, batch: int, warmup: int, steps: int, window: int,
                   compile_: str, impl: str, T: int, profile: Path | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> tuple[Timing, dict]:
    """jepa-fast's own loop, timed by its metrics records: exactly the steps (warmup, warmup + steps]."""
    run = apply_overrides(run_preset("reference"), [
        f"data.batch_size={batch}", f"train.max_steps={warmup + steps}", "train.save_every=-1",
        f"train.log_every={window}", f"train.compile={compile_}", f"loss.impl={impl}", f"train.precision={precision}",
        *overrides])
    result = train(run, store, out, progress=False, profile=profile)
    records = [r for r in read_jsonl(out / "metrics.jsonl") if warmup < r["step"] <= warmup + steps]
    windows = [(r["timed_steps"], r["seconds"]) for r in records]
    timing = Timing(windows, batch * T, sum(r["seconds"] * r["data_wait_pct"] / 100 for r in records))
    if timing.steps != steps:
        raise RuntimeError(f"jepa-fast timed {timing.steps} steps, the reference {steps}: the windows do not align")
    return timing, {"loader": result["loader"], "compile_s": result["compile_s"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="train trajectories to simulate")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 512 on a GPU, 64 on a CPU)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here); "
                    "a multiple of --window")
    ap.add_argument("--steps", type=int, default=30, help="timed steps, the same on both sides; a multiple of --window")
    ap.add_argument("--window", type=int, default=5, help="steps per timing window")
    ap.add_argument("--rounds", type=int, default=2, help="alternate reference and jepa-fast this many times")
    ap.add_argument("--precision", choices=["auto", "all"], default="all",
                    help="jepa-fast at the precision auto picks here, or at every precision the device runs")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="jepa-fast compile setting")
    ap.add_argument("--profile", type=Path, default=None, help="write a torch.profiler trace of jepa-fast here")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=SECTION.FIELD=VALUE[,...]",
                    help="one more jepa-fast loop (auto precision) with these settings, timed in the same rounds")
    args = ap.parse_args(argv)
    variants: dict[str, list[str]] = {}
    for v in args.variant:
        label, _, sets = v.partition("=")
        if (not re.fullmatch(r"[a-z0-9_]+", label) or "=" not in sets or label in variants
                or label in {*NAMES, *NAMES.values()}):
            ap.error(f"--variant {v!r}: expected LABEL=SECTION.FIELD=VALUE[,SECTION.FIELD=VALUE...], a new "
                     "label of lowercase letters, digits and _ (not a precision's name)")
        variants[label] = sets.split(",")
        try:  # a bad setting fails now, not after a round
            apply_overrides(run_preset("reference"), variants[label])
        except JepaFastError as e:
            ap.error(f"--variant {v!r}: {e}")
    if args.window < 1 or args.steps % args.window or args.warmup % args.window or args.warmup < args.window:
        ap.error("--steps and --warmup must be multiples of --window, and --warmup >= --window")
    header("bench_train: reference loop vs jepa-fast (same model, same data, same timed steps)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (512 if device.type == "cuda" else 64)
    T = dataset_preset("full").seq_len
    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    try:
        raw, store = train_split(work, max(args.n, batch * 2))
        impl = "triton" if device.type == "cuda" else "torch"
        auto, why = resolve_precision("auto", device)
        epoch_frames = dataset_preset("full").sizes["train"] * T

        def compile_for(precision: str) -> str:  # as `train.compile=auto` decides for a real run (one epoch)
            if args.compile != "auto":
                return args.compile
            return "on" if resolve_compile("auto", device, precision, epoch_frames)[0] else "off"
        every = ["bf16", "no"] if device.type == "cuda" else ["no", "bf16"]
        precisions = [auto] if args.precision == "auto" else every
        refs: list[Timing] = []
        fast: dict[str, list[Timing]] = {p: [] for p in [*precisions, *variants]}
        info: dict[str, dict] = {}
        pids: set[int] = set()
        for r in range(args.rounds):
            timing, pid = _fresh_process(reference_loop, raw, batch, args.warmup, args.steps, args.window, device, T)
            refs.append(timing)
            pids.add(pid)
            for p in precisions:
                (timing, info[p]), pid = _fresh_process(
                    jepa_fast_loop, store, work / f"run-{p}-{r}", p, batch, args.warmup, args.steps, args.window,
                    compile_for(p), impl, T, profile=args.profile if (p == auto and r == 0) else None)
                fast[p].append(timing)
                pids.add(pid)
            for label, sets in variants.items():
                (timing, info[label]), pid = _fresh_process(
                    jepa_fast_loop, store, work / f"run-{label}-{r}", auto, batch, args.warmup, args.steps,
                    args.window, compile_for(auto), impl, T, overrides=sets)
                fast[label].append(timing)
                pids.add(pid)
        ref_all = _merge(refs)
        rows = [{"loop": "reference (naive loader, eager fp32)", **ref_all.figures()}]
        for p in precisions:
            rows.append({"loop": f"jepa-fast ({info[p]['loader']}, {NAMES[p]}{' = auto' if p == auto else ''}, "
                                 f"compile {'on' if info[p]['compile_s'] is not None else 'off'}, loss {impl})",
                         **_merge(fast[p]).figures()})
        for label, sets in variants.items():
            rows.append({"loop": f"jepa-fast {label} ({NAMES[auto]}, compile "
                                 f"{'on' if info[label]['compile_s'] is not None else 'off'}: {', '.join(sets)})",
                         **_merge(fast[label]).figures()})
        compile_s = info[auto]["compile_s"]
        print(f"\ndevice {device}, batch {batch}, {args.rounds} round(s) of {args.steps} timed steps after "
              f"{args.warmup} warm-up steps, windows of {args.window}, each loop in a fresh process; "
              f"precision auto = {NAMES[auto]} ({why}); "
              f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_has_native_bf16()}"
              + (f", compile took {compile_s:.1f} s" if compile_s else "") + "\n")
        print_table([{"loop": r["loop"], "frames/s": r["frames_per_s"], "ms/step": r["ms_per_step"],
                      "timed steps": r["timed_steps"],
                      "window frames/s min/med/max": f"{r['window_fps_min']:,.0f} / {r['window_fps_median']:,.0f} / "
                                                      f"{r['window_fps_max']:,.0f}",
                      "data wait %": r["data_wait_pct"]} for r in rows],
                    ["loop", "frames/s", "ms/step", "timed steps", "window frames/s min/med/max", "data wait %"])
        figures = {"bench": "train", "device": str(device), "batch": batch, "warmup": args.warmup,
                   "steps": args.steps, "window": args.window, "rounds": args.rounds,
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": cpu_has_native_bf16(),
                   "auto_precision": NAMES[auto], "loop_processes": len(pids - {os.getpid()}),
                   **_prefixed("reference", ref_all)}
        print()
        for p in [*precisions, *variants]:
            name = NAMES.get(p, p)
            merged = _merge(fast[p])
            ratio = merged.fps / ref_all.fps
            per_round = [f.fps / r.fps for f, r in zip(fast[p], refs)]
            medians = merged.figures()["window_fps_median"] / ref_all.figures()["window_fps_median"]
            print(f"jepa-fast {name}{' (auto)' if p == auto else ''} / reference: {ratio:.2f}x over "
                  f"{merged.steps} timed steps each; per round {', '.join(f'{x:.2f}x' for x in per_round)}; "
                  f"ratio of median windows {medians:.2f}x")
            figures.update(_prefixed(f"jepa_fast_{name}", merged))
            figures.update({f"jepa_fast_{name}_vs_reference": round(ratio, 3),
                            f"jepa_fast_{name}_vs_reference_round_min": round(min(per_round), 3),
                            f"jepa_fast_{name}_vs_reference_round_max": round(max(per_round), 3)})
            if p in variants:
                figures[f"{name}_compile_s"] = info[p]["compile_s"]
        ratio = _merge(fast[auto]).fps / ref_all.fps
        target = 10 if device.type == "cuda" else 3
        print(f"headline: jepa-fast (auto = {NAMES[auto]}) / reference = {ratio:.2f}x "
              f"(target >= {target}x: {'MET' if ratio >= target else 'NOT MET'})")
        epoch_s = epoch_frames / _merge(fast[auto]).fps
        print(f"one epoch of the full train split ({epoch_frames:,} frames) at that rate: {epoch_s:,.1f} s")
        if args.profile:
            print(f"profiler trace: {args.profile}")
        figures.update({"compile_s": compile_s, "epoch_full_train_s": round(epoch_s, 2),
                        "jepa_fast_vs_reference": round(ratio, 3)})
        print_json(figures)
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _merge(timings: list[Timing]) -> Timing:
    out = timings[0]
    for t in timings[1:]:
        out = out.merged(t)
    return out


def _prefixed(prefix: str, t: Timing) -> dict:
    f = t.figures()
    return {f"{prefix}_fps": round(f["frames_per_s"]), f"{prefix}_ms_per_step": round(f["ms_per_step"], 2),
            f"{prefix}_timed_steps": f["timed_steps"], f"{prefix}_window_fps_min": round(f["window_fps_min"]),
            f"{prefix}_window_fps_median": round(f["window_fps_median"]),
            f"{prefix}_window_fps_max": round(f["window_fps_max"]),
            f"{prefix}_data_wait_pct": round(f["data_wait_pct"], 2)}


if __name__ == "__main__":
    main()
