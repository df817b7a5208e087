"""Machine-dependent defaults (jepa_fast/hardware.py): each 'auto' resolved from the hardware, faked both ways."""

from __future__ import annotations

import json
import logging

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
    assert hardware.resolve_compile("auto", CPU)[0] is False and hardware.resolve_compile("auto", CUDA)[0] is True
    assert hardware.resolve_compile("on", CPU)[0] is True
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(hardware, "_cores", lambda: 16)
    assert hardware.resolve_threads(0)[0] == 8 and hardware.resolve_threads(3) == (3, "requested")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hardware.resolve_threads(0) == (1, "auto: OMP_NUM_THREADS")
    assert hardware.resolve_workers(0, CPU)[0] == 1
    assert hardware.resolve_workers(0, CUDA)[0] == 4  # half of this process's 8 cores
    assert hardware.resolve_workers(5, CUDA)[0] == 5


def test_train_prints_and_records_the_resolved_precision(monkeypatch, tmp_path, tiny_root, capsys):
    from jepa_fast.data.pack import pack_split
    from jepa_fast.train import train

    pack_split(tiny_root / "train", tmp_path / "train.zarr", progress=False)
    _fake_cpu(monkeypatch, "AVX2", False)
    threads = torch.get_num_threads()
    try:
        run = apply_overrides(run_preset("tiny"), ["train.max_steps=2"])
        assert run.train.precision == "auto" and run.data.workers == 0  # the presets leave it to the machine
        train(run, tmp_path, tmp_path / "r", progress=False)
    finally:
        torch.set_num_threads(threads)
    header = [line for line in capsys.readouterr().out.splitlines() if line.startswith("jepa-fast train")][0]
    assert "precision no (auto: CPU without native bf16)" in header and "compile off (auto: CPU" in header
    assert "threads " in header and "workers 1 (auto" in header
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["train"]["precision"] == "no" and saved["train"]["compile"] == "off"
    assert saved["data"]["workers"] == 1 and saved["train"]["threads"] >= 1
