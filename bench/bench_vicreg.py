"""VICReg variance + covariance terms, forward + backward: eager torch vs compiled torch vs Triton.

    python -m bench.bench_vicreg [--ns 2176,8704,34816] [--ds 128,256,512] [--dtype bf16|fp32]

Both branches (predictions and targets) go through each implementation, as in training: the input
is z (2, B, T, D) with T the train split's trajectory length (17) and N = B * T. Timings are medians
of --repeats runs after warm-up (compile included in warm-up), with torch.cuda.synchronize() at the
boundaries on GPU.

Target, on one H100: Triton >= 3x eager and >= 1.3x compiled at N = 8704, D = 128.
On a machine without a GPU the Triton kernels only run in the (slow, numpy) interpreter, which says
nothing about speed: the script says so and measures the torch paths only.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import header, print_json, print_table, timeit
from jepa_fast.config import dataset_preset
from jepa_fast.kernels import vicreg
from jepa_fast.loss import var_cov_reference

T = dataset_preset("full").seq_len


def fwd_bwd(fn):
    def run(z):
        var, cov = fn(z)
        (var.sum() + cov.sum()).backward()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="2176,8704,34816", help="comma-separated N = B*T")
    ap.add_argument("--ds", default="128,256,512", help="comma-separated D")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    header("bench_vicreg: var + cov terms, fwd + bwd, both branches")
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    triton_ok = gpu and vicreg.HAVE_TRITON
    if not triton_ok:
        print("NOTE: the Triton kernels need a GPU to be timed (on CPU they only run in the interpreter);"
              " measuring the torch paths only.\n")
    sync = torch.cuda.synchronize if gpu else None
    eager = fwd_bwd(lambda z: var_cov_reference(z))
    fused = fwd_bwd(lambda z: vicreg.vicreg_var_cov(z, 1.0, 1e-4)[:2])
    rows, figures = [], {"bench": "vicreg", "device": torch.cuda.get_device_name(0) if gpu else "cpu",
                         "dtype": args.dtype}
    for N in (int(x) for x in args.ns.split(",")):
        B = N // T
        for D in (int(x) for x in args.ds.split(",")):
            z = torch.randn(2, B, T, D, device=device).to(dtype).requires_grad_(True)
            torch._dynamo.reset()  # one static-shape compile per shape (no recompile limit)
            compiled = fwd_bwd(torch.compile(lambda z: var_cov_reference(z), dynamic=False))
            reps = args.repeats if gpu else max(3, args.repeats // 5)
            t_eager = timeit(lambda z=z: eager(z), repeats=reps, warmup=2, sync=sync)
            t_comp = timeit(lambda z=z, c=compiled: c(z), repeats=reps, warmup=3, sync=sync)
            row = {"N": B * T, "D": D, "eager ms": t_eager * 1e3, "compiled ms": t_comp * 1e3,
                   "compiled_vs_eager": t_eager / t_comp}
            key = f"N{B * T}_D{D}"
            figures[f"{key}_eager_ms"] = round(t_eager * 1e3, 4)
            figures[f"{key}_compiled_ms"] = round(t_comp * 1e3, 4)
            figures[f"{key}_compiled_vs_eager"] = round(t_eager / t_comp, 3)
            if triton_ok:
                t_tri = timeit(lambda z=z: fused(z), repeats=reps, warmup=3, sync=sync)
                row.update({"triton ms": t_tri * 1e3, "triton_vs_eager": t_eager / t_tri,
                            "triton_vs_compiled": t_comp / t_tri})
                figures[f"{key}_triton_ms"] = round(t_tri * 1e3, 4)
                figures[f"{key}_triton_vs_eager"] = round(t_eager / t_tri, 3)
                figures[f"{key}_triton_vs_compiled"] = round(t_comp / t_tri, 3)
            rows.append(row)
    cols = ["N", "D", "eager ms", "compiled ms", "compiled_vs_eager"]
    if triton_ok:
        cols += ["triton ms", "triton_vs_eager", "triton_vs_compiled"]
    print_table(rows, cols)
    if triton_ok and "N8704_D128_triton_vs_eager" in figures:
        e, c = figures["N8704_D128_triton_vs_eager"], figures["N8704_D128_triton_vs_compiled"]
        print(f"\ntarget at N=8704, D=128: triton {e:.2f}x eager (>= 3), {c:.2f}x compiled (>= 1.3): "
              f"{'MET' if e >= 3 and c >= 1.3 else 'NOT MET'}")
    figures["triton_measured"] = triton_ok
    print_json(figures)


if __name__ == "__main__":
    main()
