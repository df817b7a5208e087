"""The JEPA world model: encoder, action embedding, GRU predictor, projectors, rollout.

Shapes: B batch, T frames, C channels, H x W frames, D latent size, A action size. The data's
``DataSpec`` (``jepa_fast.spec``) sets C, A, which channels are static over an episode and the input
statistics; the encoder has one CNN branch per channel group: the dynamic channels together, the static
ones together (encoded once per window). For the two-rooms data that is the course project's encoder
exactly, one branch for the agent and one for the walls: the ``reference`` preset reproduces it (477,664
trainable parameters); ``ours`` has the same parameters and a residual predictor, trained by rollout
(see ``config.ModelConfig`` and the run presets).

Interface of the original evaluator: ``model(states, actions)`` with states (B, 1, C, H, W) in the
raw value units of the .npy files and actions (B, T-1, A) returns the predicted embeddings
(B, T, D) for t = 0..T-1 by autoregressive rollout; ``model.repr_dim`` is D. Training calls
``encode_stored`` (the one path from stored frames to latents, which ``forward`` also takes) and
``predict_for_training`` (teacher forcing or rollout, plus the projections the loss needs).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from jepa_fast.config import ModelConfig
from jepa_fast.errors import JepaFastError
from jepa_fast.spec import TWO_ROOMS, DataSpec

# ---------------------------------------------------------------------------------------------
# Encoder


class ConvBranch(nn.Module):
    """One channel group's CNN: n x [Conv3x3 stride 2 + BatchNorm + ReLU], AdaptiveAvgPool(4x4), Linear."""

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


def channel_groups(spec: DataSpec) -> list[tuple[tuple[int, ...], bool]]:
    """(channels, static) of each encoder branch: the dynamic channels, then the static ones (empty groups left out).
    Two-rooms: [((0,), False), ((1,), True)], the agent and the walls."""
    dynamic = tuple(c for c in range(spec.channels) if not spec.static_channels[c])
    static = tuple(c for c in range(spec.channels) if spec.static_channels[c])
    return [(g, s) for g, s in ((dynamic, False), (static, True)) if g]


class Encoder(nn.Module):
    """One branch per channel group; their outputs (D split between them) are concatenated."""

    def __init__(self, cfg: ModelConfig, spec: DataSpec):
        super().__init__()
        self.groups = channel_groups(spec)
        G, D = len(self.groups), cfg.repr_dim
        sizes = [D // G + (1 if i < D % G else 0) for i in range(G)]
        self.branches = nn.ModuleList(ConvBranch(cfg.encoder_widths, size, in_ch=len(g))
                                      for (g, _), size in zip(self.groups, sizes))
        self._register_load_state_dict_pre_hook(_old_branch_names)


def _old_branch_names(state_dict, prefix, *args) -> None:
    """Checkpoints written before channel groups named the two-rooms branches 'agent' and 'walls'."""
    for old, new in (("agent.", "branches.0."), ("walls.", "branches.1.")):
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


# ---------------------------------------------------------------------------------------------
# The world model


class JEPA(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None, spec: DataSpec = TWO_ROOMS):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg, self.spec = cfg, spec
        D = cfg.repr_dim
        self.repr_dim = D
        self.encoder = Encoder(cfg, spec)
        self.action_embed = nn.Linear(spec.action_size, cfg.action_dim)
        self.predictor = nn.GRU(D + cfg.action_dim, cfg.hidden_dim, num_layers=cfg.gru_layers, batch_first=True,
                                dropout=cfg.gru_dropout if cfg.gru_layers > 1 else 0.0)
        self.predictor_out = nn.Linear(cfg.hidden_dim, D)
        # inverse dynamics (optional, training only): (s_t, s_{t+1}) -> a_t, normalised
        self.idm = nn.Sequential(nn.Linear(2 * D, cfg.idm_hidden), nn.ReLU(inplace=True),
                                 nn.Linear(cfg.idm_hidden, spec.action_size)) if cfg.idm_hidden > 0 else None
        self.projector = nn.Sequential(nn.Linear(D, cfg.proj_dim), nn.ReLU(inplace=True), nn.Linear(cfg.proj_dim, D))
        # BYOL-style target projector: an EMA copy of the online one, never trained by gradients
        self.target_projector = copy.deepcopy(self.projector)
        for p in self.target_projector.parameters():
            p.requires_grad_(False)
        # raw value units -> model input, per channel: (x - input_shift) x input_scale
        shift, scale = input_normalisation(cfg, spec)
        self.register_buffer("input_scale", torch.tensor(scale, dtype=torch.float32), persistent=True)
        self.register_buffer("input_shift", torch.tensor(shift, dtype=torch.float32), persistent=True)
        self.shifted = any(v != 0 for v in shift)  # the two-rooms data has none: no extra op in the step
        # actions -> action embedding input: (a - action_shift) x action_scale, with the store's statistics
        # (data of any scale, e.g. PushT's target positions in [0, 512]); two-rooms' raw (dx, dy) stay as they are
        norm = action_normalisation(cfg, spec)
        self.actions_normalised = norm is not None
        if norm is not None:
            self.register_buffer("action_shift", torch.tensor(norm[0], dtype=torch.float32), persistent=True)
            self.register_buffer("action_scale", torch.tensor(norm[1], dtype=torch.float32), persistent=True)
        self._register_load_state_dict_pre_hook(_no_shift_before)

    def normalise_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions (B, T-1, A) in the data's units -> what the action embedding takes (fp32)."""
        a = actions.float()
        if self.actions_normalised:
            a = (a - self.action_shift) * self.action_scale
        return a

    def embed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions (B, T-1, A) in the data's units -> their embeddings (B, T-1, action_dim), in fp32."""
        return self.action_embed(self.normalise_actions(actions))

    def inverse_dynamics_loss(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """MSE of the inverse-dynamics head's actions from (s_t, s_{t+1}) against the normalised actions."""
        with _fp32(latents):
            s = latents.float()
            pred = self.idm(torch.cat([s[:, :-1], s[:, 1:]], dim=-1))  # (B, T-1, A)
            return F.mse_loss(pred, self.normalise_actions(actions))

    # -- the one path from stored frames to latents ---------------------------------------------
    def encode_stored(self, states: torch.Tensor, scale: torch.Tensor, brightness: torch.Tensor | None = None,
                      noise_std: torch.Tensor | None = None, noise: bool = False) -> torch.Tensor:
        """Frames as stored (B, T, C, H, W) -> latents (B, T, D). Training, probing (through ``forward``)
        and the FLOP counter all come through here.

        ``states`` are uint8 from a store with its per-channel ``scale`` (C,) (value = uint8 x scale, raw
        units), or raw-unit floats with scale 1. Encoder input = value x brightness[b] (+ noise) x
        input_scale[c], computed in one multiply per channel on the device (inside the compiled step).
        With ``noise``: Gaussian, std noise_std[b] x the channel's full range (255 x scale[c]); fresh per
        frame for dynamic channels, one image per window for static ones (the walls). ``static_once``
        encodes only the first frame of the static channels and broadcasts it over T; with the same noise
        rule in both paths, encoding them once or T times differs only in BatchNorm's running-variance
        correction (n/(n-1) over B vs B*T frames; tests/test_model_loss.py). Input normalisation, per
        channel: (value - input_shift) x input_scale (``input_normalisation``).
        """
        B, T = states.shape[:2]
        factor = scale.to(states.device, torch.float32) * self.input_scale  # (C,)
        gain = factor.view(1, 1, -1, 1, 1)
        if brightness is not None:
            gain = gain * brightness.to(torch.float32).view(-1, 1, 1, 1, 1)  # (B or 1, 1, C, 1, 1)
        if noise:
            std = noise_std.to(torch.float32).view(-1, 1, 1, 1, 1) * (255 * factor.view(1, 1, -1, 1, 1))
        once = self.cfg.static_once and T > 1
        latents = []
        for (chans, static), branch in zip(self.encoder.groups, self.encoder.branches):
            sel = slice(chans[0], chans[-1] + 1) if chans == tuple(range(chans[0], chans[-1] + 1)) else list(chans)
            frames = states[:, :1, sel] if static and once else states[:, :, sel]  # (B, 1 or T, |g|, H, W)
            x = frames * gain[:, :, sel]  # the uint8 cast and scale in one pass
            if self.shifted:
                x = x - (self.input_shift * self.input_scale)[sel].view(1, 1, -1, 1, 1)
            if noise:  # fresh per frame; one image per window for static channels
                x = x + std[:, :, sel] * torch.randn_like(x[:, :1] if static else x)
            e = branch(x.flatten(0, 1)).view(B, x.shape[1], -1)  # (B, 1 or T, D_g)
            if static and self.cfg.static_norm:
                e = e * torch.rsqrt(e.float().pow(2).mean(dim=-1, keepdim=True) + 1e-6).to(e.dtype)
            if static and self.cfg.static_gain != 1:
                e = e * self.cfg.static_gain
            latents.append(e.expand(B, T, e.shape[-1]))
        return torch.cat(latents, dim=-1)  # (B, T, D)

    # -- training path: teacher forcing --------------------------------------------------------
    def _teacher_predict(self, s: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Latents s (B, T, D), actions (B, T-1, A) -> [s_0, one-step predictions from the true latents] (B, T, D)."""
        with _fp32(s):
            s = s.float()
            a = self.embed_actions(actions)  # (B, T-1, action_dim)
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
            a = self.embed_actions(actions)  # (B, T-1, action_dim)
            preds, h = [prev], None
            for t in range(a.shape[1]):
                out, h = self.predictor(torch.cat([prev, a[:, t]], dim=-1).unsqueeze(1), h)  # (B, 1, hidden)
                delta = self.predictor_out(out[:, 0])  # (B, D)
                prev = prev + delta if self.cfg.residual_predictor else delta
                preds.append(prev)
            return torch.stack(preds, dim=1)

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The evaluator's call: states (B, 1 or T, C, H, W) raw units, actions (B, T-1, A) -> (B, T, D).

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


def training_flops(cfg: ModelConfig, spec: DataSpec, prediction: str, T: int) -> float:
    """Model FLOPs of one training step (forward + backward) per window of T frames of ``spec``'s data:
    counted once on a batch of 2 stored (uint8) windows and halved (for MFU)."""
    from torch.utils.flop_counter import FlopCounterMode

    C, H, W = spec.frame_shape
    model = JEPA(cfg, spec)
    states = torch.zeros(2, T, C, H, W, dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        latents = model.encode_stored(states, torch.ones(C))
        outs = model.predict_for_training(latents, torch.zeros(2, T - 1, spec.action_size), prediction)
        sum(o.float().sum() for o in outs).backward()
    return counter.get_total_flops() / 2


def input_normalisation(cfg: ModelConfig, spec: DataSpec) -> tuple[list[float], list[float]]:
    """(input_shift, input_scale) per channel: model input = (value - shift) x scale.

    'constant' (the two-rooms presets, so the published numbers hold): shift 0, scale ``cfg.input_scale``;
    'store': the store's per-channel mean and 1 / std; 'auto': constant for the two-rooms data, else store."""
    mode = _norm_mode(cfg, spec)
    if mode == "constant":
        return [0.0] * spec.channels, [cfg.input_scale] * spec.channels
    if not spec.value_mean or not spec.value_std:
        raise JepaFastError("model.input_norm=store: the store records no value statistics (packed by an older "
                            "version?); re-pack it, or set model.input_norm=constant and model.input_scale")
    return list(spec.value_mean), _inverse(spec.value_std)


def action_normalisation(cfg: ModelConfig, spec: DataSpec) -> tuple[list[float], list[float]] | None:
    """(action_shift, action_scale) per component, or None (actions enter the embedding as they are).

    With input normalisation from the store (``input_norm`` store, or auto on data other than two-rooms), the
    actions are normalised too, by the store's per-component mean and std, when the store records them."""
    if _norm_mode(cfg, spec) != "store" or not spec.action_mean or not spec.action_std:
        return None
    return list(spec.action_mean), _inverse(spec.action_std)


def _norm_mode(cfg: ModelConfig, spec: DataSpec) -> str:
    """``model.input_norm`` resolved for this data: 'auto' is constant for two-rooms, store otherwise."""
    if cfg.input_norm == "auto":
        return "constant" if spec.protocol == "two-rooms" else "store"
    return cfg.input_norm


def _inverse(stds) -> list[float]:
    """1 / std per component (1 where a component never varies)."""
    return [1.0 / s if s > 1e-12 else 1.0 for s in stds]


def _no_shift_before(state_dict, prefix, *args) -> None:
    """Checkpoints written before input shifts had none: zeros. (Checkpoints from before action normalisation
    record a spec without action statistics, so their model has no action buffers: nothing to fill.)"""
    if prefix + "input_scale" in state_dict and prefix + "input_shift" not in state_dict:
        state_dict[prefix + "input_shift"] = torch.zeros_like(state_dict[prefix + "input_scale"])
