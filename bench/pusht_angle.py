"""Where PushT's block angle is lost: in the frames, in the encoder's architecture, or in the training objective.

    pip install -e '.[envs]'
    python -m bench.pusht_angle [--run runs/pusht ...] [--frames 4000] [--steps 1000]
                                [--objective autoencoder --objective contrastive --objective masked ...]

PushT episodes start with the block at a random pose, so the first frames of N seeded resets are a labelled
set of block poses. Three readings of the block angle (cos, sin) and position from a single frame, each as
error / chance (the variance of held-out targets; 1.0 = nothing read):

* ``supervised``: the JEPA's encoder architecture (one ConvBranch, the run's widths) trained on the targets
  directly: whether the architecture can see the angle at all;
* ``random weights``: the same architecture frozen at its initialisation, an MLP prober on its output;
* each ``--run``: that trained JEPA's encoder, frozen, the same prober: what the training objective kept;
* each ``--objective``: the same architecture trained from scratch by a self-supervised objective other than
  the JEPA's, for ``--ssl-steps`` steps, then frozen and read by the same prober: whether that objective
  would keep the angle at this budget. ``autoencoder``: a decoder (transposed convolutions) reconstructs the
  standardised frame at ``--ae-size`` pixels (MSE). ``contrastive``: ``--per-episode`` frames of each of
  ``--ssl-batch`` episodes (recorded with ``jepa_fast.envs.pusht``, ``--episodes`` of 24 frames) are
  projected (128 -> 256 -> 64, unit norm) and each frame's positives are the other frames of its episode,
  its negatives every other frame in the batch (InfoNCE at temperature ``--tau``): what stays the same
  within an episode and differs between episodes is the block's pose (the agent moves). ``masked``: masked
  latent prediction, as I-JEPA does it: blocks of ``--mask-cells`` x ``--mask-cells`` cells of the encoder's
  final grid (6x6 for 96x96 frames) are blanked in the input (two blocks per frame), and a small convolutional
  predictor must produce, at the blanked cells, the features an EMA copy of the encoder computes from the whole
  frame (layer-normalised per cell, MSE): filling in part of a T from the rest of it needs its orientation. Its
  reading is the grid's 4x4 average pool, the features the encoder's final Linear would take.

The prober is an MLP (256 hidden units) trained for ``--probe-steps`` steps on standardised features; the
held-out frames are other seeds. The last line is one JSON object of the error / chance figures.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from bench.common import header, print_json, print_table
from jepa_fast.model import ConvBranch

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


def adam_steps(modules: list[nn.Module], steps: int, loss) -> None:
    """``steps`` Adam steps (lr 1e-3) on the trainable parameters of ``modules``; ``loss()`` draws a batch and
    returns its loss."""
    opt = torch.optim.Adam([p for m in modules for p in m.parameters() if p.requires_grad], 1e-3)
    for _ in range(steps):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model.train()

    def loss() -> torch.Tensor:
        i = torch.randint(0, len(x), (batch,))
        return (model(x[i]) - y[i]).pow(2).mean()

    adam_steps([model], steps, loss)
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


def autoencoder(widths: tuple[int, ...], x: torch.Tensor, size: int, steps: int, seed: int) -> nn.Module:
    """The encoder architecture trained with a decoder to reconstruct standardised frames x (N, 3, H, W) at
    size x size pixels; returns the frozen encoder."""
    torch.manual_seed(seed)
    enc = ConvBranch(widths, 128, in_ch=3)
    ch, side, layers = widths[-1], 6, []
    layers += [nn.Linear(128, ch * side * side), nn.Unflatten(1, (ch, side, side))]
    while side < size:
        out = max(ch // 2, 16)
        layers += [nn.ConvTranspose2d(ch, out, 4, 2, 1), nn.BatchNorm2d(out), nn.ReLU()]
        ch, side = out, side * 2
    dec = nn.Sequential(*layers, nn.Conv2d(ch, 3, 3, padding=1), nn.AdaptiveAvgPool2d(size))
    target = nn.functional.adaptive_avg_pool2d(x, size)

    def loss() -> torch.Tensor:
        i = torch.randint(0, len(x), (64,))
        return (dec(enc(x[i])) - target[i]).pow(2).mean()

    adam_steps([enc, dec], steps, loss)
    return enc.eval()


def masked_latent(widths: tuple[int, ...], x: torch.Tensor, steps: int, seed: int, cells: int = 2,
                  blocks: int = 2, momentum: float = 0.99, losses: list | None = None) -> nn.Module:
    """The encoder architecture's convolutions trained by masked latent prediction on standardised frames x
    (N, 3, H, W): ``blocks`` random blocks of cells x cells grid cells are blanked (set to 0, the mean) in the
    input, and a predictor (3x3 convolutions on the context grid and the mask) regresses, at those cells, the
    layer-normalised grid features of an EMA copy of the convolutions on the whole frame. Returns the frozen
    convolutions followed by the 4x4 average pool, flattened (N, widths[-1] x 16); ``losses``, if given, gets
    each step's loss."""
    torch.manual_seed(seed)
    convs = ConvBranch(widths, 1, in_ch=3).convs
    target = copy.deepcopy(convs).requires_grad_(False)
    ch = widths[-1]
    predictor = nn.Sequential(nn.Conv2d(ch + 1, 128, 3, padding=1), nn.GELU(), nn.Conv2d(128, 128, 3, padding=1),
                              nn.GELU(), nn.Conv2d(128, ch, 1))
    gh, gw = target(x[:1]).shape[-2:]
    if cells > min(gh, gw):
        raise ValueError(f"mask blocks of {cells} cells do not fit the encoder's {gh}x{gw} grid")
    up_h, up_w = -(-x.shape[-2] // gh), -(-x.shape[-1] // gw)  # input pixels per grid cell (ceil)

    def loss() -> torch.Tensor:
        b = x[torch.randint(0, len(x), (64,))]
        with torch.no_grad():
            want = nn.functional.layer_norm(target(b).permute(0, 2, 3, 1), (ch,))  # (B, gh, gw, ch)
        mask = torch.zeros(len(b), gh, gw, dtype=torch.bool)
        rows = torch.randint(0, gh - cells + 1, (blocks, len(b)))
        cols = torch.randint(0, gw - cells + 1, (blocks, len(b)))
        for k in range(blocks):
            for i in range(len(b)):
                mask[i, rows[k, i]:rows[k, i] + cells, cols[k, i]:cols[k, i] + cells] = True
        pixels = mask.repeat_interleave(up_h, 1).repeat_interleave(up_w, 2)[:, None, :b.shape[-2], :b.shape[-1]]
        context = convs(b.masked_fill(pixels, 0.0))
        got = predictor(torch.cat([context, mask[:, None].float()], 1)).permute(0, 2, 3, 1)
        return (got - want)[mask].pow(2).mean()

    opt = torch.optim.AdamW([*convs.parameters(), *predictor.parameters()], 1e-3, weight_decay=0.05)
    for _ in range(steps):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
        if losses is not None:
            losses.append(value.item())
        with torch.no_grad():
            for t, o in zip(target.parameters(), convs.parameters()):
                t.lerp_(o, 1.0 - momentum)
            for t, o in zip(target.buffers(), convs.buffers()):
                t.copy_(o)
    return nn.Sequential(convs, nn.AdaptiveAvgPool2d(4), nn.Flatten(1)).eval()


def multi_positive_nce(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE with several positives: z (N, d) unit vectors, labels (N,); each row's positives are the other
    rows with its label, everything else its negatives; the mean over positives of -log softmax."""
    sim = (z @ z.T / tau).masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    pos = (labels[:, None] == labels[None]) & ~torch.eye(len(z), dtype=torch.bool)
    logp = sim.log_softmax(1).masked_fill(~pos, 0.0)
    return -(logp.sum(1) / pos.sum(1)).mean()


def contrastive(widths: tuple[int, ...], episodes: torch.Tensor, standardise, batch: int, per_episode: int,
                tau: float, steps: int, seed: int) -> nn.Module:
    """The encoder architecture trained by ``multi_positive_nce`` over frames of episodes (E, T, 3, H, W)
    uint8: ``per_episode`` frames of ``batch`` episodes per step; returns the frozen encoder."""
    torch.manual_seed(seed)
    enc = ConvBranch(widths, 128, in_ch=3)
    proj = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))
    E, T = episodes.shape[:2]
    labels = torch.arange(batch).repeat_interleave(per_episode)

    def loss() -> torch.Tensor:
        e = torch.randperm(E)[:batch]
        t = torch.stack([torch.randperm(T)[:per_episode] for _ in range(batch)])  # (batch, per_episode)
        frames = standardise(episodes[e[:, None], t].flatten(0, 1).float())
        return multi_positive_nce(nn.functional.normalize(proj(enc(frames)), dim=1), labels, tau)

    adam_steps([enc, proj], steps, loss)
    return enc.eval()


def recorded_episodes(n: int, seed: int) -> torch.Tensor:
    """(n, 24, 3, 96, 96) uint8 frames of n recorded episodes of 24 frames (seeds seed..seed+n-1)."""
    from jepa_fast.envs.pusht import record_episodes

    frames = [e["pixels"] for e in record_episodes(range(seed, seed + n), min_len=24, max_len=24)]
    return torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", default=[], help="a trained PushT run (repeatable)")
    ap.add_argument("--frames", type=int, default=4000, help="labelled first frames to fit on (held out: 500)")
    ap.add_argument("--steps", type=int, default=1000, help="supervised steps of batch 64")
    ap.add_argument("--probe-steps", type=int, default=3000)
    ap.add_argument("--objective", action="append", default=[], choices=("autoencoder", "contrastive", "masked"),
                    help="train the architecture with this self-supervised objective and read it (repeatable)")
    ap.add_argument("--ssl-steps", type=int, default=1000, help="steps of each --objective")
    ap.add_argument("--ae-size", type=int, default=48, help="autoencoder: reconstruction size in pixels")
    ap.add_argument("--episodes", type=int, default=1500, help="contrastive: recorded episodes of 24 frames")
    ap.add_argument("--ssl-batch", type=int, default=128, help="contrastive: episodes per step")
    ap.add_argument("--per-episode", type=int, default=2, help="contrastive: frames of each episode per step")
    ap.add_argument("--tau", type=float, default=0.1, help="contrastive: InfoNCE temperature")
    ap.add_argument("--mask-cells", type=int, default=2, help="masked: side of each blanked block, in grid cells "
                    "(the 96x96 frame's grid is 6x6, 16 pixels a cell)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 2 <= args.per_episode <= 24:
        ap.error(f"--per-episode {args.per_episode}: episodes have 24 frames; use 2-24 (two or more positives)")
    if not 2 <= args.ssl_batch <= args.episodes:
        ap.error(f"--ssl-batch {args.ssl_batch}: need 2 to --episodes ({args.episodes}) episodes per step")
    if min(args.frames, args.steps, args.probe_steps, args.ssl_steps, args.ae_size) < 1 or args.tau <= 0:
        ap.error("--frames, --steps, --probe-steps, --ssl-steps and --ae-size must be >= 1, --tau > 0")
    if not 1 <= args.mask_cells <= 6:
        ap.error(f"--mask-cells {args.mask_cells}: the 96x96 frame's grid is 6x6 cells; use 1-6")
    from jepa_fast.config import ModelConfig
    from jepa_fast.probe import load_checkpoint_model

    header("pusht_angle: can the encoder architecture, random weights and trained runs read the block angle?")
    x8, y = first_frames(args.frames, 100_000 + args.seed)
    xv8, yv = first_frames(500, 900_000 + args.seed)
    x, xv = x8.float(), xv8.float()
    standardise = _Standardise(x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True))
    widths = ModelConfig().encoder_widths
    rows, fig = [], {}

    def row(name: str, key: str, errs: list[float]) -> None:
        rows.append({"encoder": name, **dict(zip(TARGETS, errs))})
        fig.update({f"{key}_{t}": round(e, 3) for t, e in zip(TARGETS, errs)})

    torch.manual_seed(args.seed)
    sup = nn.Sequential(ConvBranch(widths, 128, in_ch=3), nn.ReLU(), nn.Linear(128, len(TARGETS)))
    sup = fit(nn.Sequential(standardise, sup), x, y, args.steps, 64, args.seed)
    with torch.no_grad():
        row(f"supervised ({args.steps} steps)", "supervised", error_over_chance(sup(xv), yv))
    torch.manual_seed(args.seed + 1)
    rnd = ConvBranch(widths, 128, in_ch=3).eval()
    row("random weights", "random", readout(lambda b: rnd(standardise(b)), x, y, xv, yv, args.probe_steps, args.seed))
    for run in args.run:
        model, _ = load_checkpoint_model(run, torch.device("cpu"))

        def encode(b: torch.Tensor, model=model) -> torch.Tensor:  # frames (N, 3, H, W) as stored -> latents
            return model.encode_stored(b.unsqueeze(1), torch.ones(3))[:, 0]

        row(f"trained ({run})", f"trained_{run.name}", readout(encode, x, y, xv, yv, args.probe_steps, args.seed))
    for objective in args.objective:
        if objective == "autoencoder":
            enc = autoencoder(widths, standardise(x), args.ae_size, args.ssl_steps, args.seed)
            name = f"autoencoder {args.ae_size}x{args.ae_size} ({args.ssl_steps} steps)"
        elif objective == "masked":
            enc = masked_latent(widths, standardise(x), args.ssl_steps, args.seed, cells=args.mask_cells)
            name = (f"masked latent prediction, blocks of {args.mask_cells}x{args.mask_cells} cells "
                    f"({args.ssl_steps} steps)")
        else:
            episodes = recorded_episodes(args.episodes, 500_000 + args.seed)
            enc = contrastive(widths, episodes, standardise, args.ssl_batch, args.per_episode, args.tau,
                              args.ssl_steps, args.seed)
            name = (f"contrastive, {args.per_episode} frames x {args.ssl_batch} of {args.episodes} episodes "
                    f"({args.ssl_steps} steps)")
        row(name, objective, readout(lambda b, enc=enc: enc(standardise(b)), x, y, xv, yv, args.probe_steps,
                                     args.seed))
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
