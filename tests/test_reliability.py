"""Nothing a user owns is ever lost: each case of the adversarial run reproduced, then held to the rule.

An existing output is replaced only by a complete new one; a user's input is never an output; every
failure is one line that names the file; a corrupt or swapped byte is caught by content.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import one_line, snapshot

from jepa_fast import checkpoint as ckpt
from jepa_fast import cli, lock
from jepa_fast.config import apply_overrides, run_preset
from jepa_fast.errors import JepaFastError
from jepa_fast.train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tiny(*overrides):
    return apply_overrides(run_preset("tiny"), list(overrides))


@pytest.fixture()
def old_run(tiny_run, tmp_path):
    """A private copy of a finished run that a test tries to replace."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


# ---------------------------------------------------------------------------------------------
# 1: train --overwrite keeps the old run until the new one has a checkpoint


def test_an_overwrite_that_fails_before_its_first_checkpoint_leaves_the_old_run(old_run, tiny_packed, monkeypatch,
                                                                                capsys):
    import jepa_fast.train as T

    before = snapshot(old_run)
    real = T.jepa_loss

    def poisoned(*a, **k):
        out = real(*a, **k)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(T, "jepa_loss", poisoned)
    with pytest.raises(JepaFastError, match="NaN"):
        train(_tiny("train.max_steps=4"), tiny_packed, old_run, overwrite=True, progress=False)
    assert snapshot(old_run) == before
    assert "is back as it was" in capsys.readouterr().err
    assert not list(old_run.parent.glob(".run.*"))  # nothing left aside


def test_an_overwrite_killed_before_its_first_checkpoint_gets_the_old_run_back(old_run, tiny_packed, tmp_path):
    before = snapshot(old_run)
    cmd = [sys.executable, "-m", "jepa_fast", "train", str(tiny_packed), "--preset", "tiny", "--steps", "100000",
           "--out", str(old_run), "--overwrite", "--no-progress", "--set", "train.log_every=1",
           "--set", "train.save_every=-1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (list(old_run.parent.glob(".run.replaced-*"))
                                          and (old_run / "metrics.jsonl").exists()):  # the new run is under way
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(old_run.parent.glob(".run.replaced-*"))  # the old run waits aside
    # the next command that reads the run puts it back
    weights, _ = ckpt.load_model_weights(old_run)
    assert snapshot(old_run) == before and weights
    assert not list(old_run.parent.glob(".run.*"))


def test_an_overwrite_whose_first_checkpoint_fails_on_a_full_disk_keeps_the_old_run(old_run, tiny_packed,
                                                                                   monkeypatch, capsys):
    import errno

    before = snapshot(old_run)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_checkpoint_file", full)
    assert cli.main(["train", str(tiny_packed), "--preset", "tiny", "--out", str(old_run), "--overwrite",
                     "--no-progress", "--steps", "2"]) == 2
    one_line(capsys, "checkpoints/.step_0000002.tmp/rng_0.pt: No space left on device: this checkpoint needs")
    assert snapshot(old_run) == before


def test_a_completed_overwrite_replaces_the_old_run_and_leaves_nothing_aside(old_run, tiny_packed):
    train(_tiny("train.max_steps=2", "train.seed=5"), tiny_packed, old_run, overwrite=True, progress=False)
    assert ckpt.latest(old_run).name == "step_0000002"
    assert not (old_run / "checkpoints" / "step_0000006").exists()
    assert not list(old_run.parent.glob(".run.*"))


# ---------------------------------------------------------------------------------------------
# 2: an output is never the command's own input (or inside it, or around it), symlinks resolved


def test_pack_refuses_to_write_over_its_own_source(tiny_root, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_root, raw)
    before = snapshot(raw)
    (tmp_path / "link").symlink_to(raw)
    for argv, needle in [(["pack", str(raw), str(raw), "--overwrite"], "is the source"),
                         (["pack", str(raw / "train"), str(raw / "train"), "--overwrite"], "is the source"),
                         (["pack", str(raw), str(tmp_path / "link"), "--overwrite"], "is the source"),
                         (["pack", str(raw / "train"), str(raw / "train" / "x.zarr")], "is inside the source"),
                         (["pack", str(raw / "train"), str(tmp_path), "--overwrite"], "contains the source")]:
        assert cli.main([*argv, "--no-progress"]) == 2, argv
        one_line(capsys, needle, "destroy the input")
    assert snapshot(raw) == before


def test_train_and_probe_refuse_outputs_that_hold_their_inputs(tiny_packed, tiny_run, tmp_path, capsys):
    data = tmp_path / "packed"
    shutil.copytree(tiny_packed, data)
    before = snapshot(data)
    assert cli.main(["train", str(data), "--preset", "tiny", "--out", str(data), "--overwrite"]) == 2
    one_line(capsys, "run folder", "is the training data")
    assert cli.main(["train", str(data / "train.zarr"), "--preset", "tiny", "--out", str(data), "--overwrite"]) == 2
    one_line(capsys, "contains the training data")
    assert cli.main(["probe", str(tiny_run), "--data", str(data), "--out", str(data), "--overwrite"]) == 2
    one_line(capsys, "probe folder", "is the data")
    assert cli.main(["probe", str(tiny_run), "--data", str(data), "--out", str(tiny_run), "--overwrite"]) == 2
    one_line(capsys, "contains the checkpoints")
    assert snapshot(data) == before and ckpt.latest(tiny_run) is not None


# ---------------------------------------------------------------------------------------------
# 4-5: locks on resolved paths; a folder being written and a writer inside it refuse each other


def test_a_symlinked_out_shares_the_lock_of_its_target(tiny_packed, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with lock.exclusive(real, "run folder"):
        assert cli.main(["train", str(tiny_packed), "--preset", "tiny", "--out", str(tmp_path / "link")]) == 2
        one_line(capsys, "being written by another jepa-fast")
    assert not any(real.iterdir())


def test_a_root_pack_and_a_pack_inside_its_destination_refuse_each_other(tiny_root, tmp_path, capsys):
    from jepa_fast.data import pack

    dst = tmp_path / "pkg2"
    with lock.exclusive(dst, "packed dataset folder"):  # a root pack into pkg2 is running
        assert cli.main(["pack", str(tiny_root / "probe_wall" / "val"), str(dst / "other.zarr"),
                         "--no-progress"]) == 2
        one_line(capsys, "is inside", "pkg2", "being written by another jepa-fast")
    # a store written into pkg2 while the root pack runs, by a writer the lock cannot stop (another program,
    # or a pack that started before the root's lock existed): the root pack must not replace it
    real = pack.pack_split
    other = tmp_path / "other.zarr"
    real(tiny_root / "probe_wall" / "val", other, progress=False)

    def meanwhile(src, out, *a, **k):
        if not (dst / "other.zarr").exists():
            shutil.copytree(other, dst / "other.zarr")
        return real(src, out, *a, **k)

    pack.pack_split = meanwhile
    try:
        with pytest.raises(JepaFastError, match="appeared in .*pkg2 while this pack ran"):
            pack.pack_path(tiny_root, dst, progress=False)
    finally:
        pack.pack_split = real
    assert (dst / "other.zarr" / "zarr.json").exists()  # the other store survived
    assert (tmp_path / "pkg2.partial").exists()  # and this pack's work waits for --resume


def test_two_probes_of_one_output_refuse_before_computing(tiny_packed, tiny_run, tmp_path, capsys, monkeypatch):
    from jepa_fast import probe

    monkeypatch.setattr(probe, "probe_model", lambda *a, **k: pytest.fail("the second prober computed"))
    with lock.exclusive(tmp_path / "p", "probe folder"):
        assert cli.main(["probe", str(tiny_run), "--data", str(tiny_packed), "--out", str(tmp_path / "p")]) == 2
        one_line(capsys, "being written by another jepa-fast")


# ---------------------------------------------------------------------------------------------
# 7: checkpoints are loaded without running code; a malformed one is one line


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_pickles_code_is_refused_not_run(tiny_run, tiny_packed, tmp_path, capsys):
    import torch

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "ran"
    torch.save({"model": _Evil(marker), "config": {}, "step": 0}, ckpt.latest(run) / "state.pt")
    for argv in (["probe", str(run), "--data", str(tiny_packed), "--out", str(tmp_path / "p")],
                 ["export-reference", str(run), "--out", str(tmp_path / "w.pth")],
                 ["train", str(tiny_packed), "--preset", "tiny", "--init", str(run), "--out", str(tmp_path / "ft")],
                 ["train", str(tiny_packed), "--out", str(run), "--resume"]):
        assert cli.main(argv) == 2, argv
        one_line(capsys, "state.pt: refused", "do not load it")
    torch.save(_Evil(marker), tmp_path / "model_weights.pth")  # the course project's format too
    assert cli.main(["import-reference", str(tmp_path / "model_weights.pth"), "--out", str(tmp_path / "i")]) == 2
    one_line(capsys, "model_weights.pth")
    assert not marker.exists()


def _damaged(tiny_run, tmp_path, damage):
    import torch

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    found = ckpt.latest(run)
    if damage == "empty dict":
        torch.save({}, found / "state.pt")
    elif damage == "no optimizer":
        state = torch.load(found / "state.pt", weights_only=True)
        del state["optimizer"]
        torch.save(state, found / "state.pt")
    elif damage == "model not tensors":
        torch.save({"model": {"w": [1, 2]}, "config": {}, "step": 1}, found / "state.pt")
    elif damage == "garbage rng":
        (found / "rng_0.pt").write_bytes(os.urandom(300))
    elif damage == "missing rng":
        (found / "rng_0.pt").unlink()
    elif damage == "config.json a list":
        (run / "config.json").write_text("[1, 2]")
    elif damage == "config.json not json":
        (run / "config.json").write_bytes(b"\xff\x00{")
    return run


@pytest.mark.parametrize("damage,needle", [
    ("empty dict", "state.pt: not a complete jepa-fast checkpoint (no 'model')"),
    ("no optimizer", "state.pt: not a complete jepa-fast checkpoint (no 'optimizer')"),
    ("model not tensors", "'model' holds values that are not tensors"),
    ("garbage rng", "rng_0.pt: unreadable RNG state"),
    ("missing rng", "rng_0.pt: missing; a resumed run needs every process's RNG state"),
    ("config.json a list", "config.json: RunConfig: expected a mapping"),
    ("config.json not json", "config.json: not valid JSON"),
])
def test_a_malformed_checkpoint_is_one_line(tiny_run, tiny_packed, tmp_path, capsys, damage, needle):
    run = _damaged(tiny_run, tmp_path, damage)
    assert cli.main(["train", str(tiny_packed), "--out", str(run), "--resume", "--no-progress"]) == 2
    one_line(capsys, needle)


def test_a_binary_latest_pointer_falls_back_to_the_newest_complete_checkpoint(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00garbage")
    assert ckpt.latest(run).name == "step_0000006"
    assert "does not name a complete checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 8: corruption that keeps every CRC valid is caught by content, not by position


def _two_swapped(store):
    from jepa_fast.data import schema

    a, b = schema.shard_path(store, 1), schema.shard_path(store, 3)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _deleted_and_listed_absent(store):
    import zarr

    from jepa_fast.data import schema

    schema.shard_path(store, 2).unlink()
    g = zarr.open_group(str(store), mode="r+")
    g.attrs["absent_shards"] = sorted([*g.attrs["absent_shards"], 2])


def _scale_edited(store):
    import zarr

    g = zarr.open_group(str(store), mode="r+")
    g.attrs["scale"] = [2 * v for v in g.attrs["scale"]]


def _actions_rewritten(store):
    import numpy as np
    import zarr

    g = zarr.open_group(str(store), mode="r+")
    g["actions"][...] = np.asarray(g["actions"][...])[::-1]  # zarr writes them with valid CRCs


@pytest.mark.parametrize("damage,needle", [
    (_two_swapped, "holds other bytes than were written as shard 1"),
    (_deleted_and_listed_absent, "do not match their checksum"),
    (_scale_edited, "do not match their checksum"),
    (_actions_rewritten, "actions: holds other values than were packed"),
])
def test_damage_that_keeps_crcs_valid_is_caught(packed_copy, tmp_path, capsys, damage, needle):
    store = packed_copy / "train.zarr"
    damage(store)
    assert cli.main(["inspect", str(store), "--verify"]) == 2
    one_line(capsys, needle)
    assert cli.main(["train", str(packed_copy), "--preset", "tiny", "--out", str(tmp_path / "r")]) == 2
    one_line(capsys, needle)


def test_schema_2_stores_are_still_read_with_a_note(packed_copy, caplog):
    import logging

    import zarr

    from jepa_fast.data.reader import StoreReader

    store = packed_copy / "probe_wall" / "val.zarr"
    g = zarr.open_group(str(store), mode="r+")
    del g.attrs["integrity"]
    g.attrs["schema_version"] = 2
    with caplog.at_level(logging.WARNING):
        r = StoreReader(store)
        assert r.verify() == 64 and len(r.fingerprint()) == 64
    assert any("schema version 2 store: no content binding" in rec.getMessage() for rec in caplog.records)


# ---------------------------------------------------------------------------------------------
# 9: a resume on other data, or without its RNG state, is refused


def test_a_resume_on_other_data_is_refused_unless_asked(tiny_run, tmp_path, capsys):
    from jepa_fast.config import SimConfig, dataset_preset
    from jepa_fast.data.pack import pack_path
    from jepa_fast.sim.generate import generate_dataset

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    other = tmp_path / "other"
    generate_dataset(tmp_path / "raw", dataset_preset("tiny", splits=["train"]), SimConfig(), seed=1, progress=False)
    pack_path(tmp_path / "raw", other, progress=False)  # the same size, another seed
    argv = ["train", str(other), "--out", str(run), "--resume", "--no-progress"]
    assert cli.main(argv) == 2
    one_line(capsys, "was trained on other data", "--other-data")
    assert ckpt.latest(run).name == "step_0000006"
    assert cli.main([*argv, "--other-data"]) == 0
    assert "resuming on other data" in capsys.readouterr().out
