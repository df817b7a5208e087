"""Dataset generation: the original file format, determinism, atomicity and one-line errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from jepa_fast import cli
from jepa_fast.config import SPLITS, SimConfig, dataset_preset
from jepa_fast.errors import JepaFastError
from jepa_fast.sim import generate as gen


def _digest(root):
    """Every file of a dataset root, the manifest (dataset.json) included."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_every_split_in_the_original_format(tiny_root):
    meta = json.loads((tiny_root / "dataset.json").read_text())
    assert set(meta["splits"]) == set(SPLITS)
    for split in SPLITS:
        d = gen.load_split(tiny_root / split)
        n = dataset_preset("tiny").sizes[split]
        T = 65 if split.startswith("probe_expert") else 17
        assert d["states"].shape == (n, T, 2, 65, 65) and d["states"].dtype == np.float32
        assert d["actions"].shape == (n, T - 1, 2) and d["actions"].dtype == np.float32
        assert d["locations"].shape == (n, T, 2) and d["locations"].dtype == np.float32
        assert np.isfinite(d["states"]).all()
    # the stored frames are the rendering of the stored locations
    d = gen.load_split(tiny_root / "train")
    flat = np.asarray(d["states"][:8, :, 0]).reshape(8, 17, -1).argmax(-1)
    rows, cols = np.divmod(flat, 65)
    assert (np.abs(cols - d["locations"][:8, :, 0]) <= 0.5 + 1e-4).all()
    assert (np.abs(rows - d["locations"][:8, :, 1]) <= 0.5 + 1e-4).all()


def test_same_seed_is_byte_identical_and_seeds_differ(tmp_path, tiny_root):
    ds = dataset_preset("tiny")
    gen.generate_dataset(tmp_path / "a", ds, SimConfig(), seed=0, progress=False)
    assert _digest(tmp_path / "a") == _digest(tiny_root)
    gen.generate_dataset(tmp_path / "b", dataset_preset("tiny", splits=["train"]), SimConfig(), seed=1,
                         progress=False)
    a = np.load(tmp_path / "a" / "train" / "actions.npy")
    b = np.load(tmp_path / "b" / "train" / "actions.npy")
    assert not np.array_equal(a, b)
    # independent streams: probe_normal/train is not a copy of train's start
    c = np.load(tmp_path / "a" / "probe_normal" / "train" / "actions.npy")
    assert not np.array_equal(a[:16], c[:16])


def test_block_size_does_not_depend_on_n():
    # a longer split starts with exactly the trajectories of a shorter one (streams are per block)
    sim = SimConfig()
    short = np.concatenate([b.actions for b in gen.iter_blocks("train", 300, 17, sim, 0, render=False)])
    long = np.concatenate([b.actions for b in gen.iter_blocks("train", 600, 17, sim, 0, render=False)])
    np.testing.assert_array_equal(short[:256], long[:256])


def test_uint8_and_64px(tmp_path):
    sim = SimConfig(image_size=64, value_scale="uint8")
    gen.generate_dataset(tmp_path / "u", dataset_preset("tiny", splits=["probe_wall/val"]), sim, dtype="uint8",
                         progress=False)
    s = np.load(tmp_path / "u" / "probe_wall" / "val" / "states.npy")
    assert s.dtype == np.uint8 and s.shape == (64, 17, 2, 64, 64)


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jepa_fast", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args,needle", [
    (["generate", "--preset", "huge", "--out", "X"], "preset 'huge': unknown"),
    (["generate", "--preset", "tiny", "--image-size", "63", "--out", "X"], "image_size=63"),
    (["generate", "--preset", "tiny", "--splits", "train,bogus", "--out", "X"], "split 'bogus': unknown"),
    (["generate", "--preset", "tiny", "--n", "0", "--out", "X"], "--n 0"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, needle):
    args = [a if a != "X" else str(tmp_path / "out") for a in args]
    r = _run_cli(*args)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and needle in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_non_empty_output_needs_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(JepaFastError, match="not empty; pass --overwrite"):
        gen.generate_dataset(out, dataset_preset("tiny", splits=["train"]), SimConfig(), progress=False)
    gen.generate_dataset(out, dataset_preset("tiny", splits=["train"]), SimConfig(), overwrite=True,
                         progress=False)
    assert not (out / "keep.txt").exists() and (out / "train" / "states.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folders left behind


def test_refuses_when_disk_is_too_small(tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 << 20))
    with pytest.raises(JepaFastError, match="--dtype uint8"):
        gen.generate_dataset(tmp_path / "ds", dataset_preset("full"), SimConfig(), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_write = gen.NpySplitWriter.write

    def failing_write(self, block):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_write(self, block)

    monkeypatch.setattr(gen.NpySplitWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_dataset(tmp_path / "ds", dataset_preset("tiny"), SimConfig(), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_mid_generation_leaves_nothing(tmp_path):
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "jepa_fast", "generate", "--preset", "small", "--n", "40000",
                             "--out", str(tmp_path / "ds"), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not any(tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_show_writes_a_png(tiny_root, tmp_path):
    out = tmp_path / "s.png"
    assert cli.main(["show", str(tiny_root / "probe_wall" / "val"), "--out", str(out), "--n", "2"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["show", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_help_explains_every_option():
    r = _run_cli("generate", "--help")
    assert r.returncode == 0
    for opt in ("--preset", "--out", "--seed", "--dtype", "--image-size", "--n", "--overwrite"):
        assert opt in r.stdout
