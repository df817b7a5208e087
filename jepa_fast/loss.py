"""The JEPA loss: prediction MSE + variance hinge + covariance penalty (VICReg) + raw-latent MSE.

Everything returns tensors (never Python floats), so the training step has no hidden host syncs.
``var_cov_reference`` is the plain-torch definition; ``impl="triton"`` swaps in the fused kernels of
``jepa_fast.kernels.vicreg`` (a ``torch.library`` custom op), which a test proves equal in value
and gradient.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from jepa_fast.config import LossConfig

log = logging.getLogger(__name__)
_warned_fallback = False


def hinge_std(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Variance hinge. z (B, T, D): std over the batch per (t, d) as sqrt(var + eps); mean relu(gamma - std)."""
    std = torch.sqrt(z.var(dim=0) + eps)  # (T, D), unbiased
    return F.relu(gamma - std).mean()


def offdiag_cov(z: torch.Tensor) -> torch.Tensor:
    """Covariance penalty. z (B, T, D): centre each (t, d) over the batch, flatten to (B*T, D),
    C = Zc^T Zc / (B*T - 1), return the sum of squared off-diagonal entries / D."""
    B, T, D = z.shape
    zc = (z - z.mean(dim=0, keepdim=True)).reshape(B * T, D)  # (N, D)
    c = zc.T @ zc / (B * T - 1)  # (D, D)
    off = c - torch.diag(torch.diagonal(c))
    return off.pow(2).sum() / D


def var_cov_reference(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """z (G, B, T, D) -> (var_loss (G,), cov_loss (G,)) in fp32, one group per branch."""
    zf = z.float()
    var = torch.stack([hinge_std(g, gamma, eps) for g in zf])
    cov = torch.stack([offdiag_cov(g) for g in zf])
    return var, cov


def var_cov(z: torch.Tensor, impl: str = "torch", gamma: float = 1.0, eps: float = 1e-4
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance and covariance terms of every group in z (G, B, T, D), by the chosen implementation."""
    if impl == "triton":
        from jepa_fast.kernels import vicreg

        if vicreg.triton_runs_on(z.device):
            var, cov, *_ = vicreg.vicreg_var_cov(z.contiguous(), gamma, eps)
            return var, cov
        global _warned_fallback
        if not _warned_fallback:
            log.warning("loss.impl='triton' but Triton cannot run on %s here; using the torch reference", z.device)
            _warned_fallback = True
    return var_cov_reference(z, gamma, eps)


def jepa_loss(pred: torch.Tensor, latents: torch.Tensor, proj_pred: torch.Tensor, proj_target: torch.Tensor,
              cfg: LossConfig) -> dict[str, torch.Tensor]:
    """The training loss and its terms.

    Args: pred (B, T, D) predicted latents; latents (B, T, D) encoder latents; proj_pred, proj_target
    (B, T, D) their projections (online projector, EMA target projector).
    Returns a dict of scalar tensors: loss, sim, std, cov, raw.
    """
    sim = F.mse_loss(proj_pred.float(), proj_target.float())
    raw = F.mse_loss(pred.float(), latents.float())
    var, cov = var_cov(torch.stack([proj_pred, proj_target]), cfg.impl, cfg.std_target, cfg.std_eps)
    std_term, cov_term = var.sum(), cov.sum()
    loss = cfg.sim_coeff * sim + cfg.std_coeff * std_term + cfg.cov_coeff * cov_term + cfg.raw_coeff * raw
    return {"loss": loss, "sim": sim, "std": std_term, "cov": cov_term, "raw": raw}
