"""``jepa-fast`` data commands: generate, show, pack, inspect (thin wrappers over jepa_fast.sim and jepa_fast.data)."""

from __future__ import annotations

from pathlib import Path

from jepa_fast.errors import JepaFastError

# ---------------------------------------------------------------------------------------------
# generate / show


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="simulate the two-rooms environment and write a dataset root (all splits)",
        description="Simulate the two-rooms environment (docs/TWO_ROOMS.md) and write every split of a "
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_show)


def _cmd_show(args) -> None:
    import numpy as np

    from jepa_fast.viz import trajectory_grid

    if args.n < 1 or args.frames < 1:
        raise JepaFastError("--n and --frames must be >= 1")
    if args.out.is_dir():
        raise JepaFastError(f"--out {args.out} is a folder; give the PNG file to write, e.g. {args.out / 'sample.png'}")
    from jepa_fast import atomic

    inputs = [args.split] if (args.split / "zarr.json").exists() else [args.split / f"{n}.npy" for n in
                                                                        ("states", "actions", "locations")]
    atomic.check_apart(args.out, {f"input {p.name}": p for p in inputs}, "--out")
    if args.out.exists() and not args.overwrite:
        raise JepaFastError(f"--out {args.out} exists; pass --overwrite to replace it")
    if (args.split / "zarr.json").exists():
        from jepa_fast.data.reader import StoreReader

        reader = StoreReader(args.split)
        N = reader.n
        get_states = lambda sl: np.stack([reader.decode(i) for i in range(sl.start, sl.stop)])  # noqa: E731
        all_locs = reader.locations()
    else:
        from jepa_fast.data.source import open_source

        source = open_source(args.split)  # one-line errors for a missing, truncated or non-.npy file
        N = len(source.states)
        get_states = lambda sl: np.asarray(source.states[sl])  # noqa: E731
        all_locs = source.locations
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
    p.add_argument("--clip-outliers", action="store_true",
                   help="float input: clip values far above the rest of their channel (> 64x its sampled 99.9th "
                   "percentile) instead of refusing the pack; the count is recorded in the store")
    p.add_argument("--resume", action="store_true", help="continue an interrupted pack after its last complete shard")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_pack(args) -> None:
    from jepa_fast.config import PackConfig
    from jepa_fast.data.pack import pack_path

    cfg = PackConfig(codec=args.codec, zstd_level=args.zstd_level, chunk_mib=args.chunk_mib,
                     chunk_trajectories=args.chunk_trajectories, scale=args.scale, workers=args.workers,
                     clip_outliers=args.clip_outliers)
    results = pack_path(args.src, args.dst, cfg, overwrite=args.overwrite, resume=args.resume,
                        progress=not args.no_progress)
    for r in results:
        speed = f"{r['frames'] / r['seconds']:,.0f} frames/s" if r["seconds"] > 0 else "kept from before"
        print(f"{r['store']}: {r['n']:,} trajectories, {speed}, "
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


def add_commands(sub) -> None:
    _add_generate(sub)
    _add_show(sub)
    _add_pack(sub)
    _add_inspect(sub)
