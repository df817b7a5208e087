"""Where PushT's block angle is lost: in the frames, in the encoder's architecture, or in the training objective.

    pip install -e '.[envs]'
    python -m bench.pusht_angle [--run runs/pusht ...] [--frames 4000] [--steps 1000]

PushT episodes start with the block at a random pose, so the first frames of N seeded resets are a labelled
set of block poses. Three readings of the block angle (cos, sin) and position from a single frame, each as
error / chance (the variance of held-out targets; 1.0 = nothing read):

* ``supervised``: the JEPA's encoder architecture (one ConvBranch, the run's widths) trained on the targets
  directly: whether the architecture can see the angle at all;
* ``random weights``: the same architecture frozen at its initialisation, an MLP prober on its output;
* each ``--run``: that trained JEPA's encoder, frozen, the same prober: what the training objective kept.

The prober is an MLP (256 hidden units) trained for ``--probe-steps`` steps on standardised features; the
held-out frames are other seeds. The last line is one JSON object of the error / chance figures.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from bench.common import header, print_json, print_table

TARGETS = ("block_cos", "block_sin", "block_x", "block_y")


def first_frames(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 96, 96) uint8 first frames of resets seed..seed+n-1 and their targets (n, 4): cos, sin, x, y."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from gym_pusht.envs.pusht import PushTEnv

    env = PushTEnv(obs_type="pixels_agent_pos", render_mode="rgb_array")
    frames, poses = [], []
    for s in range(seed, seed + n):
        obs, info = env.reset(seed=s)
        frames.append(obs["pixels"])
        poses.append(info["block_pose"])
    p = np.asarray(poses, np.float64)
    y = np.stack([np.cos(p[:, 2]), np.sin(p[:, 2]), (p[:, 0] - 256) / 100, (p[:, 1] - 256) / 100], 1)
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous(), torch.tensor(y, dtype=torch.float32)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(x), (batch,))
        loss = (model(x[i]) - y[i]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def error_over_chance(pred: torch.Tensor, y: torch.Tensor) -> list[float]:
    return ((pred - y).pow(2).mean(0) / y.var(0)).tolist()


def readout(encode, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, steps: int,
            seed: int) -> list[float]:
    """An MLP prober on a frozen encoder's standardised features; error / chance on the held-out frames."""
    with torch.no_grad():
        f = torch.cat([encode(x[i:i + 500]) for i in range(0, len(x), 500)])
        fv = encode(xv)
    m, s = f.mean(0), f.std(0) + 1e-6
    prober = fit(nn.Sequential(nn.Linear(f.shape[1], 256), nn.ReLU(), nn.Linear(256, y.shape[1])),
                 (f - m) / s, y, steps, 256, seed)
    with torch.no_grad():
        return error_over_chance(prober((fv - m) / s), yv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", default=[], help="a trained PushT run (repeatable)")
    ap.add_argument("--frames", type=int, default=4000, help="labelled first frames to fit on (held out: 500)")
    ap.add_argument("--steps", type=int, default=1000, help="supervised steps of batch 64")
    ap.add_argument("--probe-steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from jepa_fast.config import ModelConfig
    from jepa_fast.model import ConvBranch
    from jepa_fast.probe import load_checkpoint_model

    header("pusht_angle: can the encoder architecture, random weights and trained runs read the block angle?")
    x8, y = first_frames(args.frames, 100_000 + args.seed)
    xv8, yv = first_frames(500, 900_000 + args.seed)
    x, xv = x8.float(), xv8.float()
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    widths = ModelConfig().encoder_widths
    rows, fig = [], {}

    def row(name: str, key: str, errs: list[float]) -> None:
        rows.append({"encoder": name, **dict(zip(TARGETS, errs))})
        fig.update({f"{key}_{t}": round(e, 3) for t, e in zip(TARGETS, errs)})

    torch.manual_seed(args.seed)
    sup = nn.Sequential(ConvBranch(widths, 128, in_ch=3), nn.ReLU(), nn.Linear(128, len(TARGETS)))
    sup = fit(nn.Sequential(_Standardise(mean, std), sup), x, y, args.steps, 64, args.seed)
    with torch.no_grad():
        row(f"supervised ({args.steps} steps)", "supervised", error_over_chance(sup(xv), yv))
    torch.manual_seed(args.seed + 1)
    rnd = ConvBranch(widths, 128, in_ch=3).eval()
    row("random weights", "random", readout(lambda b: rnd((b - mean) / std), x, y, xv, yv, args.probe_steps, args.seed))
    for run in args.run:
        model, _ = load_checkpoint_model(run, torch.device("cpu"))

        def encode(b: torch.Tensor, model=model) -> torch.Tensor:  # frames (N, 3, H, W) as stored -> latents
            return model.encode_stored(b.unsqueeze(1), torch.ones(3))[:, 0]

        row(f"trained ({run})", f"trained_{run.name}", readout(encode, x, y, xv, yv, args.probe_steps, args.seed))
    print(f"error / chance on 500 held-out first frames (lower is better; 1.0 = nothing read), fit on {args.frames}:")
    print_table(rows, ["encoder", *TARGETS])
    print_json({"bench": "pusht_angle", "frames": args.frames, **fig})


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


if __name__ == "__main__":
    main()
