"""``jepa-fast`` model commands: train, probe, plan, the course project's weights (import/export), bench, demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jepa_fast.errors import JepaFastError

# ---------------------------------------------------------------------------------------------
# train


TRAIN_FLAGS = {"precision": "train.precision", "compile": "train.compile", "loader": "data.loader",
               "batch_size": "data.batch_size", "epochs": "train.epochs", "steps": "train.max_steps",
               "lr": "train.lr", "loss_impl": "loss.impl", "seq_len": "data.seq_len", "stride": "data.stride"}
"""Named ``train`` flags -> the config field each sets (``--seed``, ``--augment`` and ``--frames`` are handled
below)."""


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="packed train store, or a packed dataset root holding train.zarr")
    p.add_argument("--preset", default="ours", help="run preset: ours (default: our recipe, 477,664 params), "
                   "reference (the course project's recipe), ours-small / reference-small (minutes on a CPU), "
                   "tiny (tests)")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (checkpoints, logs, plots)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace what a non-empty --out holds (the old run stays "
                   "until the new one has its first checkpoint)")
    p.add_argument("--other-data", action="store_true",
                   help="with --resume: continue on data other than the run's (refused by default)")
    p.add_argument("--init", type=Path, default=None, metavar="RUN_OR_WEIGHTS",
                   help="start from these weights (a fine-tune: fresh optimizer, schedule and data position): a "
                   "checkpoint or run folder, or the course project's model_weights.pth")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "no"],
                   help="mixed precision (default: auto = bf16 where the device computes it natively, else fp32 "
                   "on a CPU, fp16 on an older GPU)")
    p.add_argument("--compile", choices=["auto", "on", "off"], help="torch.compile the step (default: preset's)")
    p.add_argument("--loader", choices=["auto", "dali", "torch"], help="data loader (default: auto)")
    p.add_argument("--batch-size", type=int, help="windows (trajectories) per batch per process")
    p.add_argument("--seq-len", type=int, help="frames per training window (default: the episodes' own length when "
                   "they all have the same, as in two-rooms; needed when episodes differ in length)")
    p.add_argument("--stride", type=int, help="frames between the starts of an episode's windows (default: --seq-len, "
                   "windows that do not overlap)")
    p.add_argument("--epochs", type=int, help="epochs over the train split")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    p.add_argument("--frames", help="training budget in frames, e.g. 3.75M or 300k (overrides "
                   "--epochs; the run takes frames / (batch x processes x frames per window) steps, rounded up)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--loss-impl", choices=["torch", "triton"], help="VICReg var/cov implementation")
    p.add_argument("--augment", choices=["none", "flips", "full"], help="augmentation preset")
    p.add_argument("--seed", type=int, help="seed for init, sampler and RNG")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any config field, e.g. --set train.save_every=200 --set model.gru_dropout=0 (repeatable); "
                   "applied last: defaults < preset < the flags above < --set")
    p.add_argument("--no-progress", action="store_true", help="print log lines instead of a progress bar")


def config_from_args(args):
    """The run config of a ``train`` command line: defaults < preset (or the resumed run's config) < flags < --set."""
    import json

    from jepa_fast.config import AUGMENT_PRESETS, resolve, run_config_from_dict, run_preset
    from jepa_fast.schedule import frame_count

    if args.resume and (args.out / "config.json").exists():
        f = args.out / "config.json"
        try:
            saved = json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise JepaFastError(f"{f}: not valid JSON ({e}); it is damaged: restore it, or start a new run from the "
                                "weights with --init") from None
        try:
            base = run_config_from_dict(saved)
        except JepaFastError as e:
            raise JepaFastError(f"{f}: {e}") from None
    else:
        base = run_preset(args.preset)
    if args.steps is not None and args.steps < 1:
        raise JepaFastError(f"--steps {args.steps}: must be >= 1 (whole epochs: --epochs)")
    frames = frame_count(args.frames) if args.frames is not None else None
    if args.steps is not None and frames is not None:
        raise JepaFastError(f"--steps {args.steps} and --frames {args.frames}: a run's length is one of them")
    # a length given now replaces the other length field of the preset or the resumed run (first, so that
    # no intermediate config holds both)
    flags = {"train.frames": -1} if args.steps is not None else {"train.max_steps": -1} if frames else {}
    flags.update({key: getattr(args, attr) for attr, key in TRAIN_FLAGS.items() if getattr(args, attr) is not None})
    if frames is not None:
        flags["train.frames"] = frames
    if args.seed is not None:
        flags.update({"train.seed": args.seed, "data.seed": args.seed})
    if args.augment is not None:
        flags["data.augment"] = AUGMENT_PRESETS[args.augment]
    return resolve(base, flags, args.set)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the JEPA on a packed store (Accelerate, mixed precision, compile)",
                       description="Train the JEPA world model. For several processes/GPUs: accelerate "
                       "launch -m jepa_fast train DATA ... (or torchrun --nproc_per_node N -m jepa_fast train).")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> None:
    import logging

    from jepa_fast.train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = config_from_args(args)
    asked = args.augment is not None or any(s.partition("=")[0].strip().startswith("data.augment") for s in args.set)
    if not (args.resume or asked):
        run = preset_flips_for(run, args.data)
    train(run, args.data, args.out, resume=args.resume, progress=not args.no_progress,
          init=args.init, overwrite=args.overwrite, other_data=args.other_data)


def preset_flips_for(run, data: Path):
    """The run with the preset's flips that ``data`` declares no rule for turned off (said in one line); flips
    asked for with ``--augment`` or ``--set`` are left to the loader, which refuses them on such data."""
    import dataclasses

    from jepa_fast.data.batch import undeclared_flips_off
    from jepa_fast.data.reader import StoreReader
    from jepa_fast.train import resolve_store

    store = resolve_store(data)
    augment, off = undeclared_flips_off(run.data.augment, StoreReader(store).spec())
    if not off:
        return run
    if os.environ.get("RANK", "0") == "0":  # one line for a multi-process launch
        print(f"augment: {', '.join(f'data.augment.flip_{n}' for n in off)} of preset {run.preset} off: {store} "
              "declares no flip rule for it (how a flip changes the actions and targets)", file=sys.stderr)
    return dataclasses.replace(run, data=dataclasses.replace(run.data, augment=augment))


# ---------------------------------------------------------------------------------------------
# probe


def _add_probe(sub) -> None:
    p = sub.add_parser("probe", help="the course project's probing evaluation of a trained checkpoint",
                       description="Probe a checkpoint (or a run folder: its latest checkpoint): two-rooms data with "
                       "the original protocol on probe_normal, probe_wall, wall_other and expert; other data by "
                       "regressing the store's targets on held-out episodes. Writes metrics.txt (original format), "
                       "metrics.json and plots.")
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (step_*) or run folder")
    p.add_argument("--data", type=Path, required=True, help="packed dataset root: two-rooms, its probe_* stores; other "
                   "data, folders holding train.zarr and val.zarr with targets (e.g. probe/train.zarr, probe/val.zarr)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/probe)")
    p.add_argument("--no-cache", action="store_true",
                   help="re-run the model on every prober batch, like the original evaluator (slow; same numbers)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="precision of the rollout embeddings (default fp32, as the original evaluator; a lower "
                   "one is faster but moves the numbers, and is recorded in metrics.json)")
    p.add_argument("--seq-len", type=int, default=0, help="frames per probed window, data other than two-rooms "
                   "(default: the run's training window)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args) -> None:
    from jepa_fast.config import ProbeConfig
    from jepa_fast.probe_report import format_table, run_probe

    r = run_probe(args.checkpoint, args.data, args.out, ProbeConfig(cache=not args.no_cache, seq_len=args.seq_len),
                  args.device, args.precision, overwrite=args.overwrite)
    print(format_table(r))
    print(f"probed in {r['seconds']:.1f} s; metrics.txt, metrics.json and plots in {r['out']}")


# ---------------------------------------------------------------------------------------------
# the course project's weights


def _add_reference(sub) -> None:
    p = sub.add_parser("import-reference", help="import the course project's model_weights.pth as a checkpoint",
                       description="Read the course project's model_weights.pth (its JEPA state dict, raw input "
                       "units), check every key and shape, and write a checkpoint folder that jepa-fast probe "
                       "and jepa-fast train --init read.")
    p.add_argument("weights", type=Path, help="model_weights.pth (a state dict, or a dict with 'model'/'state_dict')")
    p.add_argument("--out", type=Path, required=True, help="run folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")
    p.set_defaults(func=_cmd_import_reference)
    p = sub.add_parser("export-reference", help="export a reference-architecture checkpoint as model_weights.pth",
                       description="Write a checkpoint of the reference architecture in the course project's "
                       "model_weights.pth layout (raw input units: our input scale is folded into the first "
                       "convolutions), loadable with load_state_dict(strict=True) by its code.")
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (step_*) or run folder")
    p.add_argument("--out", type=Path, required=True, help="the .pth file to write")
    p.add_argument("--rollout-differs", action="store_true",
                   help="export a residual-predictor model ('ours') anyway: its evaluator will compute another rollout")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_export_reference)


def _cmd_import_reference(args) -> None:
    from jepa_fast.reference import import_reference

    found = import_reference(args.weights, args.out, overwrite=args.overwrite)
    print(f"imported {args.weights} -> {found}; probe it with: jepa-fast probe {args.out} --data PACKED")


def _cmd_export_reference(args) -> None:
    from jepa_fast.reference import export_reference

    out = export_reference(args.checkpoint, args.out, rollout_differs=args.rollout_differs, overwrite=args.overwrite)
    print(f"wrote {out} (the course project's layout; load it with load_state_dict(strict=True))")


# ---------------------------------------------------------------------------------------------
# bench


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmarks in bench/ and write a dated report",
                       description="Run every benchmark (or --only some) and write bench/results/report_*.md. "
                       "Needs a source checkout (the bench/ folder).")
    p.add_argument("--only", default=None,
                   help="comma-separated subset: generate,pack,loader,vicreg,train,probe,plan,quality")
    p.add_argument("--skip", default="", help="comma-separated benches to skip")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> None:
    import subprocess

    root = Path.cwd()
    if not (root / "bench" / "run_all.py").exists():
        raise JepaFastError("jepa-fast bench runs the bench/ folder of a source checkout; run it from the checkout's "
                            "root (or: python -m bench.run_all)")
    argv = (["--only", args.only] if args.only else []) + (["--skip", args.skip] if args.skip else [])
    if subprocess.call([sys.executable, "-m", "bench.run_all", *argv], cwd=root) != 0:
        raise JepaFastError("some benchmarks failed; see the report")


# ---------------------------------------------------------------------------------------------
# demo: the README's main command


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole job on the small preset: simulate -> pack -> train -> probe",
                       description="Run the main job end to end on an embedded default (the small preset). "
                       "Re-running reuses finished stages found in --out.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for data, run and reports")
    p.add_argument("--seed", type=int, default=0, help="random seed for data and training")
    p.add_argument("--fresh", action="store_true", help="redo every stage even if its output exists")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it holds files that are not a demo's (never needed for a demo folder)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> None:
    from jepa_fast.demo import run_demo

    run_demo(args.out, seed=args.seed, fresh=args.fresh, overwrite=args.overwrite)


# ---------------------------------------------------------------------------------------------
# plan


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="closed-loop goal reaching in the two-rooms simulator with a trained model",
                       description="Plan with a run's world model (CEM or MPPI in latent space, re-planned every few "
                       "steps) on seeded cross-room and same-room episodes, next to random actions and two oracles "
                       "(true dynamics with a Euclidean or a door-aware cost) on the same episodes; writes report.md, "
                       "results.json and plots. Protocol: jepa_fast/plan/__init__.py.")
    p.add_argument("checkpoint", type=Path, help="run folder or checkpoint (ours, or an imported course checkpoint)")
    p.add_argument("--compare", type=Path, action="append", default=[], help="another run or checkpoint on the same "
                   "episodes (repeatable)")
    p.add_argument("--planner", choices=["cem", "mppi"], default=None, help="sampling planner (default cem)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per set (default 40)")
    p.add_argument("--samples", type=int, default=None, help="action sequences per episode per iteration (default 256)")
    p.add_argument("--iterations", type=int, default=None, help="sampling iterations per re-plan (default 3)")
    p.add_argument("--horizon", type=int, default=None, help="planned actions (default 16)")
    p.add_argument("--seed", type=int, default=None, help="seed of the episodes and the sampling (default 0)")
    p.add_argument("--budgets", default="", help="also plan the cross-room set at these sample counts (e.g. 64,1024) "
                   "for the success-vs-budget plot (RUN's planner; with --graph, the graph one)")
    p.add_argument("--graph", type=Path, default=None, metavar="PACKED", help="also plan with subgoals from "
                   "this packed two-rooms training data (a latent roadmap of each episode's layout; "
                   "jepa_fast/plan/graph.py)")
    p.add_argument("--no-baselines", action="store_true", help="skip random and the two oracles")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="any PlanConfig field, e.g. --set cost=final --set replan_every=2 (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/plan)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args) -> None:
    from jepa_fast.config import PlanConfig, apply_overrides
    from jepa_fast.plan import run_plan

    cfg = PlanConfig()
    for flag in ("planner", "episodes", "samples", "iterations", "horizon", "seed"):
        if getattr(args, flag) is not None:
            cfg = apply_overrides(cfg, [f"{flag}={getattr(args, flag)}"])
    cfg = apply_overrides(cfg, args.overrides)
    try:
        budgets = tuple(int(b) for b in args.budgets.split(",") if b.strip())
    except ValueError:
        raise JepaFastError(f"--budgets {args.budgets}: comma-separated sample counts, e.g. 64,1024") from None
    r = run_plan(args.checkpoint, args.out, cfg, args.compare, args.device, budgets, not args.no_baselines,
                 args.overwrite, args.graph)
    print(f"report.md, results.json and plots in {r['out']}")


def add_commands(sub) -> None:
    _add_train(sub)
    _add_probe(sub)
    _add_plan(sub)
    _add_reference(sub)
    _add_bench(sub)
    _add_demo(sub)
