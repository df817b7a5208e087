"""Fused VICReg variance and covariance terms in Triton, forward and backward.

# %% The math (reference: ``jepa_fast.loss.var_cov_reference``)
For each group g (the two branches, predictions and targets, go in one launch) take Z (B, T, D).
Centre every (t, d) by its batch mean: Zc = Z - mean_b Z. With N = B * T rows (Zc flattened):

    std[t, d]  = sqrt(sum_b Zc[b, t, d]^2 / (B - 1) + eps)
    var_loss   = mean_{t, d} relu(gamma - std[t, d])
    C          = Zc^T Zc / (N - 1)                          (D x D)
    cov_loss   = (sum_{i != j} C_ij^2) / D

Backward (both terms are linear in Zc per t, so their gradients already have zero batch mean and no
centring correction is needed):

    dZ = g_cov * 4 / (D (N - 1)) * Zc @ C_off  -  g_var / (T D) * 1[std < gamma] / std * Zc / (B - 1)

# %% Work and memory model (per group; fp32 accumulation everywhere, bf16 or fp32 inputs)
    kernel          FLOPs            bytes read                    bytes written
    stats           ~4 N D           2 x N D x s  (two passes)     2 T D x 4 + T x nD x 4
    gram            2 N D^2          (D / BD) x 2 x N D x s        D^2 x 4 (C, kept for backward)
    backward        2 N D^2 + 6 N D  (D / BD) x N D x s + D^2 x 4  N D x s
where s is the input element size. For the headline shape N = 8704 (B=512, T=17), D = 128, s = 2:
the GEMMs are 0.29 GFLOP each (~0.5 us of H100 tensor-core time); the whole op moves ~10 MB, i.e.
~4 us at 3 TB/s. The eager torch reference launches ~25 kernels and materialises Zc, C, the
off-diagonal mask and their gradients in fp32 (~40 MB of traffic); that launch count and traffic,
not FLOPs, is what fusion removes.

# %% Grid and blocks, from the model above (Hopper: 132 SMs on an H100 SXM, 4 warps a program)
The work is small and latency-bound, so the grid must fill the machine rather than minimise traffic:
* stats: one program per (g, t, D-block): G x T x D/BD = 2 x 17 x 2 = 68 programs at the headline shape,
  each streaming B = 512 rows twice (the two-pass variance is exact in fp32);
* gram: without splitting, G x (D/BD)^2 = 32 programs (BD = 32) would each walk all 8,704 rows with ~100
  SMs idle. ``gram_config`` splits the rows so that tiles x splits >= 4 x SMs while every program keeps
  >= 4 row blocks of 64: at the headline shape 8 tiles (BD = 64) x 34 splits = 272 programs of 256 rows;
  the (G, splits, D, D) fp32 partials (8.9 MB) are summed by one torch reduction;
* backward: one program per (g, 64-row block, D-block): 2 x 136 x 2 = 544 programs, each an
  (64 x D) @ (D x BD) product plus the hinge term.
bf16 inputs are centred in fp32 and fed to ``tl.dot`` as bf16 on a GPU (tensor cores, fp32 accumulation); fp32
inputs use ``input_precision="ieee"`` so results match the fp32 reference (TF32 would cost ~1e-3).
These sizes follow the model; they have NOT been timed on an H100 (no GPU was lent to this project
yet): ``bench/bench_vicreg.py`` and ``tools/gpu/check.sh`` measure them.

Run on CPU with ``TRITON_INTERPRET=1`` set before this module is imported (tests do it in conftest).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - the dev/CI image has triton
    HAVE_TRITON = False


def triton_runs_on(device: torch.device) -> bool:
    """Can our Triton kernels run on tensors of this device?"""
    if not HAVE_TRITON:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


# ---------------------------------------------------------------------------------------------
# Kernels

if HAVE_TRITON:

    @triton.jit
    def _stats_kernel(z_ptr, mean_ptr, std_ptr, hinge_ptr, B, T, D, n_db, gamma, eps,
                      BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
        """Per (g, t, d-block): batch mean, std, and the partial hinge sum."""
        g = tl.program_id(0)
        t = tl.program_id(1)
        db = tl.program_id(2)
        offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        base = z_ptr + g * B * T * D + t * D
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            offs_b = b0 + tl.arange(0, BLOCK_B)
            m = (offs_b[:, None] < B) & mask_d[None, :]
            x = tl.load(base + offs_b[:, None] * (T * D) + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
            acc += tl.sum(x, axis=0)
        mean = acc / B
        ss = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            offs_b = b0 + tl.arange(0, BLOCK_B)
            m = (offs_b[:, None] < B) & mask_d[None, :]
            x = tl.load(base + offs_b[:, None] * (T * D) + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
            xc = tl.where(m, x - mean[None, :], 0.0)
            ss += tl.sum(xc * xc, axis=0)
        std = tl.sqrt(ss / (B - 1) + eps)
        out = g * T * D + t * D + offs_d
        tl.store(mean_ptr + out, mean, mask=mask_d)
        tl.store(std_ptr + out, std, mask=mask_d)
        hinge = tl.where(mask_d, tl.maximum(gamma - std, 0.0), 0.0)
        tl.store(hinge_ptr + (g * T + t) * n_db + db, tl.sum(hinge, axis=0))

    @triton.jit
    def _load_centered(zg, mg, rows, t, cols, mask, D):
        """Zc tile: rows x cols of one group's Z minus the batch mean of each row's timestep; 0 where masked."""
        x = tl.load(zg + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        return tl.where(mask, x - tl.load(mg + t[:, None] * D + cols[None, :], mask=mask, other=0.0), 0.0)

    @triton.jit
    def _gram_kernel(z_ptr, mean_ptr, cpart_ptr, N, T, D, n_db, rows_per_split, n_split,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr, LOW_DOT: tl.constexpr):
        """Per (g, (i-block, j-block), row split s): the partial Gram tile Zc[rows_s, i]^T Zc[rows_s, j].

        Split over rows so that D=128 launches enough programs to fill the SMs (see the work model);
        the partials are summed afterwards. bf16 inputs go to tl.dot as bf16 (tensor cores, fp32 accumulator)
        after centring in fp32; fp32 inputs use IEEE fp32 dots.
        """
        g = tl.program_id(0)
        bi = tl.program_id(1) // n_db
        bj = tl.program_id(1) % n_db
        s = tl.program_id(2)
        offs_i = bi * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_j = bj * BLOCK_D + tl.arange(0, BLOCK_D)
        zg = z_ptr + g * N * D
        mg = mean_ptr + g * T * D
        acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
        lo = s * rows_per_split
        for n0 in range(lo, lo + rows_per_split, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            rmask = rows < N
            t = rows % T
            mi = rmask[:, None] & (offs_i[None, :] < D)
            mj = rmask[:, None] & (offs_j[None, :] < D)
            a = _load_centered(zg, mg, rows, t, offs_i, mi, D)
            b = _load_centered(zg, mg, rows, t, offs_j, mj, D)
            if IEEE:
                acc += tl.dot(tl.trans(a), b, input_precision="ieee")
            elif LOW_DOT:
                acc += tl.dot(tl.trans(a.to(z_ptr.dtype.element_ty)), b.to(z_ptr.dtype.element_ty))
            else:
                acc += tl.dot(tl.trans(a), b)
        cmask = (offs_i[:, None] < D) & (offs_j[None, :] < D)
        tl.store(cpart_ptr + ((g * n_split + s) * D + offs_i[:, None]) * D + offs_j[None, :], acc, mask=cmask)

    @triton.jit
    def _backward_kernel(z_ptr, mean_ptr, std_ptr, c_ptr, gvar_ptr, gcov_ptr, dz_ptr, B, N, T, D, gamma,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
                         LOW_DOT: tl.constexpr):
        """Per (g, row-block, col-block): dZ = k_cov * Zc @ C_off + k_var(t, d) * Zc."""
        g = tl.program_id(0)
        bn = tl.program_id(1)
        bd = tl.program_id(2)
        rows = bn * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = bd * BLOCK_D + tl.arange(0, BLOCK_D)
        rmask = rows < N
        cmask = cols < D
        t = rows % T
        zg = z_ptr + g * N * D
        mg = mean_ptr + g * T * D
        acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < D
            am = rmask[:, None] & kmask[None, :]
            a = _load_centered(zg, mg, rows, t, ks, am, D)
            cm = kmask[:, None] & cmask[None, :]
            c = tl.load(c_ptr + g * D * D + ks[:, None] * D + cols[None, :], mask=cm, other=0.0)
            c = tl.where(ks[:, None] == cols[None, :], 0.0, c)  # C_off: zero diagonal
            if IEEE:
                acc += tl.dot(a, c, input_precision="ieee")
            elif LOW_DOT:
                acc += tl.dot(a.to(z_ptr.dtype.element_ty), c.to(z_ptr.dtype.element_ty))
            else:
                acc += tl.dot(a, c)
        m = rmask[:, None] & cmask[None, :]
        xc = _load_centered(zg, mg, rows, t, cols, m, D)
        std = tl.load(std_ptr + g * T * D + t[:, None] * D + cols[None, :], mask=m, other=1.0)
        g_var = tl.load(gvar_ptr + g)
        g_cov = tl.load(gcov_ptr + g)
        k_cov = g_cov * 4.0 / (D * (N - 1.0))
        k_var = tl.where(std < gamma, -g_var / (T * D * (B - 1.0)) / std, 0.0)
        dz = k_cov * acc + k_var * xc
        tl.store(dz_ptr + g * N * D + rows[:, None] * D + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m)


def _block_d(D: int) -> int:
    """Column tile: 64 from D = 128 up (a 64 x 64 bf16 tile is one tensor-core-sized MMA fragment per warp
    group), 32 below (less padding on small or odd D)."""
    return 64 if D >= 128 else 32


def _low_dot(z: torch.Tensor) -> bool:
    """Feed tl.dot bf16/fp16 tiles (tensor cores) for 16-bit inputs on a GPU. Not in Triton's CPU interpreter,
    whose tl.dot computes wrong results for bf16 operands (Triton 3.9: errors of 1e10 on a 16x16 product),
    so there the centred fp32 tiles go in; the GPU path is checked by tests/test_gpu.py on hardware."""
    return z.dtype != torch.float32 and z.device.type == "cuda"


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter: no parallel hardware to fill


def gram_config(G: int, N: int, D: int, sms: int, block_n: int = 64) -> tuple[int, int, int]:
    """(BLOCK_D, row splits, rows per split) for the Gram kernel: enough programs to fill ``sms`` four times
    over (G x (D/BLOCK_D)^2 tiles x splits >= 4 x SMs), each still looping over >= 4 row blocks so the
    partial sums stay few. N=8704, D=128, G=2 on 132 SMs: 8 tiles x 34 splits of 256 rows = 272 programs
    (the 4-block minimum caps the splits)."""
    bd = _block_d(D)
    tiles = G * triton.cdiv(D, bd) ** 2
    blocks = triton.cdiv(N, block_n)
    splits = max(1, min(triton.cdiv(4 * sms, tiles), blocks // 4 or 1))
    per = triton.cdiv(blocks, splits) * block_n
    return bd, triton.cdiv(N, per), per


def _check(z: torch.Tensor) -> None:
    assert z.dim() == 4, f"z must be (G, B, T, D), got {tuple(z.shape)}"
    assert z.is_contiguous(), "z must be contiguous"
    assert z.dtype in (torch.float32, torch.bfloat16, torch.float16), f"unsupported dtype {z.dtype}"
    assert z.shape[1] >= 2, "need B >= 2 for a batch variance"


def forward_triton(z: torch.Tensor, gamma: float, eps: float):
    """Launch the stats and Gram kernels. z (G, B, T, D) -> var (G,), cov (G,), mean, std (G, T, D), C (G, D, D)."""
    _check(z)
    G, B, T, D = z.shape
    N = B * T
    BD = _block_d(D)
    n_db = triton.cdiv(D, BD)
    f32 = dict(device=z.device, dtype=torch.float32)
    mean = torch.empty((G, T, D), **f32)
    std = torch.empty((G, T, D), **f32)
    hinge = torch.empty((G, T, n_db), **f32)
    _stats_kernel[(G, T, n_db)](z, mean, std, hinge, B, T, D, n_db, gamma, eps, BLOCK_B=32, BLOCK_D=BD)
    _, n_split, per = gram_config(G, N, D, _sm_count(z.device))
    cpart = torch.empty((G, n_split, D, D), **f32)
    _gram_kernel[(G, n_db * n_db, n_split)](z, mean, cpart, N, T, D, n_db, per, n_split, BLOCK_N=64, BLOCK_D=BD,
                                            IEEE=z.dtype == torch.float32, LOW_DOT=_low_dot(z))
    cmat = cpart.sum(dim=1) / (N - 1)  # (G, D, D)
    var_loss = hinge.sum(dim=(1, 2)) / (T * D)
    sq = cmat.pow(2)
    cov_loss = (sq.sum(dim=(1, 2)) - torch.diagonal(sq, dim1=1, dim2=2).sum(-1)) / D
    return var_loss, cov_loss, mean, std, cmat


def backward_triton(z, mean, std, cmat, g_var, g_cov, gamma: float) -> torch.Tensor:
    _check(z)
    G, B, T, D = z.shape
    N = B * T
    BD = _block_d(D)
    dz = torch.empty_like(z)
    grid = (G, triton.cdiv(N, 64), triton.cdiv(D, BD))
    _backward_kernel[grid](z, mean, std, cmat, g_var.float().contiguous(), g_cov.float().contiguous(), dz, B, N, T,
                           D, gamma, BLOCK_N=64, BLOCK_D=BD, BLOCK_K=32, IEEE=z.dtype == torch.float32,
                           LOW_DOT=_low_dot(z))
    return dz


# ---------------------------------------------------------------------------------------------
# The same fused formulation in plain torch: what the op runs where Triton cannot


def forward_torch(z: torch.Tensor, gamma: float, eps: float):
    G, B, T, D = z.shape
    zf = z.float()
    mean = zf.mean(dim=1)  # (G, T, D)
    zc = zf - mean[:, None]  # (G, B, T, D)
    std = torch.sqrt(zc.pow(2).sum(dim=1) / (B - 1) + eps)  # (G, T, D)
    var_loss = torch.relu(gamma - std).mean(dim=(1, 2))
    flat = zc.reshape(G, B * T, D)
    cmat = flat.transpose(1, 2) @ flat / (B * T - 1)  # (G, D, D)
    diag = torch.diagonal(cmat, dim1=1, dim2=2)
    cov_loss = (cmat.pow(2).sum(dim=(1, 2)) - diag.pow(2).sum(dim=1)) / D
    return var_loss, cov_loss, mean, std, cmat


def backward_torch(z, mean, std, cmat, g_var, g_cov, gamma: float) -> torch.Tensor:
    G, B, T, D = z.shape
    N = B * T
    zc = z.float() - mean[:, None]
    c_off = cmat - torch.diag_embed(torch.diagonal(cmat, dim1=1, dim2=2))
    k_cov = (g_cov.float() * 4.0 / (D * (N - 1))).view(G, 1, 1)
    d_cov = (zc.reshape(G, N, D) @ c_off).view(G, B, T, D) * k_cov[:, None]
    k_var = torch.where(std < gamma, -g_var.float().view(G, 1, 1) / (T * D * (B - 1)) / std, torch.zeros_like(std))
    return (d_cov + k_var[:, None] * zc).to(z.dtype)


# ---------------------------------------------------------------------------------------------
# The custom op: opaque to torch.compile (no graph break), with a fake and an autograd formula


@torch.library.custom_op("jepa_fast::vicreg_var_cov", mutates_args=())
def vicreg_var_cov(z: torch.Tensor, gamma: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor, torch.Tensor]:
    """z (G, B, T, D) -> (var_loss (G,), cov_loss (G,), mean (G, T, D), std (G, T, D), C (G, D, D)); fp32 outputs."""
    z = z.contiguous()
    if triton_runs_on(z.device):
        return forward_triton(z, gamma, eps)
    return forward_torch(z, gamma, eps)


@vicreg_var_cov.register_fake
def _(z, gamma, eps):
    G, B, T, D = z.shape
    f = dict(device=z.device, dtype=torch.float32)
    return (z.new_empty((G,), **f), z.new_empty((G,), **f), z.new_empty((G, T, D), **f), z.new_empty((G, T, D), **f),
            z.new_empty((G, D, D), **f))


@torch.library.custom_op("jepa_fast::vicreg_var_cov_backward", mutates_args=())
def vicreg_var_cov_backward(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, cmat: torch.Tensor,
                            g_var: torch.Tensor, g_cov: torch.Tensor, gamma: float) -> torch.Tensor:
    z = z.contiguous()
    if triton_runs_on(z.device):
        return backward_triton(z, mean, std, cmat, g_var, g_cov, gamma)
    return backward_torch(z, mean, std, cmat, g_var, g_cov, gamma)


@vicreg_var_cov_backward.register_fake
def _(z, mean, std, cmat, g_var, g_cov, gamma):
    return torch.empty_like(z)


def _setup_context(ctx, inputs, output):
    z, gamma, _ = inputs
    _, _, mean, std, cmat = output
    ctx.save_for_backward(z, mean, std, cmat)
    ctx.gamma = gamma


def _backward(ctx, g_var, g_cov, g_mean, g_std, g_cmat):
    # mean, std and C are saved statistics for the backward; gradients into them are not supported
    z, mean, std, cmat = ctx.saved_tensors
    G = z.shape[0]
    zero = torch.zeros(G, device=z.device, dtype=torch.float32)
    g_var = zero if g_var is None else g_var
    g_cov = zero if g_cov is None else g_cov
    return vicreg_var_cov_backward(z, mean, std, cmat, g_var, g_cov, ctx.gamma), None, None


vicreg_var_cov.register_autograd(_backward, setup_context=_setup_context)
