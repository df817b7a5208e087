"""Machine-dependent defaults (jepa_fast/hardware.py): each 'auto' resolved from the hardware, faked both ways."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from jepa_fast import hardware
from jepa_fast.config import apply_overrides, run_preset

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _fake_cpu(monkeypatch, capability: str, bf16: bool, amx: bool = False):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize("capability,bf16,amx,expect", [
    ("AVX512", True, False, True),   # Zen 4 / Cooper Lake: AVX512_BF16
    ("AVX512", False, True, True),   # Sapphire Rapids: AMX
    ("AVX512", False, False, False),  # Skylake-X: AVX-512 without bf16
    ("AVX2", False, False, False),   # Zen 3, most laptops
    ("AVX2", True, False, False),    # bf16 hardware, but torch dispatches AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)
])
def test_native_bf16_detection(monkeypatch, capability, bf16, amx, expect):
    _fake_cpu(monkeypatch, capability, bf16, amx)
    assert hardware.cpu_has_native_bf16() is expect


def test_auto_precision_on_a_cpu_both_ways(monkeypatch):
    _fake_cpu(monkeypatch, "AVX512", True)
    assert hardware.resolve_precision("auto", CPU) == ("bf16", "auto: CPU with native bf16")
    _fake_cpu(monkeypatch, "AVX2", False)
    assert hardware.resolve_precision("auto", CPU) == ("no", "auto: CPU without native bf16")


def test_auto_precision_on_cuda_both_ways(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve_precision("auto", CUDA) == ("bf16", "auto: CUDA bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.resolve_precision("auto", CUDA)[0] == "fp16"


def test_explicit_bf16_is_obeyed_with_a_warning_on_a_cpu_without_it(monkeypatch, caplog):
    _fake_cpu(monkeypatch, "AVX2", False)
    with caplog.at_level(logging.WARNING, logger="jepa_fast.hardware"):
        assert hardware.resolve_precision("bf16", CPU)[0] == "bf16"
    assert len(caplog.records) == 1 and "without native bf16" in caplog.records[0].getMessage()
    caplog.clear()
    _fake_cpu(monkeypatch, "AVX512", True)
    with caplog.at_level(logging.WARNING, logger="jepa_fast.hardware"):
        assert hardware.resolve_precision("bf16", CPU) == ("bf16", "requested")
        assert hardware.resolve_precision("fp16", CPU)[0] == "no"  # no fp16 autocast on a CPU: said, not silent
    assert len(caplog.records) == 1 and "fp16 needs a CUDA device" in caplog.records[0].getMessage()


def test_compile_threads_and_workers(monkeypatch):
    assert hardware.resolve_compile("auto", CUDA)[0] is True and hardware.resolve_compile("on", CPU)[0] is True
    # a CPU compiles a bf16 run long enough to pay back the compilation, with native bf16 only
    _fake_cpu(monkeypatch, "AVX512", True)
    assert hardware.resolve_compile("auto", CPU, "bf16", 2_500_000) == (True, "auto: CPU bf16 run of >= 1M frames")
    assert hardware.resolve_compile("auto", CPU, "bf16", 300_000)[0] is False
    assert hardware.resolve_compile("auto", CPU, "bf16", None)[0] is False  # not a training run
    assert hardware.resolve_compile("auto", CPU, "no", 2_500_000)[0] is False
    assert hardware.resolve_compile("off", CPU, "bf16", 2_500_000) == (False, "requested")
    _fake_cpu(monkeypatch, "AVX2", False)
    assert hardware.resolve_compile("auto", CPU, "bf16", 2_500_000)[0] is False  # emulated bf16
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(hardware, "_cores", lambda: 16)
    assert hardware.resolve_threads(0)[0] == 8 and hardware.resolve_threads(3) == (3, "requested")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hardware.resolve_threads(0) == (1, "auto: OMP_NUM_THREADS")
    assert hardware.resolve_workers(0, CPU)[0] == 1
    assert hardware.resolve_workers(0, CUDA)[0] == 4  # half of this process's 8 cores
    assert hardware.resolve_workers(5, CUDA)[0] == 5


def test_train_prints_and_records_the_resolved_precision(monkeypatch, tmp_path, tiny_packed, capsys):
    from jepa_fast.train import train

    _fake_cpu(monkeypatch, "AVX2", False)
    threads = torch.get_num_threads()
    try:
        run = apply_overrides(run_preset("tiny"), ["train.max_steps=2"])
        assert run.train.precision == "auto" and run.data.workers == 0  # the presets leave it to the machine
        train(run, tiny_packed, tmp_path / "r", progress=False)
    finally:
        torch.set_num_threads(threads)
    header = [line for line in capsys.readouterr().out.splitlines() if line.startswith("jepa-fast train")][0]
    assert "precision no (auto: CPU without native bf16)" in header and "compile off (auto: CPU" in header
    assert "threads " in header and "workers 1 (auto" in header
    # what was asked for and what this machine made of it, kept apart
    asked = json.loads((tmp_path / "r" / "config.json").read_text())
    assert asked["train"]["precision"] == "auto" and asked["train"]["compile"] == "auto"
    assert asked["data"]["workers"] == 0 and asked["train"]["threads"] == 0
    resolved = json.loads((tmp_path / "r" / "resolved.json").read_text())
    assert resolved["precision"] == "no" and resolved["compile"] is False and resolved["workers"] == 1
    assert resolved["why"]["precision"] == "auto: CPU without native bf16"


def test_a_run_resumed_on_another_machine_resolves_auto_there(monkeypatch, tmp_path, tiny_packed, capsys):
    """Started on a CPU without native bf16 (fp32, 1 worker), resumed where 'auto' means bf16 and more threads:
    the resumed run takes the new machine's settings and says what changed."""
    from jepa_fast import checkpoint as ckpt
    from jepa_fast.cli import build_parser, config_from_args
    from jepa_fast.train import train

    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        _fake_cpu(monkeypatch, "AVX2", False)
        monkeypatch.setattr(hardware, "_cores", lambda: 1)
        run = apply_overrides(run_preset("tiny"), ["train.max_steps=4", "train.save_every=2"])
        train(run, tiny_packed, tmp_path / "r", progress=False, stop_at_step=2)
        _fake_cpu(monkeypatch, "AVX512", True)  # the other machine: native bf16, two cores
        monkeypatch.setattr(hardware, "_cores", lambda: 2)
        capsys.readouterr()
        args = build_parser().parse_args(["train", str(tiny_packed), "--out", str(tmp_path / "r"), "--resume"])
        resumed = config_from_args(args)
        assert resumed.train.precision == "auto" and resumed.train.threads == 0  # the request, not the old answer
        out = train(resumed, tiny_packed, tmp_path / "r", resume=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert out["step"] == 4 and out["resolved"]["precision"] == "bf16" and out["resolved"]["threads"] == 2
    said = capsys.readouterr().out
    assert "resolves 'auto' differently: precision no -> bf16 (auto: CPU with native bf16)" in said
    assert "threads 1 -> 2" in said
    state, _ = ckpt.load(ckpt.latest(tmp_path / "r"), 0)
    assert state["config"]["train"]["precision"] == "auto" and state["resolved"]["precision"] == "bf16"


_MAPPED = """
import ctypes, ctypes.util, sys, torch
from jepa_fast import hardware
print(hardware.keep_freed_memory())

class Info(ctypes.Structure):  # struct mallinfo2 (glibc >= 2.33)
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
x = torch.empty(40 << 20, dtype=torch.uint8)  # a 40 MiB block, above glibc's 32 MiB mmap ceiling
print(libc.mallinfo2().hblkhd >= 40 << 20)  # True: it was mapped on its own (and is unmapped when freed)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.parametrize("env, kept", [({}, True), ({"JEPA_FAST_MALLOC": "default"}, False)])
def test_large_blocks_are_kept_in_the_heap_unless_asked_not_to(env, kept):
    try:
        has_mallinfo2 = hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2")
    except (OSError, TypeError):
        has_mallinfo2 = False
    if not has_mallinfo2:
        pytest.skip("not glibc >= 2.33 (no mallinfo2 to check with)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "JEPA_FAST_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", _MAPPED], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0].startswith("auto: large blocks kept") is kept, out[0]
    assert out[1] == str(not kept)  # kept: served from the heap, not mapped afresh per allocation
