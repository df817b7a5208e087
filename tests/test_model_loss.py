"""The reference model reproduces the course project; the Triton VICReg kernels equal the torch reference."""

from __future__ import annotations

import logging

import pytest
import torch

from jepa_fast import loss as L
from jepa_fast.config import LossConfig, model_preset
from jepa_fast.kernels import vicreg
from jepa_fast.model import JEPA, count_parameters

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_reference_preset_has_exactly_the_reference_parameter_count():
    m = JEPA(model_preset("reference"))
    assert count_parameters(m) == 477_664
    parts = {"encoder": 180_448, "action_embed": 384, "predictor": 247_296, "predictor_out": 16_512,
             "projector": 33_024}
    for name, n in parts.items():
        assert count_parameters(getattr(m, name)) == n, name
    assert count_parameters(m.target_projector) == 0  # EMA copy, no gradients
    assert m.repr_dim == 128


@pytest.mark.parametrize("S", [64, 65])
def test_shapes_of_both_paths(S):
    torch.manual_seed(0)
    m = JEPA(model_preset("reference")).eval()
    states = torch.rand(3, 17, 2, S, S) * 0.094
    actions = torch.randn(3, 16, 2)
    lat = m.encode_stored(states, torch.ones(2))
    pred = m.predict_for_training(lat, actions, "teacher")[0]
    assert pred.shape == (3, 17, 128) and lat.shape == (3, 17, 128)
    torch.testing.assert_close(pred[:, 0], lat[:, 0])
    out = m(states[:, :1], actions)  # the evaluator's call
    assert out.shape == (3, 17, 128)
    assert m(states, actions[:, :5]).shape == (3, 6, 128)


def test_ours_preset_is_no_larger_than_the_reference():
    assert count_parameters(JEPA(model_preset("ours"))) == 477_664


@pytest.mark.parametrize("preset", ["reference", "ours"])
def test_rollout_step_one_equals_teacher_forced_step_one(preset):
    torch.manual_seed(1)
    m = JEPA(model_preset(preset)).eval()
    states = torch.rand(4, 9, 2, 65, 65) * 0.094
    actions = torch.randn(4, 8, 2)
    pred = m.predict_for_training(m.encode_stored(states, torch.ones(2)), actions, "teacher")[0]
    roll = m(states[:, :1], actions)
    torch.testing.assert_close(roll[:, :2], pred[:, :2], rtol=1e-5, atol=1e-6)
    assert (roll[:, 2:] - pred[:, 2:]).abs().max() > 1e-4  # later steps differ: feedback vs truth


def test_training_paths_return_projections():
    torch.manual_seed(3)
    m = JEPA(model_preset("ours")).eval()
    states = torch.rand(2, 6, 2, 65, 65) * 0.094
    actions = torch.randn(2, 5, 2)
    pred_r, lat_r, pp, pt = m.predict_for_training(m.encode_stored(states, torch.ones(2)), actions, "rollout")
    torch.testing.assert_close(pred_r, m(states[:, :1], actions))  # rollout training = evaluation path
    torch.testing.assert_close(pp, m.projector(pred_r))
    torch.testing.assert_close(pt, m.target_projector(lat_r))
    with pytest.raises(ValueError, match="prediction 'sideways'"):
        m.predict_for_training(lat_r, actions, "sideways")
    assert isinstance(m(states[:, :1], actions), torch.Tensor)  # the evaluator's call: one tensor, always


def test_ema_update_moves_target_towards_online():
    m = JEPA(model_preset("reference"))
    with torch.no_grad():
        for p in m.projector.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.target_projector.parameters()]
    m.update_target(0.996)
    for b, t, o in zip(before, m.target_projector.parameters(), m.projector.parameters()):
        torch.testing.assert_close(t, b + 0.004 * (o - b))


def test_loss_returns_tensors_and_matches_definition():
    torch.manual_seed(2)
    B, T, D = 8, 5, 16
    pred, lat, pp, pt = (torch.randn(B, T, D) for _ in range(4))
    out = L.jepa_loss(pred, lat, pp, pt, LossConfig())
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.values())
    expect = (5 * torch.mean((pp - pt) ** 2) + 5 * (L.hinge_std(pp) + L.hinge_std(pt))
              + (L.offdiag_cov(pp) + L.offdiag_cov(pt)) + torch.mean((pred - lat) ** 2))
    torch.testing.assert_close(out["loss"], expect)
    # the definitions themselves, against a direct loop
    zc = pp - pp.mean(0)
    c = torch.einsum("btd,bte->de", zc, zc) / (B * T - 1)
    torch.testing.assert_close(L.offdiag_cov(pp), (c.pow(2).sum() - c.diagonal().pow(2).sum()) / D)
    std = torch.sqrt(((pp - pp.mean(0)) ** 2).sum(0) / (B - 1) + 1e-4)
    torch.testing.assert_close(L.hinge_std(pp), torch.relu(1 - std).mean())


# ---------------------------------------------------------------------------------------------
# kernels (Triton interpreter on CPU; TRITON_INTERPRET=1 is set in conftest before any import)

needs_triton = pytest.mark.skipif(not vicreg.triton_runs_on(torch.device("cpu")),
                                  reason="Triton interpreter unavailable (triton not installed)")


def _z(G, B, T, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # scaled so that some (t, d) have std < 1 (active hinge) and some do not
    scale = torch.linspace(0.3, 1.8, D)
    return (torch.randn(G, B, T, D, generator=g) * scale).to(dtype)


@needs_triton
@pytest.mark.parametrize("shape", [(37, 17, 97), (16, 17, 128), (9, 7, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernels_match_reference_value_and_gradient(shape, dtype):
    B, T, D = shape
    z = _z(2, B, T, D, dtype).requires_grad_(True)
    var, cov, *_ = vicreg.vicreg_var_cov(z, 1.0, 1e-4)
    zr = z.detach().clone().requires_grad_(True)
    var_r, cov_r = L.var_cov_reference(zr)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(var, var_r, **tol)
    torch.testing.assert_close(cov, cov_r, **tol)
    w = torch.tensor([0.7, 1.3])
    (g,) = torch.autograd.grad((var * w).sum() + (cov * w.flip(0)).sum(), z)
    (gr,) = torch.autograd.grad((var_r * w).sum() + (cov_r * w.flip(0)).sum(), zr)
    assert g.dtype == dtype
    gtol = dict(rtol=1e-4, atol=1e-7) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-4)
    torch.testing.assert_close(g.float(), gr.float(), **gtol)
    assert (var > 0).all() and (cov > 0).all()  # the test exercises active hinges


@needs_triton
def test_fused_torch_formulation_matches_too():
    """The op's no-Triton path (same fused formulas in torch) agrees with the autograd reference."""
    z = _z(2, 11, 3, 40, torch.float32, seed=3)
    var, cov, mean, std, cmat = vicreg.forward_torch(z, 1.0, 1e-4)
    vt, ct, mt, st, cm = vicreg.forward_triton(z, 1.0, 1e-4)
    for a, b in ((var, vt), (cov, ct), (mean, mt), (std, st), (cmat, cm)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    gv, gc = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25])
    torch.testing.assert_close(vicreg.backward_torch(z, mean, std, cmat, gv, gc, 1.0),
                               vicreg.backward_triton(z, mean, std, cmat, gv, gc, 1.0), rtol=1e-5, atol=1e-7)


@needs_triton
def test_custom_op_registration_is_sound():
    z = _z(2, 5, 3, 16, torch.float32).requires_grad_(True)
    torch.library.opcheck(vicreg.vicreg_var_cov, (z, 1.0, 1e-4),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@needs_triton
def test_loss_with_triton_compiles_fullgraph():
    torch._dynamo.reset()
    cfg = LossConfig(impl="triton")

    def step(pred, lat, pp, pt):
        return L.jepa_loss(pred, lat, pp, pt, cfg)["loss"]

    tensors = [_z(1, 6, 4, 32, torch.float32, seed=s)[0].requires_grad_(True) for s in range(4)]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # fullgraph: a break would raise
    got = compiled(*tensors)
    got.backward()  # the backward graph AOT autograd traced through the op's autograd formula
    grads = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    ref = L.jepa_loss(*tensors, LossConfig(impl="torch"))["loss"]
    ref.backward()
    torch.testing.assert_close(got.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    for g, t in zip(grads, tensors):
        torch.testing.assert_close(g, t.grad, rtol=1e-4, atol=1e-6)


def test_triton_impl_falls_back_once_where_it_cannot_run(monkeypatch, caplog):
    monkeypatch.setattr(vicreg, "triton_runs_on", lambda device: False)
    monkeypatch.setattr(L, "_warned_fallback", False)
    z = _z(2, 6, 3, 8, torch.float32)
    with caplog.at_level(logging.WARNING, logger="jepa_fast.loss"):
        a = L.var_cov(z, "triton")
        L.var_cov(z, "triton")
    msgs = [r for r in caplog.records if "using the torch reference" in r.message]
    assert len(msgs) == 1
    torch.testing.assert_close(a[0], L.var_cov_reference(z)[0])


def test_gram_grid_fills_a_hopper_from_the_work_model():
    G, N, D, sms = 2, 512 * 17, 128, 132
    bd, splits, per = vicreg.gram_config(G, N, D, sms)
    programs = G * (D // bd) ** 2 * splits
    assert programs >= 2 * sms  # was 32 programs for 132 SMs
    assert per % 64 == 0 and per >= 4 * 64 and splits * per >= N > (splits - 1) * per
    assert vicreg.gram_config(2, 37, 19, 1) == (32, 1, 64)  # tiny problems: one split


@needs_triton
@pytest.mark.parametrize("shape", [(37, 17, 97), (64, 17, 128)])
def test_triton_kernels_with_the_rows_split_over_many_programs(shape, monkeypatch):
    """The split-row Gram (as launched on a 132-SM GPU) still matches the reference on odd shapes."""
    monkeypatch.setattr(vicreg, "_sm_count", lambda device: 132)
    B, T, D = shape
    assert vicreg.gram_config(2, B * T, D, 132)[1] > 1
    z = _z(2, B, T, D, torch.float32).requires_grad_(True)
    var, cov, *_ = vicreg.vicreg_var_cov(z, 1.0, 1e-4)
    var_r, cov_r = L.var_cov_reference(z.detach())
    torch.testing.assert_close(cov, cov_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, var_r, rtol=1e-5, atol=1e-6)


def test_static_channels_encoded_once_equal_every_frame_even_with_noise():
    """Encoding the wall channel once (static_once) or at every frame gives the same latents, noise included
    (the wall channel's noise is one image per trajectory in both paths); BatchNorm's running variance differs
    by exactly its n/(n-1) correction (n = B*h*w frames once, B*T*h*w at every frame), and nothing else."""
    torch.manual_seed(0)
    once = JEPA(model_preset("reference", static_once=True)).train()
    every = JEPA(model_preset("reference", static_once=False)).train()
    every.load_state_dict(once.state_dict())
    B, T, S = 3, 5, 33
    agent = torch.randint(0, 255, (B, T, 1, S, S), dtype=torch.uint8)
    walls = torch.randint(0, 2, (B, 1, 1, S, S), dtype=torch.uint8).mul(255).expand(B, T, 1, S, S)
    states = torch.cat([agent, walls], dim=2)
    scale, bright = torch.full((2,), 0.0942 / 255), torch.tensor([1.0, 0.9, 1.1])
    noise_std = torch.tensor([0.02, 0, 0.05])
    for bn in once.encoder.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.register_forward_pre_hook(lambda mod, inp: setattr(mod, "hw", inp[0].shape[-2] * inp[0].shape[-1]))
    outs = []
    for m in (once, every):
        torch.manual_seed(1)
        outs.append(m.encode_stored(states, scale, bright, noise_std, noise=True))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(once.encoder.named_modules(), every.encoder.modules()):
        if not isinstance(a, torch.nn.BatchNorm2d):
            continue
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-7)
        if name.startswith("branches.0"):
            torch.testing.assert_close(a.running_var, b.running_var)
            continue
        n = B * a.hw  # frames x pixels in the batch statistics of the once-encoded wall branch
        m = a.momentum
        biased = (a.running_var - (1 - m)) / m * (n - 1) / n
        torch.testing.assert_close(b.running_var, (1 - m) + m * biased * (n * T) / (n * T - 1), rtol=1e-5, atol=1e-7)
        assert not torch.allclose(a.running_var, b.running_var, rtol=1e-7, atol=0)  # the correction is real


def test_the_default_input_scale_maps_the_simulators_peak_to_one():
    import math

    import numpy as np

    from jepa_fast.config import ModelConfig, SimConfig
    from jepa_fast.sim import env

    sim = SimConfig()
    assert ModelConfig().input_scale == pytest.approx(2 * math.pi * sim.dot_std**2, rel=1e-12)
    frames = env.render(sim, np.array([[[30.0, 30.0]]]), np.array([28]), np.array([19]))  # (1, 1, 2, 65, 65)
    walls = frames[0, 0, 1]
    np.testing.assert_allclose(walls[walls > 0] * ModelConfig().input_scale, 1.0, rtol=1e-6)


def test_static_gain_and_norm_set_the_wall_features_scale_and_nothing_else():
    """model.static_gain multiplies the static (wall) branch's latents: with the same weights the agent's
    latents are unchanged, the walls' are exactly gain x, and the parameter count does not move."""
    from jepa_fast.config import ModelConfig
    from jepa_fast.errors import JepaFastError

    torch.manual_seed(0)
    plain = JEPA(model_preset("ours", static_gain=1.0, static_norm=False)).eval()
    scaled = JEPA(model_preset("ours", static_gain=0.1, static_norm=False)).eval()
    scaled.load_state_dict(plain.state_dict())
    assert count_parameters(scaled) == count_parameters(plain)
    states = torch.randint(0, 255, (2, 4, 2, 65, 65), dtype=torch.uint8)
    scale = torch.full((2,), 0.0942 / 255)
    a, b = plain.encode_stored(states, scale), scaled.encode_stored(states, scale)
    D = plain.repr_dim
    torch.testing.assert_close(b[..., :D // 2], a[..., :D // 2])
    torch.testing.assert_close(b[..., D // 2:], 0.1 * a[..., D // 2:])
    assert not torch.allclose(a[..., D // 2:], b[..., D // 2:])
    for bad in (0.0, -1.0, 1.5):
        with pytest.raises(JepaFastError, match="model.static_gain"):
            ModelConfig(static_gain=bad)
    # static_norm: the wall latents' RMS is the gain, whatever the weights' scale, so training cannot undo it
    normed = JEPA(model_preset("ours", static_gain=0.1, static_norm=True)).eval()
    normed.load_state_dict(plain.state_dict())
    with torch.no_grad():
        normed.encoder.branches[1].fc.weight.mul_(7.0)
        normed.encoder.branches[1].fc.bias.mul_(7.0)
    c = normed.encode_stored(states, scale)
    torch.testing.assert_close(c[..., :D // 2], a[..., :D // 2])
    rms = c[..., D // 2:].pow(2).mean(dim=-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, 0.1), rtol=1e-4, atol=1e-6)
    direction = a[..., D // 2:] / a[..., D // 2:].pow(2).mean(dim=-1, keepdim=True).sqrt()
    torch.testing.assert_close(c[..., D // 2:], 0.1 * direction, rtol=1e-4, atol=1e-6)
