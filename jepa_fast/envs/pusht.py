"""Record PushT episodes (gym-pusht: pymunk physics, 96x96 RGB frames) into an HDF5 file in Minari's layout.

    pip install 'jepa-fast[envs]'
    python -m jepa_fast.envs.pusht --out data/pusht/train.hdf5 --episodes 600 --seed 0
    jepa-fast pack data/pusht data/pusht-packed --targets infos/agent_pos,infos/block_xy,infos/block_angle_cs

The action is the agent's target position (x, y) in [0, 512]^2, which a PD controller follows. Episodes are
of unequal length (``min_len``-``max_len`` frames) and driven by one of two policies, chosen per episode:

* ``wander``: a smoothed random walk of the target (momentum 0.8), so the agent sweeps the table;
* ``push``: the target heads for a point beyond the block along a random direction, so the agent runs into
  the block and pushes it (the block moves in most of these episodes; ``record`` reports how far).

Every episode is a group ``episode_<i>`` holding ``observations/pixels`` (n, 96, 96, 3) uint8,
``actions`` (n - 1, 2) float32 and per-frame probe targets under ``infos``: ``agent_pos`` (n, 2),
``block_xy`` (n, 2) and ``block_angle_cs`` (n, 2), the block's angle as (cos, sin) (an angle wraps around,
its cosine and sine do not). Beside ``X.hdf5`` goes ``X.meta.json`` (``META``: channel and target names, and the
flip rules that keep the physics true), which ``jepa-fast pack`` reads. Episodes are recorded in parallel
processes and written by the parent in order, so memory stays bounded and the file is the same for any number
of workers. Seeded: episode i of seed s is the same on every machine with the same gym-pusht and pymunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import closing
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from jepa_fast import atomic
from jepa_fast.errors import JepaFastError

TARGET_KEYS = ("infos/agent_pos", "infos/block_xy", "infos/block_angle_cs")
TARGET_NAMES = ("agent_x", "agent_y", "block_x", "block_y", "block_cos", "block_sin")
"""What ``jepa-fast pack --targets ...`` takes from a recorded file, and the names its meta.json gives them."""
TABLE = 512.0
"""The table's side in the env's units; the 96x96 frame shows all of it, so a frame flipped left-right (up-down)
is the table mirrored about x = 256 (y = 256)."""
META = {
    "channel_names": ["red", "green", "blue"],
    "target_names": list(TARGET_NAMES),
    # The T is symmetric about its stem, and the block's reported position is its centre of gravity, which lies on
    # the stem: a left-right mirror maps the pose (x, y, angle) to (512 - x, y, -angle), an up-down mirror to
    # (x, 512 - y, pi - angle). So lr mirrors the agent's and block's x and negates the angle's sine; ud mirrors
    # the y's and negates its cosine; the action (a target point) mirrors as a position.
    "flips": {"lr": {"mirror_actions": [[0, TABLE]], "mirror": [[0, TABLE], [2, TABLE], [5, 0.0]]},
              "ud": {"mirror_actions": [[1, TABLE]], "mirror": [[1, TABLE], [3, TABLE], [4, 0.0]]}},
}
"""What a recorded file's frames, targets and flips mean: written beside it as ``X.meta.json`` for
``jepa-fast pack`` (tests/test_byod.py renders mirrored poses to check the flip rules)."""


def _env():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # headless
    try:
        from gym_pusht.envs.pusht import PushTEnv
    except ImportError:
        raise JepaFastError("recording PushT needs gym-pusht: pip install 'jepa-fast[envs]'") from None
    return PushTEnv(obs_type="pixels_agent_pos", render_mode="rgb_array")


_ENV = None


def record_episode(seed: int, min_len: int = 24, max_len: int = 96, push_fraction: float = 0.6) -> dict:
    """One episode of seed ``seed``: frames (n, 96, 96, 3) uint8, actions (n - 1, 2), targets, the policy."""
    global _ENV
    if _ENV is None:
        _ENV = _env()
    env, rng = _ENV, np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    n = int(rng.integers(min_len, max_len + 1))
    push = bool(rng.random() < push_fraction)
    target = np.asarray(info["pos_agent"], np.float64)
    velocity = np.zeros(2)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-9
    frames, actions, agent, block = [obs["pixels"]], [], [info["pos_agent"]], [info["block_pose"]]
    for _ in range(n - 1):
        if push:  # chase a point beyond the block: the agent runs into it and shoves it along `direction`
            goal = np.asarray(info["block_pose"][:2]) + 60 * direction
            target = target + np.clip(goal - target, -25, 25) + rng.normal(0, 4, 2)
        else:  # a smoothed random walk of the target
            velocity = 0.8 * velocity + rng.normal(0, 12, 2)
            target = target + velocity
        target = np.clip(target, 20, 492)
        actions.append(target.astype(np.float32))
        obs, _, terminated, _, info = env.step(actions[-1])
        frames.append(obs["pixels"])
        agent.append(info["pos_agent"])
        block.append(info["block_pose"])
        if terminated:  # the T reached the goal pose (rare): the episode ends there
            break
    block = np.asarray(block, np.float64)
    return {"pixels": np.stack(frames), "actions": np.stack(actions), "agent_pos": np.asarray(agent, np.float32),
            "block_xy": block[:, :2].astype(np.float32),
            "block_angle_cs": np.stack([np.cos(block[:, 2]), np.sin(block[:, 2])], 1).astype(np.float32),
            "policy": "push" if push else "wander"}


def record_episodes(seeds, min_len: int = 24, max_len: int = 96, push_fraction: float = 0.6,
                    workers: int = 0) -> Iterator[dict]:
    """The episodes (``record_episode``) of ``seeds``, recorded in ``workers`` processes (0: one per core, at
    most 8) and yielded in seed order; closing the generator stops the processes."""
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    with get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_record_args, [(s, min_len, max_len, push_fraction) for s in seeds], chunksize=4)


def record(out: Path, episodes: int, seed: int = 0, workers: int = 0, min_len: int = 24, max_len: int = 96,
           push_fraction: float = 0.6, overwrite: bool = False, progress: bool = True) -> dict:
    """Record ``episodes`` episodes (seeds seed x 1,000,003 + i) into the HDF5 file ``out``, written aside and
    renamed when complete. Returns counts: frames, block displacement of push vs wander episodes."""
    import h5py

    out = Path(out)
    if episodes < 1 or not 2 <= min_len <= max_len:
        raise JepaFastError(f"episodes {episodes}, lengths {min_len}-{max_len}: need >= 1 episode of >= 2 frames")
    meta = out.with_name(out.stem + ".meta.json")
    for f in (out, meta):
        if f.exists() and not overwrite:
            raise JepaFastError(f"{f} exists; pass --overwrite to replace it")
    seeds = [seed * 1_000_003 + i for i in range(episodes)]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    moved = {"push": [], "wander": []}
    frames = 0
    from tqdm import tqdm

    bar = tqdm(total=episodes, unit="episode", disable=not progress, desc=f"record {out.name}", dynamic_ncols=True)
    try:
        jobs = record_episodes(seeds, min_len, max_len, push_fraction, workers)
        with closing(jobs), h5py.File(tmp, "w") as f:
            f.attrs.update({"env": "gym_pusht/PushT-v0", "seed": seed, "min_len": min_len, "max_len": max_len,
                            "push_fraction": push_fraction, "target_names": ",".join(TARGET_NAMES)})
            for i, ep in enumerate(jobs):
                g = f.create_group(f"episode_{i}")
                g.create_dataset("observations/pixels", data=ep["pixels"], chunks=(1, 96, 96, 3))
                g.create_dataset("actions", data=ep["actions"])
                for key in ("agent_pos", "block_xy", "block_angle_cs"):
                    g.create_dataset(f"infos/{key}", data=ep[key])
                g.attrs["policy"] = ep["policy"]
                frames += len(ep["pixels"])
                moved[ep["policy"]].append(float(np.linalg.norm(ep["block_xy"][-1] - ep["block_xy"][0])))
                bar.update(1)
        bar.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        atomic.atomic_write_text(meta, json.dumps(META, indent=1) + "\n")
        atomic.replace_path(tmp, out)
    except BaseException:
        bar.close()
        tmp.unlink(missing_ok=True)
        if not out.exists():  # no file without its meta, and no meta without its file
            meta.unlink(missing_ok=True)
        raise
    return {"out": str(out), "episodes": episodes, "frames": frames,
            "block_moved_px": {k: round(float(np.median(v)), 1) if v else None for k, v in moved.items()},
            "episodes_by_policy": {k: len(v) for k, v in moved.items()}}


def _record_args(args) -> dict:
    return record_episode(*args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jepa_fast.envs.pusht", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="HDF5 file to write")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="recording processes (default: the cores, at most 8)")
    p.add_argument("--min-len", type=int, default=24)
    p.add_argument("--max-len", type=int, default=96)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        r = record(args.out, args.episodes, args.seed, args.workers, args.min_len, args.max_len,
                   overwrite=args.overwrite)
    except JepaFastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {r['out']}: {r['episodes']} episodes, {r['frames']:,} frames; median block displacement "
          f"{r['block_moved_px']} px by policy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
