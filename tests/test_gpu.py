"""GPU-only checks: DALI's GPU graph, the Triton kernels compiled for real, the compiled CUDA step.

Skipped (with the reason) on machines without CUDA, like the development and CI machines. On a GPU
machine: ``pytest -m gpu``. The Triton interpreter must be off there: run these in a process
without TRITON_INTERPRET=1 (``TRITON_INTERPRET=0 pytest -m gpu tests/test_gpu.py``).
"""

from __future__ import annotations

import os

import pytest
import torch

from jepa_fast.config import AUGMENT_PRESETS, DataConfig, LossConfig, model_preset
from jepa_fast.data.loader import build_loader, dali_importable
from jepa_fast.data.split import SplitData

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
compiled_triton = pytest.mark.skipif(torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1",
                                     reason="Triton interpreter is on; run with TRITON_INTERPRET=0")


@pytest.fixture(scope="module")
def data(tiny_packed):
    out = tiny_packed / "train.zarr"
    return SplitData(out)


@pytest.mark.skipif(not dali_importable(), reason="nvidia-dali is not importable here")
def test_dali_gpu_inflate_equals_the_torch_loader(data):
    cfg = DataConfig(batch_size=32, seed=4, augment=AUGMENT_PRESETS["full"])
    gpu = torch.device("cuda")
    dali = build_loader(data, DataConfig(**{**cfg.__dict__, "loader": "dali"}), gpu)
    ref = build_loader(data, DataConfig(**{**cfg.__dict__, "loader": "torch", "resident": "device"}), gpu)
    assert dali.mode == "dali-gpu" and ref.mode == "torch-device"
    for a, b in zip(dali, ref):
        for f in ("states", "actions", "targets", "indices", "brightness", "noise_std"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.skipif(not dali_importable(), reason="nvidia-dali is not importable here")
def test_dali_gpu_windows_of_unequal_episodes_equal_the_torch_loader(episodes_store):
    """Windows that cross rows: DALI inflates each needed row once on the GPU and gathers the windows there."""
    data = SplitData(episodes_store, 7, 3)
    cfg = DataConfig(batch_size=16, seed=2, seq_len=7, stride=3)
    gpu = torch.device("cuda")
    dali = build_loader(data, DataConfig(**{**cfg.__dict__, "loader": "dali"}), gpu)
    ref = build_loader(data, DataConfig(**{**cfg.__dict__, "loader": "torch", "resident": "device"}), gpu)
    n = 0
    for a, b in zip(dali, ref):
        for f in ("states", "actions", "targets", "indices"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
        n += 1
    assert n == len(ref) > 0


@compiled_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 17, 97), (512, 17, 128), (64, 17, 256)])
def test_triton_kernels_on_gpu(shape, dtype):
    from jepa_fast.kernels import vicreg
    from jepa_fast.loss import var_cov_reference

    B, T, D = shape
    z = (torch.randn(2, B, T, D, device="cuda") * torch.linspace(0.3, 1.8, D, device="cuda")).to(dtype)
    z.requires_grad_(True)
    var, cov, *_ = vicreg.vicreg_var_cov(z, 1.0, 1e-4)
    zr = z.detach().clone().requires_grad_(True)
    var_r, cov_r = var_cov_reference(zr)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(var, var_r, **tol)
    torch.testing.assert_close(cov, cov_r, **tol)
    (g,) = torch.autograd.grad(var.sum() + cov.sum(), z)
    (gr,) = torch.autograd.grad(var_r.sum() + cov_r.sum(), zr)
    torch.testing.assert_close(g.float(), gr.float(), rtol=5e-2 if dtype == torch.bfloat16 else 1e-3, atol=1e-5)


@compiled_triton
def test_compiled_cuda_step_with_triton_loss():
    from jepa_fast.model import JEPA
    from jepa_fast.train import ForwardLoss

    torch._dynamo.reset()
    torch._dynamo.config.allow_rnn = True
    model = JEPA(model_preset("ours")).cuda()
    fn = torch.compile(ForwardLoss(model, LossConfig(impl="triton"), "rollout"), fullgraph=True)
    B, T = 8, 17
    states = torch.randint(0, 255, (B, T, 2, 65, 65), dtype=torch.uint8, device="cuda")
    args = (states, torch.randn(B, T - 1, 2, device="cuda"), torch.full((2,), 0.00037, device="cuda"),
            torch.ones(B, device="cuda"), torch.zeros(B, device="cuda"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        terms = fn(*args)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
