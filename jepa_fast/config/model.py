"""Configuration of the model and of its loss (jepa_fast/model.py, jepa_fast/loss.py)."""

from __future__ import annotations

from dataclasses import dataclass

from jepa_fast.config.base import check

# ---------------------------------------------------------------------------------------------
# Model and loss


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the JEPA world model (jepa_fast/model.py)."""

    preset: str = "reference"
    """Name of the preset these values came from (informational)."""
    encoder_widths: tuple[int, ...] = (8, 16, 32, 64)
    """Channels of the Conv3x3-stride-2 stages of each encoder branch."""
    repr_dim: int = 128
    """D: latent size (the two branch outputs are concatenated)."""
    action_dim: int = 128
    """Size of the action embedding Linear(2 -> action_dim)."""
    hidden_dim: int = 128
    """GRU hidden size."""
    gru_layers: int = 2
    """GRU layers."""
    gru_dropout: float = 0.1
    """Dropout between GRU layers (training only)."""
    proj_dim: int = 128
    """Hidden width of the projector MLP."""
    residual_predictor: bool = False
    """Predict the change of the latent (s_{t+1} = s_t + f(...)) instead of the latent itself; no extra
    parameters, and rollouts drift less over long horizons."""
    static_walls: bool = True
    """Encode the wall channel once per trajectory and broadcast it over T. Exact when the wall image
    is constant over a trajectory (true of the two-rooms data, spec §1, and checked at pack time: the
    trainer turns this off for a store whose attrs say otherwise). Halves the wall branch's cost ~T x;
    the only difference is BatchNorm's running-variance correction (B vs B*T samples)."""
    input_scale: float = 10.6165
    """Multiplies raw frame values before the encoder: 1 / (1 / (2 pi 1.3^2)) maps the real data's
    agent peak and wall value (0.0942) to 1."""

    def __post_init__(self) -> None:
        check(len(self.encoder_widths) >= 1 and all(w >= 1 for w in self.encoder_widths),
               f"model.encoder_widths={self.encoder_widths}: need one or more positive widths")
        for name in ("repr_dim", "action_dim", "hidden_dim", "gru_layers", "proj_dim"):
            check(getattr(self, name) >= 1, f"model.{name}={getattr(self, name)}: must be >= 1")
        check(self.repr_dim >= 2, f"model.repr_dim={self.repr_dim}: must be >= 2")
        check(0 <= self.gru_dropout < 1, f"model.gru_dropout={self.gru_dropout}: must be in [0, 1)")
        check(self.input_scale > 0, f"model.input_scale={self.input_scale}: must be > 0")


MODEL_PRESETS: dict[str, dict] = {
    # the public course project (Lake-Wang/Deep_Learning_JEPA_World_Model): 477,664 parameters
    "reference": {},
    # ours: the same 477,664 parameters, a residual predictor (trained by rollout: see RunConfig "ours")
    "ours": {"residual_predictor": True},
}


def model_preset(name: str, **overrides) -> ModelConfig:
    check(name in MODEL_PRESETS, f"model preset {name!r}: unknown; choose from {', '.join(MODEL_PRESETS)}")
    return ModelConfig(**{"preset": name, **MODEL_PRESETS[name], **overrides})


@dataclass(frozen=True)
class LossConfig:
    """VICReg-style JEPA loss (jepa_fast/loss.py)."""

    sim_coeff: float = 5.0
    """Weight of MSE(projected predictions, projected targets)."""
    std_coeff: float = 5.0
    """Weight of the variance hinge (summed over both branches)."""
    cov_coeff: float = 1.0
    """Weight of the off-diagonal covariance penalty (summed over both branches)."""
    raw_coeff: float = 1.0
    """Weight of MSE(predicted latents, encoder latents)."""
    std_target: float = 1.0
    """gamma of the hinge relu(gamma - std)."""
    std_eps: float = 1e-4
    """std = sqrt(var + eps)."""
    impl: str = "torch"
    """'torch' (plain reference) or 'triton' (fused kernels; falls back to torch where Triton cannot run)."""

    def __post_init__(self) -> None:
        for name in ("sim_coeff", "std_coeff", "cov_coeff", "raw_coeff", "std_eps"):
            check(getattr(self, name) >= 0, f"loss.{name}={getattr(self, name)}: must be >= 0")
        check(self.std_target > 0, f"loss.std_target={self.std_target}: must be > 0")
        check(self.impl in ("torch", "triton"), f"loss.impl={self.impl!r}: use 'torch' or 'triton'")

