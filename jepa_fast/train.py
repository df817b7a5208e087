"""The training loop (the only one): Accelerate, mixed precision, torch.compile, checkpoints, resume.

    jepa-fast train DATA [--preset ours-small] [--precision bf16] [--compile on|off|auto] [--set k=v ...]
    accelerate launch -m jepa_fast train DATA ...        # several processes / GPUs
    torchrun --nproc_per_node 2 -m jepa_fast train DATA  # the same, on CPU (gloo) or GPU

DATA is a packed store of the train split or a packed dataset root (its ``train.zarr`` is used).
Everything device- and process-related goes through Accelerate; the loader shards itself by
``process_index`` / ``num_processes`` and is built before anything touches CUDA (DALI forks).

Layout, top to bottom: ``ForwardLoss`` (the step's model computation, the compiled graph),
``train_step`` (one optimizer step), ``Checkpointer`` (the save cadence), ``train`` (set-up, then a
loop that fits one screen). The command line lives in ``cli/run.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
from torch.profiler import record_function

from jepa_fast import atomic, hardware, lock
from jepa_fast import checkpoint as ckpt
from jepa_fast import metrics as metrics_mod
from jepa_fast.config import LossConfig, RunConfig, flat_config, to_dict
from jepa_fast.data.batch import Batch
from jepa_fast.data.loader import build_loader
from jepa_fast.data.split import SplitData
from jepa_fast.errors import JepaFastError
from jepa_fast.loss import jepa_loss
from jepa_fast.metrics import MetricLogger, NonFiniteLoss, plot_losses
from jepa_fast.model import JEPA, check_frames, count_parameters, training_flops
from jepa_fast.progress import step_bar
from jepa_fast.schedule import cosine_schedule, frame_label, total_steps
from jepa_fast.spec import DataSpec
from jepa_fast.stop import StopRequest

log = logging.getLogger("jepa_fast.train")


def resolve_store(data: Path) -> Path:
    data = Path(data)
    if (data / "zarr.json").exists():
        return data
    if (data / "train.zarr" / "zarr.json").exists():
        return data / "train.zarr"
    raise JepaFastError(f"{data}: neither a packed store nor a packed dataset root with train.zarr; "
                        "create it with jepa-fast pack")


# ---------------------------------------------------------------------------------------------
# the step


class ForwardLoss(nn.Module):
    """The step's model computation as one module: what DDP wraps and torch.compile captures as one graph.

    states (B, T, C, H, W) uint8 -> latents (``JEPA.encode_stored``: cast, scale, brightness, noise) ->
    predictions (teacher-forced or rolled out) -> loss terms (a dict of scalar tensors).
    """

    def __init__(self, model: JEPA, loss: LossConfig, prediction: str = "teacher", noise: bool = False):
        super().__init__()
        self.model, self.loss_cfg, self.prediction, self.noise = model, loss, prediction, noise

    def forward(self, states: torch.Tensor, actions: torch.Tensor, scale: torch.Tensor, brightness: torch.Tensor,
                noise_std: torch.Tensor) -> dict[str, torch.Tensor]:
        encoded = self.model.encode_stored(states, scale, brightness, noise_std, noise=self.noise)  # (B, T, D)
        pred, latents, proj_pred, proj_target = self.model.predict_for_training(encoded, actions, self.prediction)
        terms = jepa_loss(pred, latents, proj_pred, proj_target, self.loss_cfg)
        if self.model.idm is not None:
            terms["idm"] = self.model.inverse_dynamics_loss(encoded, actions)
            terms["loss"] = terms["loss"] + self.loss_cfg.idm_coeff * terms["idm"]
        return terms


@dataclasses.dataclass
class Training:
    """What one optimizer step needs (built once by ``_setup``)."""

    run: RunConfig
    model: JEPA  # the plain module (checkpoints, EMA)
    forward_loss: Callable[..., dict[str, torch.Tensor]]  # prepared (DDP, autocast) and maybe compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    accelerator: object
    params: list[torch.nn.Parameter]
    total: int  # optimizer steps of the whole run (the schedule's length)
    step: int = 0
    replaced: Path | None = None  # an --overwrite's old run folder, set aside until the first checkpoint
    data: dict = dataclasses.field(default_factory=dict)  # the training data's identity, recorded in checkpoints


def train_step(t: Training, batch: Batch) -> dict[str, torch.Tensor]:
    """One optimizer step on one batch; returns the loss terms as device tensors (no host sync)."""
    t.forward_loss.train()
    terms = t.forward_loss(batch.states, batch.actions, batch.scale, batch.brightness, batch.noise_std)
    with record_function("backward"):  # phase marks for torch.profiler (train --profile, bench/profile_step.py)
        t.accelerator.backward(terms["loss"])
    with record_function("optimizer"):
        if t.run.train.grad_clip > 0:
            t.accelerator.clip_grad_norm_(t.params, t.run.train.grad_clip)
        t.optimizer.step()
        t.scheduler.step()
        t.optimizer.zero_grad(set_to_none=True)
        t.model.update_target(t.run.train.ema_momentum)
    t.step += 1
    return terms


class Checkpointer:
    """Owns the save cadence (every ``save_every`` steps, and once at the end) and what a checkpoint holds."""

    def __init__(self, out: Path, t: Training, sampler, machine: hardware.Resolved, rank: int, world: int):
        self.out, self.t, self.sampler, self.machine, self.rank, self.world = out, t, sampler, machine, rank, world
        self.saved_step: int | None = None  # the step of the last checkpoint this run wrote
        self.last: Path | None = None

    def due(self, step: int) -> bool:
        every = self.t.run.train.save_every
        return every > 0 and step % every == 0

    def save(self) -> Path | None:
        """Write a checkpoint of the current step, unless this run already wrote it."""
        t = self.t
        if self.saved_step == t.step:
            return self.last
        state = {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                 "scheduler": t.scheduler.state_dict(), "step": t.step, "sampler": self.sampler.state_dict(),
                 "config": to_dict(t.run), "resolved": self.machine.as_dict(), "data": t.data,
                 "spec": t.model.spec.to_dict(), "params": count_parameters(t.model)}
        self.last = ckpt.save(self.out, t.step, state, self.rank, self.world, t.accelerator.wait_for_everyone,
                              t.run.train.keep_checkpoints)
        self.saved_step = t.step
        if t.replaced is not None:  # the new run has its first checkpoint: the old one it replaces goes
            atomic.discard_aside(t.replaced)
            t.replaced = None
        return self.last


# ---------------------------------------------------------------------------------------------
# the run


def train(run: RunConfig, data: Path, out: Path, resume: bool = False, stop_at_step: int | None = None,
          progress: bool = True, profile: Path | None = None, init: Path | None = None,
          overwrite: bool = False, other_data: bool = False) -> dict:
    """Train; returns a summary. ``stop_at_step`` ends the loop early (as an interruption would);
    ``profile`` writes a torch.profiler (Chrome) trace of steps 3-6 there; ``init`` starts from the
    weights of a checkpoint, a run folder or the course project's model_weights.pth (a fine-tune: fresh
    optimizer, schedule and data position; the model config comes with the weights); ``overwrite``
    replaces what a non-empty ``out`` holds; ``other_data`` lets a resume continue on data other than the
    run's (refused by default). The run folder is locked (one writer) for the whole run.

    ``run`` is the configuration as asked for: machine-dependent fields may be ``auto``, resolved here
    for this machine (``hardware.resolve``) and recorded apart from it (``resolved.json``, checkpoints).
    """
    out = Path(out)
    rank, world, local_rank = _dist_env()
    atomic.check_apart(out, {"training data": data, "--init weights": init}, "run folder")
    with lock.exclusive(out, "run folder") if rank == 0 else contextlib.nullcontext():
        if rank == 0:  # an --overwrite killed before its first checkpoint left the old run aside: put it back
            atomic.recover_asides(out, lambda d: ckpt.latest(d) is not None)
        _check_output(out, resume, overwrite, init)
        # ask NVML, not the CUDA driver: DALI can fork its workers only while the driver is not initialised
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        store = resolve_store(data)
        # data first: DALI's workers must fork before anything initialises CUDA
        split = SplitData(store, run.data.seq_len, run.data.stride, run.data.window_offset)
        if init is not None:
            run = _with_init_model(run, init, split.spec, store)
        check_frames(run.model, split.H, split.W, store)
        loader = build_loader(split, run.data, device, rank=rank, world_size=world)
        frames_per_step = run.data.batch_size * world * split.T
        total = total_steps(run.train, frames_per_step, len(loader))
        machine = hardware.resolve(run, device, total * frames_per_step)  # every machine-dependent 'auto', once
        t, tb = _setup(run, split.spec, out, loader, total, world, device, machine, init)
        t.data = {"store": str(store.resolve()), "fingerprint": split.reader.fingerprint(), "n": split.n}
        if resume:
            _restore(t, out, loader, rank, world, machine, other_data)
        try:
            tb = _claim_output(t, out, resume, overwrite, machine, tb)
            if t.accelerator.is_main_process:
                print(f"jepa-fast train | {count_parameters(t.model):,} params | {store} ({split.summary}) | "
                      f"loader {loader.mode} | {world} process(es) on {device.type} | {machine.header()} | "
                      f"{t.total} steps ({len(loader)}/epoch) = {frame_label(t.total * frames_per_step)} frames")
            return _loop(t, loader, split, out, machine, tb, world, device, stop_at_step, progress, profile)
        except BaseException:
            if t.replaced is not None:  # failed before its first checkpoint: the run it was to replace comes back
                atomic.restore_aside(out, t.replaced)
            raise


def _loop(t: Training, loader, split: SplitData, out: Path, machine: hardware.Resolved, tb: bool, world: int,
          device: torch.device, stop_at_step: int | None, progress: bool, profile: Path | None) -> dict:
    """Steps until the run's total (or a stop); logs and checkpoints at their cadences; one final save."""
    run, accelerator, is_main = t.run, t.accelerator, t.accelerator.is_main_process
    flops = training_flops(run.model, split.spec, run.train.prediction, split.T) * run.data.batch_size * world \
        if device.type == "cuda" else None  # MFU only where a peak is known
    metrics = MetricLogger(out / "metrics.jsonl" if is_main else None, t.total, run.data.batch_size * split.T * world,
                           split.T, device, flops_per_step=flops, accelerator=accelerator if tb else None,
                           is_main=is_main, reduce=accelerator.reduce if world > 1 else None)
    checkpointer = Checkpointer(out, t, loader.sampler, machine, accelerator.process_index, world)
    bar = step_bar(t.total, t.step) if is_main and progress else None
    prof = metrics_mod.profiler(profile, device.type == "cuda") if profile is not None and is_main else None
    stop_reason, compile_s, t_start = "done", None, time.perf_counter()
    batches = _epochs(loader)
    try:
        with StopRequest() as stop:
            while t.step < t.total:
                t_wait = time.perf_counter()
                batch = next(batches)
                wait, t_step = time.perf_counter() - t_wait, time.perf_counter()
                terms = train_step(t, batch)
                metrics.accumulate(terms, wait)  # every step's loss is checked, the compiling one too
                if machine.compile and compile_s is None:
                    compile_s = time.perf_counter() - t_step  # first step = compilation + one step
                    metrics.reset_clock()  # throughput figures exclude compilation
                    if is_main:
                        print(f"torch.compile: first step took {compile_s:.1f} s (compilation included)")
                if prof is not None:
                    prof.step()
                at_log = t.step % run.train.log_every == 0 or t.step == t.total
                if at_log or checkpointer.due(t.step):  # never save after an unchecked NaN
                    _report(metrics.log(t.step, t.scheduler.get_last_lr()[0]), metrics, bar, at_log, progress)
                if checkpointer.due(t.step):
                    checkpointer.save()
                if bar is not None:
                    bar.update(1)
                if stop.agreed(at_log, world, device):
                    stop_reason = "SIGTERM"
                    break
                if stop_at_step is not None and t.step >= stop_at_step:
                    stop_reason = "stop_at_step"
                    break
            metrics.log(t.step, t.scheduler.get_last_lr()[0])
            final = checkpointer.save()
    except NonFiniteLoss as e:
        raise JepaFastError(f"{e}; stopped without saving. Last good checkpoint: {ckpt.latest(out) or 'none'}. "
                            "Try a lower train.lr or train.precision=no") from None
    finally:
        batches.close()  # the loader's prefetch thread / DALI pipeline
        if prof is not None:
            prof.stop()
        if bar is not None:
            bar.close()
        metrics_mod.end_tracking(accelerator)
    seconds = time.perf_counter() - t_start
    if is_main:
        plot_losses(out / "metrics.jsonl", out / "loss.png")
        why = {"SIGTERM": " (SIGTERM: checkpoint saved, exiting cleanly)", "stop_at_step": " (stopped early)"}
        frames = frame_label(t.step * run.data.batch_size * split.T * world)
        print(f"finished at step {t.step} ({frames} frames){why.get(stop_reason, '')}: {final} | {seconds:.1f} s")
    return {"step": t.step, "frames": t.step * run.data.batch_size * split.T * world,
            "checkpoint": str(final) if final else None, "seconds": seconds,
            "params": count_parameters(t.model), "stop": stop_reason, "compile_s": compile_s, "last": metrics.last,
            "loader": loader.mode, "model": t.model, "resolved": machine.as_dict()}


def _check_output(out: Path, resume: bool, overwrite: bool, init: Path | None) -> None:
    """Refuse what would lose a user's files or mix two runs, before anything is built."""
    if init is not None and resume:
        raise JepaFastError("--init starts a new run from weights, --resume continues one; pass only one")
    if resume or overwrite:
        return
    if ckpt.latest(out) is not None:
        raise JepaFastError(f"{out} already holds checkpoints; pass --resume to continue it, --overwrite to "
                            "replace it, or use another --out")
    if out.is_dir() and any(out.iterdir()):
        names = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise JepaFastError(f"{out} holds files ({names}) but no checkpoint; pass --overwrite to replace them "
                            "or use another --out")


def _with_init_model(run: RunConfig, init: Path, spec: DataSpec, store: Path) -> RunConfig:
    """The run with the model config that ``init``'s weights need (the weights are loaded in ``_setup``);
    the weights must have been trained on data of this shape."""
    from jepa_fast.reference import load_init

    _, model_cfg, init_spec, what = load_init(init)
    shape = ("channels", "static_channels", "action_size")
    if any(getattr(init_spec, f) != getattr(spec, f) for f in shape):
        got = ", ".join(f"{f} {getattr(init_spec, f)}" for f in shape)
        want = ", ".join(f"{f} {getattr(spec, f)}" for f in shape)
        raise JepaFastError(f"--init: {what} was trained on other data ({got}); {store} has {want}")
    if model_cfg != run.model:
        log.info("model config taken from %s (it differs from preset %s's)", what, run.preset)
    return dataclasses.replace(run, model=model_cfg)


def _setup(run: RunConfig, spec: DataSpec, out: Path, loader, total: int, world: int, device: torch.device,
           machine: hardware.Resolved, init: Path | None) -> tuple[Training, bool]:
    """Accelerate, the model and optimizer (restored from the latest checkpoint on resume), the compiled step;
    ``total``: the run's optimizer steps (``schedule.total_steps``), the cosine schedule's length."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if world == 1:  # a fresh state per call, so one process can run several trainings (tests, benches)
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    tb = metrics_mod.tensorboard_available()
    accelerator = Accelerator(mixed_precision=machine.precision, cpu=device.type != "cuda",
                              log_with="tensorboard" if tb else None, project_dir=str(out))
    set_seed(run.train.seed)  # same init on every process
    model = JEPA(run.model, spec)
    if init is not None:
        from jepa_fast.reference import load_init

        try:
            model.load_state_dict(load_init(init)[0], strict=True)
        except RuntimeError as e:
            raise JepaFastError(f"--init: the weights do not fit this model ({str(e).splitlines()[0]})") from None
    if run.train.channels_last:
        model = model.to(memory_format=torch.channels_last)  # conv weights NHWC; activations follow
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run.train.lr, weight_decay=run.train.weight_decay)
    step_module = ForwardLoss(model, run.loss, run.train.prediction, noise=run.data.augment.noise_p > 0)
    # prepare wraps the module for DDP (several processes) and its forward in autocast (mixed precision)
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, total, run.train.warmup_steps, run.train.min_lr_ratio))
    t = Training(run, model, step_module, optimizer, scheduler, accelerator, params, total)
    if machine.compile:
        torch._dynamo.config.allow_rnn = True  # trace the GRU instead of breaking the graph on it
        if world > 1:
            torch._dynamo.config.optimize_ddp = False  # one graph; DDP's hooks still all-reduce grads
        t.forward_loss = torch.compile(step_module, fullgraph=True)
    return t, tb


def _claim_output(t: Training, out: Path, resume: bool, overwrite: bool, machine: hardware.Resolved,
                  tb: bool) -> bool:
    """Every check has passed: only now does the run folder change. An --overwrite sets the old run aside
    (``t.replaced``) until the new one's first checkpoint; the TensorBoard writer starts after that.
    Returns whether TensorBoard logging is on."""
    if t.accelerator.is_main_process:
        if overwrite and not resume and out.is_dir() and any(out.iterdir()):
            t.replaced = atomic.set_aside(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic.atomic_write_text(out / "config.json", json.dumps(to_dict(t.run), indent=2))  # as asked: 'auto' kept
        atomic.atomic_write_text(out / "resolved.json", json.dumps(machine.as_dict(), indent=2))  # on this machine
        if resume:  # steps logged after the checkpoint were lost with the kill: the log continues from it
            metrics_mod.truncate_jsonl(out / "metrics.jsonl", t.step)
    t.accelerator.wait_for_everyone()
    return tb and metrics_mod.start_tensorboard(t.accelerator, flat_config(to_dict(t.run)))


def _restore(t: Training, out: Path, loader, rank: int, world: int, machine: hardware.Resolved,
             other_data: bool) -> None:
    t.step, saved = ckpt.restore(out, rank, world, to_dict(t.run), t.model, t.optimizer, t.scheduler, loader.sampler)
    before = saved.get("data") or {}
    if before.get("fingerprint") not in (None, t.data["fingerprint"]):
        if not other_data:
            raise JepaFastError(f"--resume: {out} was trained on other data ({before.get('store')}, fingerprint "
                                f"{str(before['fingerprint'])[:12]}; this is {t.data['store']}, "
                                f"{t.data['fingerprint'][:12]}): resume on the data it trained on, or pass "
                                "--other-data to continue on this one")
        print(f"note: resuming on other data than the run's ({t.data['store']}), as --other-data asks")
    changed = machine.changes_from(saved.get("resolved"))
    if changed and t.accelerator.is_main_process:
        print(f"resumed on a machine that resolves 'auto' differently: {changed}")


def _epochs(loader) -> Iterator[Batch]:
    """Batches of epoch after epoch, each epoch from the sampler's position."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise JepaFastError("the loader produced an empty epoch")


def _report(rec: dict, metrics: MetricLogger, bar, at_log: bool, progress: bool) -> None:
    if bar is not None and "frames_per_s" in rec:
        bar.set_postfix(loss=f"{rec['loss']:.4f}", fps=f"{rec['frames_per_s']:,.0f}")
    if at_log and metrics.is_main and not progress:
        print(metrics.line(rec))


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment, read before Accelerate starts."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))
