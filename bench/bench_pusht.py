"""PushT end to end: record -> pack -> load -> train -> probe, with the two-rooms figures beside it.

    pip install -e '.[envs]'     # gym-pusht (pymunk physics, headless rendering) and h5py
    python -m bench.bench_pusht [--train-episodes 400] [--steps 600] [--out runs/pusht]

An environment no one here wrote, recorded the way a user would bring their own data:

1. record (``jepa_fast.envs.pusht``, parallel processes): a train split and a probe group (``probe/train``,
   ``probe/val``, held-out episodes of other seeds) of episodes of 24-96 frames, 96x96 RGB, actions = the
   agent's target position, targets = agent position, block position and block angle as (cos, sin);
2. pack the HDF5 files with ``jepa-fast pack``'s HDF5 flags (frames/s);
3. load: the CPU default loader over windows of 16 frames, stride 4 (frames/s);
4. train ``ours-small`` (``ours`` model and rollout loss, batch 64, its left-right flips under the recorder's flip
   rules) with an inverse-dynamics head (``model.idm_hidden``) on those windows for --steps steps (frames/s from
   the trainer's log);
5. probe every target on the held-out episodes with the trained model, and with the same architecture at
   random weights (seeded); the constant prober (the probe-train mean) is chance.

The two-rooms side runs stages 2-4 on a simulated train split of about as many frames, with the same code,
so the frames/s stand side by side. Pass: the trained model's error is at most ``--margin`` x (default 0.5)
both the random model's and chance, on every target. The last line is one JSON object; ratios named
``trained_vs_random_<target>`` and ``trained_vs_chance_<target>`` are how many times lower the trained
model's error is.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench._data import train_split
from bench.common import header, print_json, print_table
from jepa_fast.config import DataConfig, ProbeConfig, apply_overrides, run_config_from_dict, run_preset
from jepa_fast.data.loader import build_loader
from jepa_fast.data.pack import pack_path, pack_split
from jepa_fast.data.split import SplitData

SEQ_LEN, STRIDE = 16, 4


def load_fps(store: Path, seq_len: int, stride: int, epochs: int = 2) -> float:
    """Median frames/s of the CPU default loader (torch, host decode, 1 worker) over ``epochs`` epochs after one."""
    data = SplitData(store, seq_len, stride)
    loader = build_loader(data, DataConfig(batch_size=64, loader="torch", seq_len=seq_len, stride=stride),
                          torch.device("cpu"))
    rates = []
    for e in range(epochs + 1):
        t, n = time.perf_counter(), 0
        for b in loader:
            n += b.states.shape[0] * b.states.shape[1]
        if e:
            rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def train_run(store_root: Path, out: Path, steps: int, seq_len: int, stride: int, idm_hidden: int = 0) -> dict:
    """``ours-small`` on windows of ``seq_len``/``stride`` for ``steps`` steps (with an inverse-dynamics head of
    ``idm_hidden`` units when > 0); returns the trainer's summary."""
    from jepa_fast.cli.run import preset_flips_for
    from jepa_fast.train import train

    run = apply_overrides(run_preset("ours-small"), [f"data.seq_len={seq_len}", f"data.stride={stride}",
                                                      f"train.max_steps={steps}", "train.log_every=10",
                                                      f"model.idm_hidden={idm_hidden}"])
    # as `jepa-fast train --preset ours-small` does: the preset's flips where the data declares their rules
    return train(preset_flips_for(run, store_root), store_root, out, progress=False)


def probe_both(run_dir: Path, packed: Path, cfg: ProbeConfig, seed: int) -> tuple[dict, dict]:
    """(probe results of the trained model, of the same architecture with random weights)."""
    from jepa_fast.checkpoint import load_model_weights
    from jepa_fast.model import JEPA
    from jepa_fast.probe import load_checkpoint_model, probe_model

    model, config = load_checkpoint_model(run_dir, torch.device("cpu"))
    seq_len = config["data"]["seq_len"]
    trained = probe_model(model, packed, cfg, seq_len=seq_len)
    _, _, spec = load_model_weights(run_dir)
    torch.manual_seed(seed)
    random_model = JEPA(run_config_from_dict(config).model, spec).eval()
    return trained, probe_model(random_model, packed, cfg, seq_len=seq_len)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-episodes", type=int, default=400)
    ap.add_argument("--probe-episodes", type=int, nargs=2, default=(1000, 80), metavar=("TRAIN", "VAL"),
                    help="episodes of probe/train and probe/val (the prober needs many: with 240 it was data-starved)")
    ap.add_argument("--steps", type=int, default=600, help="training steps of batch 64 (both datasets' speed "
                    "is measured on the first --speed-steps)")
    ap.add_argument("--speed-steps", type=int, default=40, help="steps of the side-by-side training speed runs")
    ap.add_argument("--idm-hidden", type=int, default=128, help="PushT model: inverse-dynamics head width (0: none;"
                    " without it VICReg keeps the block and table, which vary between episodes, and drops the agent)")
    ap.add_argument("--workers", type=int, default=2, help="recording processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin", type=float, default=0.5, help="pass: trained error <= margin x random and chance")
    ap.add_argument("--out", type=Path, default=None, help="keep the data and the run here (default: a temp folder)")
    args = ap.parse_args()
    from jepa_fast.envs import pusht

    header("bench_pusht: PushT recorded, packed, trained and probed; two-rooms beside it")
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_pusht-"))
    work.mkdir(parents=True, exist_ok=True)
    fig: dict = {"bench": "pusht", "seq_len": SEQ_LEN, "stride": STRIDE, "steps": args.steps,
                 "idm_hidden": args.idm_hidden}
    try:
        raw, packed = work / "raw", work / "packed"
        t = time.perf_counter()
        rec = {}
        for name, n, seed in (("train", args.train_episodes, args.seed),
                              ("probe/train", args.probe_episodes[0], args.seed + 1),
                              ("probe/val", args.probe_episodes[1], args.seed + 2)):
            rec[name] = pusht.record(raw / f"{name}.hdf5", n, seed=seed, workers=args.workers, progress=False)
        rec_s = time.perf_counter() - t
        frames = {k: v["frames"] for k, v in rec.items()}
        moved = rec["train"]["block_moved_px"]
        fig.update(record_fps=round(sum(frames.values()) / rec_s), train_frames=frames["train"],
                   train_episodes=args.train_episodes, block_moved_px_push=moved["push"],
                   block_moved_px_wander=moved["wander"])
        print(f"recorded {sum(frames.values()):,} frames in {rec_s:.0f} s ({fig['record_fps']:,} frames/s, "
              f"{args.workers} processes): {frames}; median block displacement per episode, push policy "
              f"{moved['push']} px, wander {moved['wander']} px")

        keys = {"targets": ",".join(pusht.TARGET_KEYS)}  # names and flip rules: the recorder's X.meta.json
        t = time.perf_counter()
        pack_path(raw / "train.hdf5", packed / "train.zarr", keys=keys, progress=False)
        pack_fps = frames["train"] / (time.perf_counter() - t)
        for name in ("probe/train", "probe/val"):
            pack_path(raw / f"{name}.hdf5", packed / f"{name}.zarr", keys=keys, progress=False)

        # two-rooms, about as many frames (17 per trajectory), the same stages
        tr_work = work / "two-rooms"
        tr_raw, _ = train_split(tr_work, max(256, frames["train"] // 17), pack=False)
        tr_store = tr_work / "packed" / "train.zarr"
        t = time.perf_counter()
        pack_split(tr_raw, tr_store, progress=False)
        tr_frames = SplitData(tr_store).n * 17
        tr_pack_fps = tr_frames / (time.perf_counter() - t)

        speed = {}
        for name, store, seq_len, stride, idm in (("pusht", packed / "train.zarr", SEQ_LEN, STRIDE, args.idm_hidden),
                                                  ("two_rooms", tr_store, 0, 0, 0)):
            load = load_fps(store, seq_len, stride)
            summary = train_run(store.parent, work / f"speed-{name}", args.speed_steps, seq_len, stride, idm)
            speed[name] = {"load": load, "train": summary["last"]["frames_per_s"]}
        rows = [{"stage": "pack (frames/s)", "PushT 96x96x3 uint8 HDF5": pack_fps,
                 "two-rooms 65x65x2 float32 .npy": tr_pack_fps},
                {"stage": "load, torch host loader (frames/s)", "PushT 96x96x3 uint8 HDF5": speed["pusht"]["load"],
                 "two-rooms 65x65x2 float32 .npy": speed["two_rooms"]["load"]},
                {"stage": f"train ours-small, batch 64 (frames/s, {args.speed_steps} steps)",
                 "PushT 96x96x3 uint8 HDF5": speed["pusht"]["train"],
                 "two-rooms 65x65x2 float32 .npy": speed["two_rooms"]["train"]}]
        print_table(rows, ["stage", "PushT 96x96x3 uint8 HDF5", "two-rooms 65x65x2 float32 .npy"])
        fig.update(pusht_pack_fps=round(pack_fps), two_rooms_pack_fps=round(tr_pack_fps),
                   pusht_load_fps=round(speed["pusht"]["load"]), two_rooms_load_fps=round(speed["two_rooms"]["load"]),
                   pusht_train_fps=round(speed["pusht"]["train"]),
                   two_rooms_train_fps=round(speed["two_rooms"]["train"]))

        run_dir = work / "run"
        t = time.perf_counter()
        summary = train_run(packed, run_dir, args.steps, SEQ_LEN, STRIDE, args.idm_hidden)
        fig.update(train_s=round(time.perf_counter() - t), params=summary["params"],
                   final_loss=round(summary["last"]["loss"], 4))
        trained, random = probe_both(run_dir, packed, ProbeConfig(), args.seed)
        group = next(iter(trained["per_target"]))
        rows, ok = [], True
        for name in pusht.TARGET_NAMES:
            tr, rnd, ch = (trained["per_target"][group][name], random["per_target"][group][name],
                           trained["chance"][group][name])
            ok &= tr <= args.margin * rnd and tr <= args.margin * ch
            rows.append({"target": name, "trained MSE": tr, "random weights MSE": rnd, "constant prober MSE": ch,
                         "random / trained": rnd / tr, "chance / trained": ch / tr})
            fig[f"trained_vs_random_{name}"] = round(rnd / tr, 2)
            fig[f"trained_vs_chance_{name}"] = round(ch / tr, 2)
        print(f"\nprobe on {args.probe_episodes[1]} held-out episodes (windows of {SEQ_LEN} frames; error in the "
              "targets' own units: pixels^2 of the 512x512 table for positions, (cos, sin) for the angle):")
        print_table(rows, ["target", "trained MSE", "random weights MSE", "constant prober MSE", "random / trained",
                           "chance / trained"])
        fig.update(trained_score=round(trained["losses"][group], 4), random_score=round(random["losses"][group], 4),
                   passed=bool(ok))
        print(f"\ntrained beats random weights and chance by >= {1 / args.margin:.0f}x on every target: "
              f"{'MET' if ok else 'NOT MET'}")
        print_json(fig)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
