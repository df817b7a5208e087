"""``jepa-fast``: the command line. Each subcommand is a thin wrapper over a library function.

Errors meant for users (``JepaFastError``, including bad config values) are printed as one line,
``error: ...``, with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jepa_fast.errors import JepaFastError

# ---------------------------------------------------------------------------------------------
# generate / show


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="simulate the two-rooms environment and write a dataset root (all splits)",
        description="Simulate the two-rooms environment (TWO_ROOMS_SPEC.md) and write every split of a "
        "dataset root in the original on-disk format: <out>/<split>/{states,actions,locations}.npy.",
    )
    p.add_argument("--preset", default="small", help="split sizes: small (demo, ~6k trajectories), "
                   "full (147,008 train trajectories = 2.5M frames), tiny (tests). Default: small")
    p.add_argument("--out", required=True, type=Path, help="dataset root folder to create")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    p.add_argument("--dtype", default="float32", choices=["float32", "uint8"],
                   help="float32: pdf value scale of the real data (agent peak 0.0942); uint8: x255 scale")
    p.add_argument("--image-size", type=int, default=65, help="frame side, 65 (real data) or 64")
    p.add_argument("--n", type=int, default=None, help="override the number of train trajectories")
    p.add_argument("--splits", default=None,
                   help="comma-separated subset of splits to write (default: all seven)")
    p.add_argument("--cross-wall-rate", type=float, default=None,
                   help="fraction of random trajectories that pass the door (default 0.1)")
    p.add_argument("--format", default="npy", choices=["npy", "zarr"],
                   help="npy: the original format (float32 .npy per split); zarr: straight into the packed store "
                   "schema (<out>/<split>.zarr), so the full preset never needs 85 GB of float32 on disk")
    p.add_argument("--codec", default="lz4", choices=["lz4", "zstd"], help="store codec with --format zarr")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args) -> None:
    from jepa_fast.config import SimConfig, dataset_preset
    from jepa_fast.sim.generate import generate_dataset

    sim_kwargs = {"image_size": args.image_size, "value_scale": "uint8" if args.dtype == "uint8" else "pdf"}
    if args.cross_wall_rate is not None:
        sim_kwargs["cross_wall_rate"] = args.cross_wall_rate
    sim = SimConfig(**sim_kwargs)
    splits = args.splits.split(",") if args.splits else None
    ds = dataset_preset(args.preset, n_train=args.n, splits=splits)
    from jepa_fast.config import PackConfig

    summary = generate_dataset(args.out, ds, sim, seed=args.seed, dtype=args.dtype, overwrite=args.overwrite,
                               progress=not args.no_progress, fmt=args.format, pack=PackConfig(codec=args.codec))
    frames = sum(s["n"] * s["T"] for s in summary["splits"].values())
    print(f"wrote {len(summary['splits'])} splits, {frames:,} frames to {args.out} in {summary['seconds']:.1f} s")


def _add_show(sub) -> None:
    p = sub.add_parser("show", help="draw a few trajectories of a split as a PNG grid",
                       description="Draw a grid of trajectories from a split folder (.npy) with the agent "
                       "path overlaid, one row per trajectory.")
    p.add_argument("split", type=Path, help="split folder holding states.npy / actions.npy / locations.npy, "
                   "or a packed <split>.zarr store")
    p.add_argument("--out", type=Path, default=Path("sample.png"), help="PNG to write (default sample.png)")
    p.add_argument("--n", type=int, default=4, help="how many trajectories (rows), default 4")
    p.add_argument("--frames", type=int, default=6, help="frames per row, default 6")
    p.add_argument("--start", type=int, default=0, help="index of the first trajectory shown")
    p.set_defaults(func=_cmd_show)


def _cmd_show(args) -> None:
    import numpy as np

    from jepa_fast.sim.generate import load_split
    from jepa_fast.viz import trajectory_grid

    if args.n < 1 or args.frames < 1:
        raise JepaFastError("--n and --frames must be >= 1")
    if (args.split / "zarr.json").exists():
        from jepa_fast.data.reader import StoreReader

        reader = StoreReader(args.split)
        N = reader.n
        get_states = lambda sl: np.stack([reader.decode(i) for i in range(sl.start, sl.stop)])  # noqa: E731
        all_locs = reader.locations()
    else:
        data = load_split(args.split)
        N = len(data["states"])
        get_states = lambda sl: np.asarray(data["states"][sl])  # noqa: E731
        all_locs = data.get("locations")
    if not 0 <= args.start < N:
        raise JepaFastError(f"--start {args.start}: {args.split} holds {N} trajectories")
    sel = slice(args.start, min(N, args.start + args.n))
    locs = None if all_locs is None else np.asarray(all_locs[sel])
    trajectory_grid(get_states(sel), locs, args.out, n_frames=args.frames, title=str(args.split))
    print(f"wrote {args.out}")


# ---------------------------------------------------------------------------------------------
# pack / inspect


def add_pack_arguments(p) -> None:
    p.add_argument("src", type=Path, help="a raw split folder (states.npy, actions.npy[, locations.npy]) or a "
                   "dataset root holding several split folders")
    p.add_argument("dst", type=Path, help="the store to create: DST.zarr for one split, or a folder that will "
                   "hold <split>.zarr for every split of a dataset root")
    p.add_argument("--codec", default="lz4", choices=["lz4", "zstd"],
                   help="lz4 (default): raw LZ4 blocks the GPU inflates; zstd: ~1.5x smaller, CPU decode only")
    p.add_argument("--zstd-level", type=int, default=3, help="zstd level 1-22 (default 3)")
    p.add_argument("--chunk-mib", type=float, default=1.0, help="target raw MiB per shard of k trajectories")
    p.add_argument("--chunk-trajectories", type=int, default=0, help="k, trajectories per shard (0 = from --chunk-mib)")
    p.add_argument("--scale", default="sample", choices=["sample", "exact"],
                   help="float quantisation scale: sample = 1.01 x max of a strided sample (one pass; repacks "
                   "with the exact max if a value would clip), exact = max over all data (an extra pass)")
    p.add_argument("--workers", type=int, default=2, help="threads that quantise, compress and write (default 2)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted pack after its last complete shard")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_pack(args) -> None:
    from jepa_fast.config import PackConfig
    from jepa_fast.data.pack import pack_path

    cfg = PackConfig(codec=args.codec, zstd_level=args.zstd_level, chunk_mib=args.chunk_mib,
                     chunk_trajectories=args.chunk_trajectories, scale=args.scale, workers=args.workers)
    results = pack_path(args.src, args.dst, cfg, overwrite=args.overwrite, resume=args.resume,
                        progress=not args.no_progress)
    for r in results:
        print(f"{r['store']}: {r['n']:,} trajectories, {r['frames'] / r['seconds']:,.0f} frames/s, "
              f"{r['bytes_in'] / max(r['bytes_out'], 1):.1f}x smaller than the source states")


def _add_pack(sub) -> None:
    p = sub.add_parser("pack", help="pack raw split folders (.npy) into chunked Zarr stores, once",
                       description="Pack a raw split folder (or every split of a dataset root) into the jepa-fast "
                       "Zarr store: uint8 frames, k trajectories per shard, one LZ4 block per trajectory. Streams "
                       "with bounded memory, atomic (work in DST.partial), resumable.")
    add_pack_arguments(p)
    p.set_defaults(func=run_pack)


def add_inspect_arguments(p) -> None:
    p.add_argument("store", type=Path, help="a <split>.zarr store, or a folder of them")
    p.add_argument("--verify", action="store_true", help="re-read and decompress every chunk")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_inspect(args) -> None:
    import json

    from jepa_fast.data.reader import StoreReader

    stores = [args.store] if (args.store / "zarr.json").exists() else sorted(args.store.rglob("*.zarr"))
    if not stores:
        raise JepaFastError(f"{args.store}: no .zarr store found")
    for path in stores:
        reader = StoreReader(path)
        info = reader.describe()
        if args.verify:
            info["verified_chunks"] = reader.verify()
        if args.json:
            print(json.dumps(info))
            continue
        print(f"{path}")
        print(f"  shape (N,T,C,H,W)   {tuple(info['shape'])}   uint8, scale {[f'{s:.4g}' for s in info['scale']]}")
        print(f"  chunking            {info['trajectories_per_shard']} trajectories per shard, {info['shards']:,} "
              f"shards, one {info['codec']} chunk per trajectory")
        print(f"  stored              {info['stored_bytes'] / 1e6:,.1f} MB: {info['ratio_vs_uint8']}x smaller than "
              f"uint8, {info['ratio_vs_float32']}x smaller than float32")
        for k, v in (info["stats"] or {}).items():
            print(f"  {k:<19} {v}")
        if args.verify:
            print(f"  verify              OK, {info['verified_chunks']:,} chunks decoded")


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="describe a packed store (shape, chunking, codec, ratio, stats)",
                       description="Describe packed stores; --verify decompresses every chunk.")
    add_inspect_arguments(p)
    p.set_defaults(func=run_inspect)


# ---------------------------------------------------------------------------------------------
# train


TRAIN_FLAGS = {"precision": "train.precision", "compile": "train.compile", "loader": "data.loader",
               "batch_size": "data.batch_size", "epochs": "train.epochs", "steps": "train.max_steps",
               "lr": "train.lr", "loss_impl": "loss.impl"}
"""Named ``train`` flags -> the config field each sets (``--seed`` and ``--augment`` are handled below)."""


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="packed train store, or a packed dataset root holding train.zarr")
    p.add_argument("--preset", default="ours", help="run preset: ours (default: our recipe, 477,664 params), "
                   "reference (the course project's recipe), ours-small / reference-small (minutes on a CPU), "
                   "tiny (tests)")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (checkpoints, logs, plots)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "no"],
                   help="mixed precision (default: auto = bf16 where the device computes it natively, else fp32 "
                   "on a CPU, fp16 on an older GPU)")
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
                   help="any config field, e.g. --set train.save_every=200 --set model.gru_dropout=0 (repeatable); "
                   "applied last: defaults < preset < the flags above < --set")
    p.add_argument("--no-progress", action="store_true", help="print log lines instead of a progress bar")


def config_from_args(args):
    """The run config of a ``train`` command line: defaults < preset (or the resumed run's config) < flags < --set."""
    import json

    from jepa_fast.config import AUGMENT_PRESETS, resolve, run_config_from_dict, run_preset

    if args.resume and (args.out / "config.json").exists():
        base = run_config_from_dict(json.loads((args.out / "config.json").read_text()))
    else:
        base = run_preset(args.preset)
    flags = {key: getattr(args, attr) for attr, key in TRAIN_FLAGS.items() if getattr(args, attr) is not None}
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
    train(config_from_args(args), args.data, args.out, resume=args.resume, progress=not args.no_progress)


# ---------------------------------------------------------------------------------------------
# probe


def _add_probe(sub) -> None:
    p = sub.add_parser("probe", help="the course project's probing evaluation of a trained checkpoint",
                       description="Probe a checkpoint (or a run folder: its latest checkpoint) with the original "
                       "protocol on probe_normal, probe_wall, wall_other and expert; writes metrics.txt (original "
                       "format), metrics.json and plots.")
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (step_*) or run folder")
    p.add_argument("--data", type=Path, required=True, help="packed dataset root with the probe_* stores")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/probe)")
    p.add_argument("--no-cache", action="store_true",
                   help="re-run the model on every prober batch, like the original evaluator (slow; same numbers)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args) -> None:
    from jepa_fast.config import ProbeConfig
    from jepa_fast.probe import format_table, run_probe

    r = run_probe(args.checkpoint, args.data, args.out, ProbeConfig(cache=not args.no_cache), args.device)
    print(format_table(r["losses"]))
    print(f"probed in {r['seconds']:.1f} s; metrics.txt, metrics.json and plots in {r['out']}")


# ---------------------------------------------------------------------------------------------
# bench


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmarks in bench/ and write a dated report",
                       description="Run every benchmark (or --only some) and write bench/results/report_*.md. "
                       "Needs a source checkout (the bench/ folder).")
    p.add_argument("--only", default=None,
                   help="comma-separated subset: generate,pack,loader,vicreg,train,probe,quality")
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
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> None:
    from jepa_fast.demo import run_demo

    run_demo(args.out, seed=args.seed, fresh=args.fresh)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jepa-fast",
        description="High-throughput trainer for action-conditioned JEPA world models on two-rooms data.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    _add_show(sub)
    _add_pack(sub)
    _add_inspect(sub)
    _add_train(sub)
    _add_probe(sub)
    _add_bench(sub)
    _add_demo(sub)
    return parser


def run_command(func, args) -> int:
    """Run an entry point's function: user errors become one line on stderr and exit status 2."""
    try:
        func(args)
    except JepaFastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
