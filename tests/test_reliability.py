"""Nothing a user owns is ever lost: each case of the adversarial run reproduced, then held to the rule.

An existing output is replaced only by a complete new one; a user's input is never an output; every
failure is one line that names the file; a corrupt or swapped byte is caught by content.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
           "--set", "train.save_every=-1", "--set", "train.compile=off"]  # no compiling on a bf16 CPU
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (list(old_run.parent.glob(".run.replaced-*"))
                                          and (old_run / "metrics.jsonl").exists()):  # the new run is under way
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(old_run.parent.glob(".run.replaced-*"))  # the old run waits aside
    # the next command that reads the run puts it back
    weights, _, _ = ckpt.load_model_weights(old_run)
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


SCHEMA_3 = Path(__file__).parent / "data" / "schema3_probe_wall_val.zarr"
"""The tiny preset's probe_wall/val (seed 0) as the previous version (schema 3) packed it."""


def test_stores_of_the_previous_schema_read_as_the_same_data(tiny_packed, tmp_path, caplog):
    """A schema-3 store (written by the previous version) reads as the same frames, actions, targets and spec as
    today's pack of the same data; made schema 2 (its integrity record removed), it still reads, with a note."""
    import logging

    import zarr

    from jepa_fast.data.reader import StoreReader
    from jepa_fast.data.split import SplitData

    old, new = SplitData(SCHEMA_3), SplitData(tiny_packed / "probe_wall" / "val.zarr")
    assert old.reader.version == 3 and new.reader.version == 4
    assert (old.n, old.T, old.aligned) == (new.n, new.T, new.aligned) == (64, 17, True)
    for i in range(old.n):
        np.testing.assert_array_equal(old.decode_window(i), new.decode_window(i))
    idx = np.arange(old.n)
    np.testing.assert_array_equal(old.window_actions(idx), new.window_actions(idx))
    np.testing.assert_array_equal(old.window_targets(idx), new.window_targets(idx))
    no_stats = dict(value_mean=(), value_std=(), action_mean=(), action_std=())  # schema 3 records none
    assert dataclasses.replace(old.spec, **no_stats) == dataclasses.replace(new.spec, **no_stats)
    assert old.reader.fingerprint() == old.reader.attrs["integrity"]["digest"]
    v2 = tmp_path / "v2.zarr"
    shutil.copytree(SCHEMA_3, v2)
    g = zarr.open_group(str(v2), mode="r+")
    del g.attrs["integrity"]
    g.attrs["schema_version"] = 2
    with caplog.at_level(logging.WARNING):
        r = StoreReader(v2)
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


# ---------------------------------------------------------------------------------------------
# 6: a full disk in the logs: whole lines or nothing, TensorBoard never a traceback, a torn line read as torn


@pytest.mark.parametrize("fail_after,note", [(0, "TensorBoard logging is off"), (30, "TensorBoard logging stopped")])
def test_a_failing_tensorboard_writer_is_one_note_and_training_goes_on(tiny_packed, tmp_path, monkeypatch, capfd,
                                                                      fail_after, note):
    import errno

    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer import record_writer

    real, calls = record_writer.RecordWriter.write, {"n": 0}

    def full(self, data):
        calls["n"] += 1
        if calls["n"] > fail_after:
            raise OSError(errno.ENOSPC, "No space left on device", "events.out.tfevents")
        return real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    out = train(_tiny("train.max_steps=6", "train.log_every=1"), tiny_packed, tmp_path / "r", progress=False)
    err = capfd.readouterr().err
    assert out["step"] == 6 and "Traceback" not in err and note in err, err
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 6


def test_a_full_disk_in_the_metrics_log_leaves_whole_lines(tiny_packed, tmp_path, monkeypatch, capsys):
    import errno
    import json

    from jepa_fast import atomic

    real, calls = atomic.append_line, {"n": 0}

    def tearing(path, line):
        calls["n"] += 1
        if calls["n"] == 3:  # the third record: half of it reaches the disk, then the disk is full
            with open(path, "a") as f:
                f.write(line[: len(line) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, line)

    monkeypatch.setattr(atomic, "append_line", tearing)
    run = tmp_path / "r"
    assert cli.main(["train", str(tiny_packed), "--preset", "tiny", "--out", str(run), "--no-progress",
                     "--set", "train.log_every=1", "--set", "train.save_every=1"]) == 2
    one_line(capsys, "No space left on device", "--resume")
    # the next run reads the torn last line as torn, drops it and says so
    monkeypatch.setattr(atomic, "append_line", real)
    assert cli.main(["train", str(tiny_packed), "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "dropped a torn last line" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_append_line_undoes_a_write_cut_short(tmp_path, monkeypatch):
    import builtins
    import errno

    from jepa_fast import atomic

    log = tmp_path / "m.jsonl"
    atomic.append_line(log, '{"step": 1}')
    real_open = builtins.open

    class Short:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, text):
            self.f.write(text[:5])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: Short(real_open(p, mode, *a, **k))
                        if str(p) == str(log) and mode == "a" else real_open(p, mode, *a, **k))
    with pytest.raises(OSError) as e:
        atomic.append_line(log, '{"step": 2}')
    monkeypatch.undo()
    assert e.value.filename == str(log) and log.read_text() == '{"step": 1}\n'


# ---------------------------------------------------------------------------------------------
# 3: the demo never deletes what it did not write


def test_the_demo_refuses_a_folder_that_is_not_a_demos(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "run").mkdir(parents=True)
    (mine / "run" / "notes.txt").write_text("mine")
    (mine / "data").mkdir()
    (mine / "data" / "thesis.tex").write_text("mine too")
    before = snapshot(mine)
    assert cli.main(["demo", "--out", str(mine)]) == 2
    one_line(capsys, "not a jepa-fast demo's", "--overwrite")
    assert cli.main(["demo", "--out", str(mine), "--fresh"]) == 2  # --fresh redoes a demo's stages only
    one_line(capsys, "not a jepa-fast demo's")
    assert snapshot(mine) == before


def test_a_demo_folder_whose_run_holds_a_users_file_is_refused(tmp_path, capsys):
    from jepa_fast.demo import MARKER

    demo = tmp_path / "demo"
    (demo / "run").mkdir(parents=True)
    (demo / MARKER).write_text('{"seed": 0}')
    (demo / "run" / "config.json").write_text("{}")
    (demo / "run" / "my_analysis.ipynb").write_text("mine")
    assert cli.main(["demo", "--out", str(demo)]) == 2
    one_line(capsys, "my_analysis.ipynb", "did not write")
    assert (demo / "run" / "my_analysis.ipynb").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# 10: one outlier cannot wipe out a channel's dynamic range


def _with_outlier(tiny_root, tmp_path, value=1e30, where=(200, 3, 0, 10, 11)):

    src = tmp_path / "raw"
    shutil.copytree(tiny_root / "train", src)
    states = np.load(src / "states.npy", mmap_mode="r+")
    states[where] = value
    states.flush()
    return src


@pytest.mark.parametrize("scale", ["sample", "exact"])
def test_an_outlier_is_refused_with_its_count_and_place(tiny_root, tmp_path, capsys, scale):
    src = _with_outlier(tiny_root, tmp_path)
    assert cli.main(["pack", str(src), str(tmp_path / "s.zarr"), "--scale", scale, "--no-progress"]) == 2
    one_line(capsys, "1 value(s) of channel 0 are above", "1e+30 at episode 200, frame 3, pixel (y=10, x=11)",
             "--clip-outliers")
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.partial").exists()


def test_clip_outliers_keeps_the_channels_range_and_records_the_count(tiny_root, tmp_path):

    from jepa_fast.data import pack
    from jepa_fast.data.reader import StoreReader

    src = _with_outlier(tiny_root, tmp_path)
    assert cli.main(["pack", str(src), str(tmp_path / "s.zarr"), "--clip-outliers", "--no-progress"]) == 0
    r = StoreReader(tmp_path / "s.zarr")
    assert r.attrs["clipped_outliers"] == 1 and r.attrs["pack"]["options"]["clip_outliers"] is True
    assert r.scale[0] == pytest.approx(0.0942 / 255, rel=0.02)  # the range of the real values, not of 1e30
    frame = r.decode(200)[3, 0]
    assert frame[10, 11] == 255 and np.count_nonzero(r.decode(5)[:, 0]) > 0  # clipped; the rest survives
    pack.pack_split(tiny_root / "train", tmp_path / "clean.zarr", progress=False)  # and clean data needs no flag


# ---------------------------------------------------------------------------------------------
# 11-13: flags validated, hostile inputs refused in one line, wording


def test_steps_below_one_is_refused(tiny_packed, tmp_path, capsys):
    assert cli.main(["train", str(tiny_packed), "--preset", "tiny", "--steps", "-1", "--out", str(tmp_path / "r")]) == 2
    one_line(capsys, "--steps -1: must be >= 1")
    assert not (tmp_path / "r").exists()


def test_a_shard_size_that_would_exhaust_memory_is_refused_before_writing(tiny_root, tmp_path, capsys):
    assert cli.main(["pack", str(tiny_root / "train"), str(tmp_path / "s.zarr"), "--chunk-trajectories", "100000",
                     "--no-progress"]) == 0  # clamped to the split's 256 trajectories: 37 MB
    big = tmp_path / "big"
    big.mkdir()

    np.lib.format.open_memmap(big / "states.npy", mode="w+", dtype=np.uint8, shape=(600, 17, 2, 65, 65))
    np.save(big / "actions.npy", np.zeros((600, 16, 2), np.float32))
    assert cli.main(["pack", str(big), str(tmp_path / "b.zarr"), "--chunk-trajectories", "600", "--no-progress"]) == 2
    one_line(capsys, "shards of 600 rows of 17 frames would hold", "--chunk-trajectories")
    assert not (tmp_path / "b.zarr.partial").exists()


def test_a_crafted_npy_header_and_a_fifo_are_refused(tiny_root, tmp_path, capsys):

    crafted = tmp_path / "crafted"
    shutil.copytree(tiny_root / "probe_wall" / "val", crafted)
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**62, 17, 2, 65, 65)}
    with open(crafted / "states.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 1000)
    assert cli.main(["pack", str(crafted), str(tmp_path / "c.zarr"), "--no-progress"]) == 2
    one_line(capsys, "states.npy: truncated")
    fifo = tmp_path / "fifo"
    shutil.copytree(tiny_root / "probe_wall" / "val", fifo)
    (fifo / "states.npy").unlink()
    os.mkfifo(fifo / "states.npy")
    for argv in (["pack", str(fifo), str(tmp_path / "f.zarr"), "--no-progress"],
                 ["show", str(fifo), "--out", str(tmp_path / "f.png")]):
        assert cli.main(argv) == 2  # and returns at once instead of blocking on the FIFO
        one_line(capsys, "states.npy: not a regular file")


def test_probe_refuses_devices_it_cannot_run_on(tiny_run, tiny_packed, tmp_path, capsys):
    for device in ("meta", "xla", "cuda:x"):
        assert cli.main(["probe", str(tiny_run), "--data", str(tiny_packed), "--device", device,
                         "--out", str(tmp_path / "p")]) == 2
        one_line(capsys, f"--device {device}: use cpu, cuda or cuda:N")


def test_frames_too_small_for_the_encoder_are_named_as_such(tmp_path, capsys):

    raw = tmp_path / "raw"
    raw.mkdir()
    np.save(raw / "states.npy", np.random.default_rng(0).random((32, 5, 2, 8, 8)).astype(np.float32))
    np.save(raw / "actions.npy", np.zeros((32, 4, 2), np.float32))
    assert cli.main(["pack", str(raw), str(tmp_path / "s.zarr"), "--no-progress"]) == 0
    assert cli.main(["train", str(tmp_path / "s.zarr"), "--preset", "tiny", "--out", str(tmp_path / "r")]) == 2
    one_line(capsys, "frames are 8x8, too small for the encoder's 4 stride-2 stages (it needs at least 16x16)")


def test_a_full_disk_names_the_file_and_what_to_do_per_command(tiny_root, tiny_packed, tmp_path, capsys, monkeypatch):
    import errno

    from jepa_fast import atomic
    from jepa_fast.data import writer

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s.zarr.partial" / "states"))

    monkeypatch.setattr(writer, "write_shard", full)
    assert cli.main(["pack", str(tiny_root / "train"), str(tmp_path / "s.zarr"), "--no-progress"]) == 2
    line = one_line(capsys, "s.zarr.partial/states: No space left on device", "MB free there", "--resume")
    assert "a file" not in line
    monkeypatch.undo()

    def full_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write cut short reports it: no file name

    monkeypatch.setattr(atomic.os, "fsync", full_fsync)
    assert cli.main(["train", str(tiny_packed), "--preset", "tiny", "--out", str(tmp_path / "r")]) == 2
    line = one_line(capsys, "r/config.json: No space left on device", "continue with --resume")
    assert "pack" not in line  # the advice is the command's own


# ---------------------------------------------------------------------------------------------
# 6 on a real full disk: a small tmpfs in a private mount namespace (root only; skipped elsewhere)

_FULL_DISK_RUN = """
import json, subprocess, sys
from pathlib import Path
from jepa_fast import cli
from jepa_fast import checkpoint as ckpt
data, disk = sys.argv[1], Path(sys.argv[2])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
run = disk / "run"
argv = ["train", data, "--preset", "tiny", "--out", str(run), "--no-progress", "--set", "train.save_every=2",
        "--set", "train.log_every=1"]
first = cli.main(argv)  # checkpoints of ~6 MB at steps 2 and 4 fit; the one of step 6 does not
kept = sorted(p.name for p in (run / "checkpoints").iterdir())
lines = (run / "metrics.jsonl").read_text().splitlines()
whole = all(json.loads(line) for line in lines)
(run / "checkpoints" / "step_0000002").rename(disk / "moved")  # the user frees space...
subprocess.run(["rm", "-r", str(disk / "moved")], check=True)
second = cli.main(["train", data, "--out", str(run), "--resume", "--no-progress"])  # ... and continues
print(json.dumps({"first": first, "kept": kept, "whole": whole, "second": second,
                  "latest": ckpt.latest(run).name}))
"""


def test_a_real_full_disk_keeps_the_last_good_checkpoint_and_the_run_continues(tiny_packed, tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a small tmpfs in a private mount namespace")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()[:80]}")
    import json

    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK_RUN)
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, str(script), str(tiny_packed),
                        str(disk)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "step_0000006.tmp/state.pt: No space left on device: this checkpoint needs 6." in errors[0]
    assert "last good checkpoint: " in errors[0] and errors[0].endswith("step_0000004)")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["first"] == 2 and out["kept"] == ["latest", "step_0000002", "step_0000004"]
    assert out["whole"] and out["second"] == 0 and out["latest"] == "step_0000006"


def test_show_never_writes_over_its_input(tiny_root, tmp_path, capsys):
    split = tmp_path / "val"
    shutil.copytree(tiny_root / "probe_wall" / "val", split)
    before = snapshot(split)
    assert cli.main(["show", str(split), "--out", str(split / "states.npy"), "--overwrite"]) == 2
    one_line(capsys, "is the input states.npy")
    assert snapshot(split) == before


def test_a_nan_in_a_one_step_window_says_at_which_step(tiny_packed, tmp_path, monkeypatch):
    import jepa_fast.train as T

    real = T.jepa_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        if calls["n"] == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(T, "jepa_loss", poisoned)
    with pytest.raises(JepaFastError, match=r"loss became NaN/Inf at step 2;"):
        train(_tiny("train.max_steps=4", "train.log_every=1"), tiny_packed, tmp_path / "r", progress=False)
