"""``jepa-fast`` data commands: generate, show, pack, inspect (thin wrappers over jepa_fast.sim and jepa_fast.data)."""

from __future__ import annotations

from pathlib import Path

from jepa_fast.errors import JepaFastError
from jepa_fast.spec import flips_to_json

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
    p = sub.add_parser("show", help="draw a few episodes of a split as a PNG grid",
                       description="Draw a grid of episodes from a split (a folder of .npy files, an HDF5 file or a "
                       "packed store), one row per episode (two-rooms data: the agent's path overlaid).")
    p.add_argument("split", type=Path, help="split folder holding states.npy / actions.npy [/ locations.npy], an HDF5 "
                   "file of episodes, or a packed <split>.zarr store")
    p.add_argument("--out", type=Path, default=Path("sample.png"), help="PNG to write (default sample.png)")
    p.add_argument("--n", type=int, default=4, help="how many episodes (rows), default 4")
    p.add_argument("--frames", type=int, default=6, help="frames per row, default 6")
    p.add_argument("--start", type=int, default=0, help="index of the first episode shown")
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

    packed = (args.split / "zarr.json").exists()
    inputs = [args.split] if packed or args.split.is_file() else [
        p for p in (args.split / f"{n}.npy" for n in ("states", "actions", "locations", "targets")) if p.exists()]
    atomic.check_apart(args.out, {f"input {p.name}": p for p in inputs}, "--out")
    if args.out.exists() and not args.overwrite:
        raise JepaFastError(f"--out {args.out} exists; pass --overwrite to replace it")
    if packed:
        from jepa_fast.data.reader import StoreReader

        reader = StoreReader(args.split)
        starts, spec = reader.episode_starts(), reader.spec()
        all_targets = reader.targets()

        def episodes(e0: int, e1: int):
            frames = [reader.read_frames(int(starts[e]), int(starts[e + 1] - starts[e])) for e in range(e0, e1)]
            targets = None if all_targets is None else [all_targets[starts[e]:starts[e + 1]] for e in range(e0, e1)]
            return frames, targets
    else:
        from jepa_fast.data.pack import open_episodes

        source = open_episodes(args.split)  # one-line errors for a missing, truncated or unreadable file
        starts = np.concatenate([[0], np.cumsum(source.lengths)])
        spec = source

        def episodes(e0: int, e1: int):
            x, _, targets = source.read(e0, e1)
            return np.split(x, np.cumsum(source.lengths[e0:e1])[:-1]), targets
    N = len(starts) - 1
    if not 0 <= args.start < N:
        raise JepaFastError(f"--start {args.start}: {args.split} holds {N} episodes")
    frames, targets = episodes(args.start, min(N, args.start + args.n))
    T = min(len(f) for f in frames)  # a grid needs one length: the shortest episode's
    states = np.stack([f[:T] for f in frames])
    path = None  # the agent's path is drawn on two-rooms data, whose targets are its (x, y) in pixels
    if targets is not None and spec.protocol == "two-rooms":
        path = np.stack([t[:T] for t in targets])
    trajectory_grid(states, path, args.out, n_frames=args.frames, title=str(args.split))
    print(f"wrote {args.out}")


# ---------------------------------------------------------------------------------------------
# pack / inspect


def add_pack_arguments(p) -> None:
    p.add_argument("src", type=Path, help="a split folder of .npy files (states.npy, actions.npy[, locations.npy or "
                   "targets.npy][, episode_ends.npy]), an HDF5 file of episodes, or a dataset root holding several of "
                   "either")
    p.add_argument("dst", type=Path, help="the store to create: DST.zarr for one split, or a folder that will "
                   "hold <split>.zarr for every split of a dataset root")
    p.add_argument("--codec", default="lz4", choices=["lz4", "zstd"],
                   help="lz4 (default): raw LZ4 blocks the GPU inflates; zstd: ~1.5x smaller, CPU decode only")
    p.add_argument("--zstd-level", type=int, default=3, help="zstd level 1-22 (default 3)")
    p.add_argument("--chunk-mib", type=float, default=1.0, help="target raw MiB per shard of k rows")
    p.add_argument("--chunk-trajectories", "--chunk-rows", dest="chunk_rows", type=int, default=0,
                   help="k, rows per shard (0 = from --chunk-mib)")
    p.add_argument("--row-frames", type=int, default=0,
                   help="L, frames per row, the unit a window's frames are decoded in (0 = the episodes' length when "
                   "they all have the same, else 16)")
    p.add_argument("--channels", default="auto", choices=["auto", "first", "last"],
                   help="where the frames' channel axis is: (C, H, W) first or (H, W, C) last (auto: the axis of "
                   "size 1-4 when only one is)")
    p.add_argument("--scale", default="sample", choices=["sample", "exact"],
                   help="float quantisation scale: sample = 1.01 x max of a strided sample (one pass; repacks "
                   "with the exact max if a value would clip), exact = max over all data (an extra pass)")
    p.add_argument("--workers", type=int, default=2, help="threads that quantise, compress and write (default 2)")
    p.add_argument("--clip-outliers", action="store_true",
                   help="float input: clip values far above the rest of their channel (> 64x its sampled 99.9th "
                   "percentile) instead of refusing the pack; the count is recorded in the store")
    h5 = p.add_argument_group("HDF5 input (pip install 'jepa-fast[hdf5]')")
    h5.add_argument("--frames", default=None, help="dataset of the frames, inside an episode group (default: the one "
                    "uint8 image dataset)")
    h5.add_argument("--actions", default=None, help="dataset of the actions (default: actions)")
    h5.add_argument("--targets", default=None, help="comma-separated datasets of per-frame probe targets, e.g. "
                    "obs/agent_pos,obs/block_pose (default: none)")
    h5.add_argument("--target-names", default=None, help="comma-separated names of the target components (default: "
                    "from the dataset names)")
    h5.add_argument("--episodes", default=None, help="glob of the episode groups, e.g. 'data/demo_*' (default: the "
                    "numbered groups holding the actions; none: the flat D4RL layout split at terminals/timeouts)")
    h5.add_argument("--meta", default=None, type=Path, help="a meta.json naming the channels and targets and giving "
                    "the flip rules, as a .npy folder's (default: X.meta.json beside X.hdf5, if there is one)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted pack after its last complete shard")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_pack(args) -> None:
    from jepa_fast.config import PackConfig
    from jepa_fast.data.pack import pack_path

    cfg = PackConfig(codec=args.codec, zstd_level=args.zstd_level, chunk_mib=args.chunk_mib,
                     chunk_trajectories=args.chunk_rows, row_frames=args.row_frames, scale=args.scale,
                     workers=args.workers, clip_outliers=args.clip_outliers)
    keys = {k: getattr(args, k) for k in ("frames", "actions", "targets", "target_names", "episodes", "meta")
            if getattr(args, k) is not None}
    results = pack_path(args.src, args.dst, cfg, overwrite=args.overwrite, resume=args.resume,
                        progress=not args.no_progress, channels=args.channels, keys=keys)
    for r in results:
        speed = f"{r['frames'] / r['seconds']:,.0f} frames/s" if r["seconds"] > 0 else "kept from before"
        meta = f"; names and flip rules from {r['meta']}" if r.get("meta") else ""
        print(f"{r['store']}: {r['n']:,} episodes, {r['frames']:,} frames, {speed}, "
              f"{r['bytes_in'] / max(r['bytes_out'], 1):.1f}x smaller than the source frames{meta}")


def _add_pack(sub) -> None:
    p = sub.add_parser("pack", help="pack trajectories (.npy folders, HDF5 files) into chunked Zarr stores, once",
                       description="Pack a split (a folder of .npy files or an HDF5 file of episodes), or every split "
                       "of a dataset root, into the jepa-fast Zarr store: uint8 frames (floats quantised per channel), "
                       "episodes back to back in rows of L frames, k rows per shard, one LZ4 block per row. Streams "
                       "with bounded memory, atomic (work in DST.partial), resumable.")
    add_pack_arguments(p)
    p.set_defaults(func=run_pack)


def add_inspect_arguments(p) -> None:
    p.add_argument("store", type=Path, help="a <split>.zarr store, or a folder of them")
    p.add_argument("--verify", action="store_true", help="re-read and decompress every chunk")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def describe_store(r) -> dict:
    """What ``jepa-fast inspect`` prints of a store (a ``StoreReader``): episodes, shapes, chunking, sizes, stats."""
    import numpy as np

    from jepa_fast.data.reader import store_nbytes

    stored = store_nbytes(r.path)
    lengths = np.diff(r.episode_starts())
    raw = r.frames * r.C * r.H * r.W
    spec = r.spec()
    return {"store": str(r.path), "frames": r.frames, "episodes": len(lengths),
            "episode_length": [int(lengths.min()), int(lengths.max())], "frame_shape": [r.C, r.H, r.W],
            "action_size": spec.action_size, "rows": r.rows, "row_frames": r.L, "rows_per_shard": r.k,
            "shards": int(-(-r.rows // r.k)), "codec": r.codec.name, "scale": r.scale.tolist(),
            "value_max": r.attrs.get("value_max"), "source_dtype": r.attrs.get("source_dtype"), "stored_bytes": stored,
            "ratio_vs_uint8": round(raw / max(stored, 1), 2), "ratio_vs_float32": round(4 * raw / max(stored, 1), 2),
            "target_names": list(spec.target_names), "channel_names": list(spec.channel_names),
            "static_channels": list(spec.static_channels), "protocol": spec.protocol, "stats": r.attrs.get("stats"),
            "flips": flips_to_json(spec.flips), "schema_version": r.version}


def describe_flips(spec) -> str:
    """The store's flip rules in words, e.g. 'lr: a0 -> -a0, agent_x -> 64 - agent_x'."""
    def mirrored(name, c):
        return f"{name} -> -{name}" if c == 0 else f"{name} -> {c:g} - {name}"

    parts = []
    for flip, rule in sorted(spec.flips.items()):
        what = ([f"a{i} -> -a{i}" for i in rule.negate] + [mirrored(f"a{i}", c) for i, c in rule.mirror_actions]
                + [mirrored(spec.target_names[k], c) for k, c in rule.mirror])
        parts.append(f"{flip}: {', '.join(what) or 'frames only'}")
    return "; ".join(parts) or "none (flip augmentation is refused on this data)"


def run_inspect(args) -> None:
    import json

    from jepa_fast.data.reader import StoreReader

    stores = [args.store] if (args.store / "zarr.json").exists() else sorted(args.store.rglob("*.zarr"))
    if not stores:
        raise JepaFastError(f"{args.store}: no .zarr store found")
    for path in stores:
        reader = StoreReader(path)
        info = describe_store(reader)
        if args.verify:
            info["verified_chunks"] = reader.verify()
        if args.json:
            print(json.dumps(info))
            continue
        lo, hi = info["episode_length"]
        print(f"{path}")
        print(f"  frames              {info['frames']:,} in {info['episodes']:,} episodes of {lo}"
              f"{'' if lo == hi else f'-{hi}'} frames; (C, H, W) {tuple(info['frame_shape'])} uint8, scale "
              f"{[f'{s:.4g}' for s in info['scale']]}")
        names = [n + (" (static)" if st else "") for n, st in zip(info["channel_names"], info["static_channels"])]
        print(f"  channels            {', '.join(names)}; data {info['protocol']}")
        targets = ", ".join(info["target_names"]) or "none"
        print(f"  actions, targets    {info['action_size']}-d actions; targets: {targets}")
        print(f"  flips               {describe_flips(reader.spec())}")
        print(f"  chunking            {info['rows_per_shard']} rows of {info['row_frames']} frames per shard, "
              f"{info['shards']:,} shards, one {info['codec']} chunk per row")
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
