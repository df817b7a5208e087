"""The JEPA world model: encoder, action embedding, GRU predictor, projectors, rollout.

Shapes: B batch, T frames, C = 2 channels (agent, walls), H = W = 64 or 65, D latent size, A = 2
action size. The ``reference`` preset reproduces the public course project exactly (477,664
trainable parameters); ``ours`` has the same parameters and a residual predictor, trained by rollout
(see ``config.ModelConfig`` and the run presets).

Interface of the original evaluator: ``model(states, actions)`` with states (B, 1, C, H, W) in the
raw value units of the .npy files and actions (B, T-1, 2) returns the predicted embeddings
(B, T, D) for t = 0..T-1 by autoregressive rollout; ``model.repr_dim`` is D. Training calls
``encode_stored`` (the one path from stored frames to latents, which ``forward`` also takes) and
``predict_for_training`` (teacher forcing or rollout, plus the projections the loss needs).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from jepa_fast.config import ModelConfig
from jepa_fast.errors import JepaFastError

# ---------------------------------------------------------------------------------------------
# Encoder


class ConvBranch(nn.Module):
    """One channel's CNN: n x [Conv3x3 stride 2 + BatchNorm + ReLU], AdaptiveAvgPool(4x4), Linear."""

    def __init__(self, widths: tuple[int, ...], out_dim: int, in_ch: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Conv2d(in_ch, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            in_ch = w
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(widths[-1] * 16, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in_ch, H, W) -> (N, out_dim)."""
        return self.fc(self.pool(self.convs(x)).flatten(1))


class Encoder(nn.Module):
    """Separate branches for the agent and the wall channel; their outputs are concatenated (D)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        half = cfg.repr_dim // 2
        self.agent = ConvBranch(cfg.encoder_widths, half)
        self.walls = ConvBranch(cfg.encoder_widths, cfg.repr_dim - half)


# ---------------------------------------------------------------------------------------------
# The world model


class JEPA(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        D = cfg.repr_dim
        self.repr_dim = D
        self.encoder = Encoder(cfg)
        self.action_embed = nn.Linear(2, cfg.action_dim)
        self.predictor = nn.GRU(D + cfg.action_dim, cfg.hidden_dim, num_layers=cfg.gru_layers, batch_first=True,
                                dropout=cfg.gru_dropout if cfg.gru_layers > 1 else 0.0)
        self.predictor_out = nn.Linear(cfg.hidden_dim, D)
        self.projector = nn.Sequential(nn.Linear(D, cfg.proj_dim), nn.ReLU(inplace=True), nn.Linear(cfg.proj_dim, D))
        # BYOL-style target projector: an EMA copy of the online one, never trained by gradients
        self.target_projector = copy.deepcopy(self.projector)
        for p in self.target_projector.parameters():
            p.requires_grad_(False)
        # raw value units -> roughly [0, 1] per channel (agent peak and wall value are 1/(2 pi sigma^2))
        self.register_buffer("input_scale", torch.full((2,), cfg.input_scale), persistent=True)

    # -- the one path from stored frames to latents ---------------------------------------------
    def encode_stored(self, states: torch.Tensor, scale: torch.Tensor, brightness: torch.Tensor | None = None,
                      noise_std: torch.Tensor | None = None, noise: bool = False) -> torch.Tensor:
        """Frames as stored (B, T, C, H, W) -> latents (B, T, D). Training, probing (through ``forward``)
        and the FLOP counter all come through here.

        ``states`` are uint8 from a store with its per-channel ``scale`` (C,) (value = uint8 x scale, raw
        units), or raw-unit floats with scale 1. Encoder input = value x brightness[b] (+ noise) x
        input_scale[c], computed in one multiply per channel on the device (inside the compiled step).
        With ``noise``: Gaussian, std noise_std[b] x the channel's full range (255 x scale[c]); fresh per
        frame for the agent, one image per trajectory for the wall channel, which is static over a
        trajectory. ``static_walls`` encodes only the first wall frame and broadcasts it over T; with the
        same noise rule in both paths, encoding it once or T times differs only in BatchNorm's
        running-variance correction (n/(n-1) over B vs B*T frames; tests/test_model_loss.py).
        """
        B, T = states.shape[:2]
        factor = scale.to(states.device, torch.float32) * self.input_scale  # (C,)
        gain = factor.view(1, 1, -1, 1, 1)
        if brightness is not None:
            gain = gain * brightness.to(torch.float32).view(-1, 1, 1, 1, 1)  # (B or 1, 1, C, 1, 1)
        static = self.cfg.static_walls and T > 1
        agent = states[:, :, 0:1] * gain[:, :, 0:1]  # (B, T, 1, H, W): the uint8 cast and scale in one pass
        walls = (states[:, :1, 1:2] if static else states[:, :, 1:2]) * gain[:, :, 1:2]  # (B, 1 or T, 1, H, W)
        if noise:
            std = noise_std.to(torch.float32).view(-1, 1, 1, 1, 1) * (255 * factor.view(1, 1, -1, 1, 1))
            agent = agent + std[:, :, 0:1] * torch.randn_like(agent)
            walls = walls + std[:, :, 1:2] * torch.randn_like(walls[:, :1])  # one image per trajectory
        a = self.encoder.agent(agent.flatten(0, 1)).view(B, T, -1)  # (B, T, D/2)
        if static:
            w = self.encoder.walls(walls[:, 0])  # (B, D/2)
            w = w[:, None].expand(B, T, w.shape[-1])  # (B, T, D/2)
        else:
            w = self.encoder.walls(walls.flatten(0, 1)).view(B, T, -1)  # (B, T, D/2)
        return torch.cat([a, w], dim=-1)  # (B, T, D)

    # -- training path: teacher forcing --------------------------------------------------------
    def _teacher_predict(self, s: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Latents s (B, T, D), actions (B, T-1, 2) -> [s_0, one-step predictions from the true latents] (B, T, D)."""
        with _fp32(s):
            s = s.float()
            a = self.action_embed(actions.float())  # (B, T-1, A)
            out, _ = self.predictor(torch.cat([s[:, :-1], a], dim=-1))  # (B, T-1, hidden)
            pred = self.predictor_out(out)  # (B, T-1, D)
            if self.cfg.residual_predictor:
                pred = pred + s[:, :-1]
            return torch.cat([s[:, :1], pred], dim=1)

    # -- evaluation path: autoregressive rollout -----------------------------------------------
    def rollout(self, s0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """From latent s0 (B, D), feed back each prediction with the next action.

        Returns (B, T, D) with T = actions.shape[1] + 1 (t = 0 is s0).
        """
        with _fp32(s0):
            prev = s0.float()
            a = self.action_embed(actions.float())  # (B, T-1, A)
            preds, h = [prev], None
            for t in range(a.shape[1]):
                out, h = self.predictor(torch.cat([prev, a[:, t]], dim=-1).unsqueeze(1), h)  # (B, 1, hidden)
                delta = self.predictor_out(out[:, 0])  # (B, D)
                prev = prev + delta if self.cfg.residual_predictor else delta
                preds.append(prev)
            return torch.stack(preds, dim=1)

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The evaluator's call: states (B, 1 or T, C, H, W) raw units, actions (B, T-1, 2) -> (B, T, D).

        Only the first frame is used: the rest is predicted by rollout from it.
        """
        ones = torch.ones(states.shape[2], device=states.device)
        s0 = self.encode_stored(states[:, :1], ones)[:, 0]  # (B, D)
        return self.rollout(s0, actions)

    def predict_for_training(self, latents: torch.Tensor, actions: torch.Tensor, prediction: str = "teacher"
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training path from encoder latents (B, T, D): (pred, latents, proj_pred, proj_target), each (B, T, D).

        'teacher' feeds the GRU the true latent at every step; 'rollout' feeds back its own predictions
        from s_0, exactly as evaluation does, while the targets are still the encoder latents of every
        frame. Called from inside a module's ``forward`` (train.ForwardLoss), so DDP's hooks run.
        """
        if prediction == "teacher":
            pred = self._teacher_predict(latents, actions)
        elif prediction == "rollout":
            pred = self.rollout(latents[:, 0], actions)  # (B, T, D)
        else:
            raise ValueError(f"prediction {prediction!r}: use 'teacher' or 'rollout'")
        return pred, latents, self.projector(pred), self.target_projector(latents)

    # -- target branch ------------------------------------------------------------------------
    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA of the online projector into the target projector (after each optimizer step)."""
        for tp, op in zip(self.target_projector.parameters(), self.projector.parameters()):
            tp.lerp_(op.detach(), 1.0 - momentum)


def _fp32(x: torch.Tensor):
    """The predictor runs in fp32 even under mixed-precision autocast: it is ~5% of the step's FLOPs, and a
    16-step recurrent rollout in bf16/fp16 drifts ~9% (relative L2) from the fp32 one the probe evaluates."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def check_frames(cfg: ModelConfig, H: int, W: int, where) -> None:
    """Refuse frames too small for the encoder: every stride-2 stage must see at least 2x2 pixels."""
    need = 2 ** len(cfg.encoder_widths)
    if H < need or W < need:
        raise JepaFastError(f"{where}: frames are {H}x{W}, too small for the encoder's {len(cfg.encoder_widths)} "
                            f"stride-2 stages (it needs at least {need}x{need}): use larger frames, or fewer stages "
                            "(--set model.encoder_widths=8,16,32)")


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the target projector is an EMA buffer-like copy and does not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_flops(cfg: ModelConfig, prediction: str, frame_shape: tuple[int, int, int, int]) -> float:
    """Model FLOPs of one training step (forward + backward) per trajectory of frame_shape (T, C, H, W):
    counted once on a batch of 2 stored (uint8) trajectories and halved (for MFU)."""
    from torch.utils.flop_counter import FlopCounterMode

    T, C, H, W = frame_shape
    model = JEPA(cfg)
    states = torch.zeros(2, T, C, H, W, dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        latents = model.encode_stored(states, torch.ones(C))
        outs = model.predict_for_training(latents, torch.zeros(2, T - 1, 2), prediction)
        sum(o.float().sum() for o in outs).backward()
    return counter.get_total_flops() / 2
