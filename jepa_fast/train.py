"""The training loop (the only one): Accelerate, mixed precision, torch.compile, checkpoints, resume.

    jepa-fast train DATA [--preset small] [--precision bf16] [--compile on|off|auto] [--set k=v ...]
    accelerate launch -m jepa_fast.train DATA ...        # several processes / GPUs
    torchrun --nproc_per_node 2 -m jepa_fast.train DATA  # the same, on CPU (gloo) or GPU

DATA is a packed store of the train split or a packed dataset root (its ``train.zarr`` is used).
Everything device- and process-related goes through Accelerate; the loader shards itself by
``process_index`` / ``num_processes`` and is built before anything touches CUDA (DALI forks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from jepa_fast import checkpoint as ckpt
from jepa_fast.config import RunConfig, apply_overrides, run_config_from_dict, run_preset, to_dict
from jepa_fast.data.batch import finish_states
from jepa_fast.data.loader import SplitData, build_loader
from jepa_fast.errors import JepaFastError
from jepa_fast.loss import jepa_loss
from jepa_fast.metrics import MetricLogger, NonFiniteLoss, plot_losses
from jepa_fast.model import JEPA, count_parameters

log = logging.getLogger("jepa_fast.train")


def resolve_store(data: Path) -> Path:
    data = Path(data)
    if (data / "zarr.json").exists():
        return data
    if (data / "train.zarr" / "zarr.json").exists():
        return data / "train.zarr"
    raise JepaFastError(f"{data}: neither a packed store nor a packed dataset root with train.zarr; "
                        "create it with jepa-fast pack")


def cosine_schedule(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine from 1 to min_ratio over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def forward_loss(model, states, actions, scale, brightness, noise_std, loss_cfg, noise: bool,
                 prediction: str = "teacher"):
    """The step's model computation (what torch.compile captures as one graph).

    states (B, T, C, H, W) uint8 -> raw units (cast, scale, brightness, noise) -> predictions
    (teacher-forced or rolled out) -> loss terms (a dict of scalar tensors).
    """
    x = finish_states(states, scale, brightness, noise_std, noise=noise)  # (B, T, C, H, W) float32
    pred, latents, proj_pred, proj_target = model(x, actions, train_mode=prediction)
    return jepa_loss(pred, latents, proj_pred, proj_target, loss_cfg)


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment, read before Accelerate starts."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


class _Stop:
    """SIGTERM -> finish the current step, save a checkpoint, exit cleanly."""

    def __init__(self):
        self.requested = False
        self._prev = None

    def __enter__(self):
        self._prev = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._prev)


def train(run: RunConfig, data: Path, out: Path, resume: bool = False, stop_at_step: int | None = None,
          progress: bool = True, profile: Path | None = None) -> dict:
    """Train; returns a summary. ``stop_at_step`` ends the loop early (as an interruption would);
    ``profile`` writes a torch.profiler (Chrome) trace of steps 3-6 there."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(out)
    store = resolve_store(data)
    rank, world, local_rank = _dist_env()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if not resume and ckpt.latest(out) is not None:
        raise JepaFastError(f"{out} already holds checkpoints; pass --resume to continue it or use another --out")

    # 1. data first: DALI's workers must fork before any CUDA context exists
    split = SplitData(store)
    loader = build_loader(split, run.data, device, rank=rank, world_size=world)
    if run.model.static_walls and not split.reader.attrs.get("walls_static", False):
        log.info("%s: wall images vary within trajectories; encoding every frame (model.static_walls off)", store)
        run = dataclasses.replace(run, model=dataclasses.replace(run.model, static_walls=False))

    # 2. Accelerate
    if world == 1:  # a fresh state per call, so one process can run several trainings (tests, benches)
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    tb = _tensorboard_available()
    accelerator = Accelerator(mixed_precision=run.train.precision, cpu=not cuda,
                              log_with="tensorboard" if tb else None, project_dir=str(out))
    is_main = accelerator.is_main_process
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        from jepa_fast import atomic

        atomic.atomic_write_text(out / "config.json", json.dumps(to_dict(run), indent=2))
        if not resume:  # a fresh run in a folder a crashed run left without checkpoints: start the log over
            (out / "metrics.jsonl").unlink(missing_ok=True)
    set_seed(run.train.seed)  # same init on every process

    model = JEPA(run.model)
    n_params = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run.train.lr, weight_decay=run.train.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    steps_per_epoch = len(loader)
    total = run.train.max_steps if run.train.max_steps > 0 else run.train.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, total, run.train.warmup_steps, run.train.min_lr_ratio))

    step = 0
    if resume:
        found = ckpt.latest(out)
        if found is None:
            raise JepaFastError(f"--resume: no checkpoint in {ckpt.ckpt_dir(out)}")
        state, rng = ckpt.load(found, rank)
        if state["world_size"] != world:
            raise JepaFastError(f"{found}: saved with {state['world_size']} processes, resuming with {world}; "
                                "resume with the same number")
        ckpt.unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.sampler.load_state_dict(state["sampler"])
        step = state["step"]
        if rng is not None:
            ckpt.set_rng_state(rng)
        if is_main:
            print(f"resumed from {found} at step {step}")

    # 3. the compiled step
    compile_on = run.train.compile == "on" or (run.train.compile == "auto" and cuda)
    step_fn = forward_loss
    if compile_on:
        torch._dynamo.config.allow_rnn = True  # trace the GRU instead of breaking the graph on it
        if world > 1:
            torch._dynamo.config.optimize_ddp = False  # one graph; DDP's hooks still all-reduce grads
        step_fn = torch.compile(forward_loss, fullgraph=True)
    noise = run.data.augment.noise_p > 0

    T = split.T
    frames_per_step = run.data.batch_size * T * world
    metrics = MetricLogger(out / "metrics.jsonl" if is_main else None, total, frames_per_step, T, device,
                           flops_per_step=_flops_per_step(run, split, world) if cuda else None,
                           accelerator=accelerator if tb else None, is_main=is_main,
                           reduce=accelerator.reduce if world > 1 else None)
    if tb:
        accelerator.init_trackers("tensorboard", config=_flat(to_dict(run)))
    if is_main:
        print(f"jepa-fast train | {n_params:,} params | {store} ({split.n:,} trajectories) | loader {loader.mode} | "
              f"{world} process(es) on {device.type} | precision {run.train.precision} | "
              f"compile {'on' if compile_on else 'off'} | {total} steps ({steps_per_epoch}/epoch)")
    bar = None
    if is_main and progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, desc="train")

    def save_checkpoint() -> Path | None:
        state = {"model": ckpt.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "step": step, "sampler": loader.sampler.state_dict(),
                 "config": to_dict(run), "params": n_params}
        return ckpt.save(out, step, state, rank, world, accelerator.wait_for_everyone, run.train.keep_checkpoints)

    stop_reason = "done"
    compile_s = None
    prof = None
    if profile is not None and is_main:
        from torch.profiler import ProfilerActivity, schedule

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        prof = torch.profiler.profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=4, repeat=1),
                                      on_trace_ready=lambda p: p.export_chrome_trace(str(profile)))
        prof.start()
    t_start = time.perf_counter()
    with _Stop() as stop:
        try:
            while step < total:
                it = iter(loader)
                while step < total:
                    t_wait = time.perf_counter()
                    try:
                        batch = next(it)
                    except StopIteration:
                        break
                    wait = time.perf_counter() - t_wait
                    model.train()
                    t_step = time.perf_counter()
                    with accelerator.autocast():
                        terms = step_fn(model, batch.states, batch.actions, batch.scale, batch.brightness,
                                        batch.noise_std, run.loss, noise, run.train.prediction)
                    accelerator.backward(terms["loss"])
                    if run.train.grad_clip > 0:
                        accelerator.clip_grad_norm_(params, run.train.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    ckpt.unwrap(model).update_target(run.train.ema_momentum)
                    step += 1
                    if prof is not None:
                        prof.step()
                    if compile_s is None and compile_on:
                        compile_s = time.perf_counter() - t_step  # first step = compile + one step
                        if is_main:
                            print(f"torch.compile: first step took {compile_s:.1f} s (compilation included)")
                        metrics.reset_clock()  # throughput figures exclude compilation
                    else:
                        metrics.accumulate(terms, wait)
                    if bar is not None:
                        bar.update(1)
                    at_log = step % run.train.log_every == 0 or step == total
                    if at_log:
                        rec = metrics.log(step, scheduler.get_last_lr()[0])
                        if bar is not None:
                            bar.set_postfix(loss=f"{rec['loss']:.4f}", fps=f"{rec['frames_per_s']:,.0f}")
                        if is_main and not progress:
                            print(metrics.line(rec))
                    if run.train.save_every > 0 and step % run.train.save_every == 0:
                        metrics.log(step, scheduler.get_last_lr()[0])  # never save after an unchecked NaN
                        save_checkpoint()
                    if _should_stop(stop, at_log, world, device):
                        stop_reason = "SIGTERM"
                        break
                    if stop_at_step is not None and step >= stop_at_step:
                        stop_reason = "stop_at_step"
                        break
                if stop_reason != "done":
                    break
            if prof is not None:
                prof.stop()
            metrics.log(step, scheduler.get_last_lr()[0])
            final = save_checkpoint()
        except NonFiniteLoss as e:
            last = ckpt.latest(out)
            if bar is not None:
                bar.close()
            accelerator.end_training()
            raise JepaFastError(f"{e}; stopped without saving. Last good checkpoint: {last or 'none'}. "
                                "Try a lower train.lr or train.precision=no") from None
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t_start
    if is_main:
        plot_losses(out / "metrics.jsonl", out / "loss.png")
        why = {"SIGTERM": " (SIGTERM: checkpoint saved, exiting cleanly)", "stop_at_step": " (stopped early)"}
        print(f"finished at step {step}{why.get(stop_reason, '')}: {final} | {seconds:.1f} s")
    accelerator.end_training()
    return {"step": step, "checkpoint": str(final) if final else None, "seconds": seconds, "params": n_params,
            "stop": stop_reason, "compile_s": compile_s, "last": metrics.last, "loader": loader.mode,
            "model": ckpt.unwrap(model)}


def _should_stop(stop: _Stop, at_log: bool, world: int, device: torch.device) -> bool:
    """One process: the flag itself. Several: agree at log cadence (an all-reduce), so all stop together."""
    if world == 1:
        return stop.requested
    if not at_log:
        return False
    import torch.distributed as dist

    flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


def _flops_per_step(run: RunConfig, split: SplitData, world: int) -> float:
    """Model FLOPs of one training step (fwd + bwd), counted once on a tiny batch and scaled."""
    from torch.utils.flop_counter import FlopCounterMode

    model = JEPA(run.model)
    x = torch.zeros(2, split.T, split.C, split.H, split.W)
    a = torch.zeros(2, split.T - 1, 2)
    with FlopCounterMode(display=False) as counter:
        outs = model(x, a, train_mode=run.train.prediction)
        sum(o.float().sum() for o in outs).backward()
    return counter.get_total_flops() / 2 * run.data.batch_size * world


# ---------------------------------------------------------------------------------------------
# command line


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="packed train store, or a packed dataset root holding train.zarr")
    p.add_argument("--preset", default="ours", help="run preset: ours (default: our recipe, 477,664 params), "
                   "reference (the course project's recipe), ours-small / reference-small (minutes on a CPU), "
                   "tiny (tests)")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (checkpoints, logs, plots)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--precision", choices=["bf16", "fp16", "no"], help="mixed precision (default: preset's)")
    p.add_argument("--compile", choices=["auto", "on", "off"], help="torch.compile the step (default: preset's)")
    p.add_argument("--loader", choices=["auto", "dali", "torch"], help="data loader (default: auto)")
    p.add_argument("--batch-size", type=int, help="trajectories per batch per process")
    p.add_argument("--epochs", type=int, help="epochs over the train split")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--loss-impl", choices=["torch", "triton"], help="VICReg var/cov implementation")
    p.add_argument("--augment", choices=["none", "flips", "full"], help="augmentation preset")
    p.add_argument("--seed", type=int, help="seed for init, sampler and RNG")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any config field, e.g. --set train.save_every=200 --set model.gru_dropout=0 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="print log lines instead of a progress bar")


def config_from_args(args) -> RunConfig:
    from jepa_fast.config import AUGMENT_PRESETS

    if args.resume and (args.out / "config.json").exists():
        run = run_config_from_dict(json.loads((args.out / "config.json").read_text()))
    else:
        run = run_preset(args.preset)
    sets = list(args.set)
    flags = {"precision": "train.precision", "compile": "train.compile", "loader": "data.loader",
             "batch_size": "data.batch_size", "epochs": "train.epochs", "steps": "train.max_steps",
             "lr": "train.lr", "loss_impl": "loss.impl", "seed": "train.seed"}
    for attr, key in flags.items():
        v = getattr(args, attr)
        if v is not None:
            sets.insert(0, f"{key}={v}")
    if args.seed is not None:
        sets.insert(0, f"data.seed={args.seed}")
    run = apply_overrides(run, sets)
    if args.augment is not None:
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, augment=AUGMENT_PRESETS[args.augment]))
    return run


def run_train(args) -> dict:
    return train(config_from_args(args), args.data, args.out, resume=args.resume, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m jepa_fast.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    from jepa_fast.cli import run_command

    return run_command(run_train, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
