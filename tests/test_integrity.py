"""Trust the store and the run folder: each failure a careful user found, reproduced first, then held to a
one-line error or the correct result with nothing half-written left behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa_fast import checkpoint as ckpt
from jepa_fast import cli, lock
from jepa_fast.config import apply_overrides, run_preset
from jepa_fast.data import pack, schema
from jepa_fast.data.reader import StoreReader
from jepa_fast.errors import JepaFastError
from jepa_fast.train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _one_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture()
def root(packed_copy):
    """A packed copy of the tiny dataset root, private to the test (it gets damaged)."""
    return packed_copy


def _tiny(**train_kw):
    run = run_preset("tiny")
    return apply_overrides(run, [f"train.{k}={v}" for k, v in train_kw.items()])


# ---------------------------------------------------------------------------------------------
# 1-2: a deleted shard, a flipped payload byte


def test_a_deleted_shard_is_an_error_everywhere(root, tmp_path, capsys):
    store = root / "train.zarr"
    schema.shard_path(store, 5).unlink()
    with pytest.raises(JepaFastError, match=r"shard 5 \(rows 35-41\) is missing"):
        StoreReader(store)
    assert cli.main(["inspect", str(store), "--verify"]) == 2
    _one_line(capsys, "states/c/5/0/0/0/0", "is missing", "re-pack")
    assert cli.main(["train", str(root), "--preset", "tiny", "--out", str(tmp_path / "r")]) == 2
    _one_line(capsys, "shard 5")
    assert not (tmp_path / "r").exists()  # the refused run left no folder


def test_a_missing_shard_stops_probe_and_pack_resume(root, tiny_root, tiny_run, tmp_path, capsys):
    schema.shard_path(root / "probe_wall" / "val.zarr", 0).unlink()
    assert cli.main(["probe", str(tiny_run), "--data", str(root), "--out", str(tmp_path / "probe")]) == 2
    _one_line(capsys, "probe_wall/val.zarr/states/c/0/0/0/0/0", "is missing")
    assert not (tmp_path / "probe").exists()
    # pack --resume keeps the shards before its position: they must still be there
    src = tiny_root / "probe_normal" / "val"
    dst = tmp_path / "v.zarr"
    _interrupted_pack(src, dst, after_trajectories=28)
    partial = dst.with_name("v.zarr.partial")
    assert partial.exists()  # a resumable partial store
    schema.shard_path(partial, 1).unlink()
    assert cli.main(["pack", str(src), str(dst), "--resume", "--chunk-trajectories", "7", "--no-progress"]) == 2
    _one_line(capsys, "shard 1 of the store being written is missing")
    assert not dst.exists()


def test_a_flipped_payload_byte_is_caught(root, tmp_path, capsys):
    store = root / "train.zarr"
    p = schema.shard_path(store, 5)
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x01
    p.write_bytes(bytes(data))
    assert cli.main(["inspect", str(store), "--verify"]) == 2
    _one_line(capsys, "fails its CRC32C check", "shard 5")
    with pytest.raises(JepaFastError, match="CRC32C"):
        train(_tiny(max_steps=1), root, tmp_path / "r", progress=False)


def _v1_store(src, dst):
    """A schema-1 store, as the previous version wrote it: no crc32c codecs, no absent_shards."""
    import zarr

    states, actions = np.load(Path(src) / "states.npy"), np.load(Path(src) / "actions.npy")
    q = np.clip(np.floor(states / (0.0942 / 255) + 0.5), 0, 255).astype(np.uint8)
    n, T = q.shape[:2]
    g = zarr.open_group(str(dst), mode="w", zarr_format=3)
    g.create_array("states", shape=q.shape, dtype="uint8", chunks=(1,) + q.shape[1:], shards=(4,) + q.shape[1:],
                   compressors=schema.ChunkCodec("lz4", checksum=False).zarr_codecs(), fill_value=0)
    g["states"][...] = q
    g.create_array("actions", shape=(n, T - 1, 2), dtype="float32", chunks=(n, T - 1, 2), fill_value=0.0)
    g["actions"][...] = actions
    g.attrs.update({"format": schema.FORMAT_NAME, "schema_version": 1, "complete": True, "n": n, "seq_len": T,
                    "channels": 2, "image_size": 65, "scale": [0.0942 / 255] * 2, "codec": "lz4",
                    "trajectories_per_shard": 4, "walls_static": True})
    return q


def test_schema_1_stores_are_still_read_with_a_note(tiny_root, tmp_path, caplog):
    q = _v1_store(tiny_root / "probe_wall" / "val", tmp_path / "old.zarr")
    import logging

    with caplog.at_level(logging.WARNING):
        r = StoreReader(tmp_path / "old.zarr")
        r.verify()
    assert r.version == 1 and not r.codec.checksum
    notes = [rec.getMessage() for rec in caplog.records if "schema version 1" in rec.getMessage()]
    assert len(notes) == 1 and "no checksums" in notes[0]
    np.testing.assert_array_equal(r.decode(3), q[3])
    assert bytes(r.codec.raw_block(r.chunk(3))) == bytes(r.chunk(3))[4:]  # schema 1: no CRC after the block


@pytest.mark.parametrize("field,value,needle", [
    ("scale", ["a", 1], "attrs scale"),
    ("scale", [-0.1, 0.1], "attrs scale"),
    ("rows", 999, "attrs rows = 999 but the states array says 64"),
    ("row_frames", 5, "attrs row_frames"),
    ("frames", 10**6, "attrs frames"),
])
def test_attrs_that_disagree_with_the_data(root, capsys, field, value, needle):
    import zarr

    store = root / "probe_wall" / "val.zarr"
    zarr.open_group(str(store), mode="r+").attrs[field] = value
    assert cli.main(["inspect", str(store), "--verify"]) == 2
    _one_line(capsys, needle)


# ---------------------------------------------------------------------------------------------
# 3: one writer at a time


def test_a_second_writer_is_refused_naming_the_holder(root, tiny_root, tmp_path, capsys):
    with lock.exclusive(tmp_path / "r", "run folder"):
        assert cli.main(["train", str(root), "--preset", "tiny", "--out", str(tmp_path / "r")]) == 2
        _one_line(capsys, "being written by another jepa-fast", f"pid {os.getpid()}")
    with lock.exclusive(tmp_path / "s.zarr", "store"):
        assert cli.main(["pack", str(tiny_root / "train"), str(tmp_path / "s.zarr"), "--no-progress"]) == 2
        _one_line(capsys, "being written by another jepa-fast")
    assert not (tmp_path / "s.zarr.partial").exists()
    # released: the next writer goes ahead
    assert cli.main(["pack", str(tiny_root / "train"), str(tmp_path / "s.zarr"), "--no-progress"]) == 0


def test_a_lock_left_by_a_dead_process_is_cleared(tiny_root, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.lock_path(tmp_path / "s.zarr").write_text(json.dumps({"pid": dead.pid, "host": "h", "started": 0}))
    assert cli.main(["pack", str(tiny_root / "train"), str(tmp_path / "s.zarr"), "--no-progress"]) == 0
    assert f"cleared a stale lock on {tmp_path / 's.zarr'} left by pid {dead.pid}" in capsys.readouterr().err
    assert not lock.lock_path(tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------------------------------------
# 4-5: resume with changed settings, silent overwrite


def test_resume_with_a_changed_hyper_parameter_is_refused(root, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["train", str(root), "--preset", "tiny", "--out", str(out), "--steps", "4", "--no-progress",
                     "--set", "train.save_every=2"]) == 0
    before = (out / "config.json").read_text()
    assert cli.main(["train", str(root), "--out", str(out), "--resume", "--lr", "0.5", "--steps", "6"]) == 2
    _one_line(capsys, "train.lr 0.001 -> 0.5", "train.max_steps 4 -> 6", "--init")
    assert (out / "config.json").read_text() == before  # nothing recorded that was not applied
    # bookkeeping-only fields may change
    assert cli.main(["train", str(root), "--out", str(out), "--resume", "--no-progress",
                     "--set", "train.log_every=1"]) == 0


def test_no_silent_overwrite(root, tiny_root, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text("mine")
    assert cli.main(["train", str(root), "--preset", "tiny", "--out", str(out)]) == 2
    _one_line(capsys, "holds files (config.json) but no checkpoint", "--overwrite")
    assert (out / "config.json").read_text() == "mine"
    assert cli.main(["train", str(root), "--preset", "tiny", "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["preset"] == "tiny"
    assert cli.main(["probe", str(out), "--data", str(root)]) == 0
    capsys.readouterr()
    assert cli.main(["probe", str(out), "--data", str(root)]) == 2
    _one_line(capsys, "probe folder", "--overwrite")
    png = tmp_path / "s.png"
    png.write_bytes(b"mine")
    assert cli.main(["show", str(tiny_root / "train"), "--out", str(png)]) == 2
    _one_line(capsys, "exists; pass --overwrite")
    assert png.read_bytes() == b"mine"


# ---------------------------------------------------------------------------------------------
# 6-7: interrupted root packs and generates


_KILL_AFTER = textwrap.dedent("""
    import os, signal, sys
    from jepa_fast.data import pack
    real, count = pack.pack_split, {"n": 0}
    def dying(*a, **k):
        count["n"] += 1
        if count["n"] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # killed while packing this split
        return real(*a, **k)
    pack.pack_split = dying
    pack.pack_path(sys.argv[1], sys.argv[2], progress=False)
""")


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_killed_root_pack_resumes_split_by_split(tiny_root, tmp_path, capsys):
    script = tmp_path / "kill.py"
    script.write_text(_KILL_AFTER)
    dst = tmp_path / "packed"
    r = subprocess.run([sys.executable, str(script), str(tiny_root), str(dst), "4"], capture_output=True)
    assert r.returncode == -9 and not dst.exists()
    partial = tmp_path / "packed.partial"
    done = sorted(p.name for p in partial.rglob("*.zarr"))
    assert len(done) == 3  # three splits finished before the kill
    assert cli.main(["pack", str(tiny_root), str(dst), "--no-progress"]) == 2
    _one_line(capsys, "interrupted pack of a dataset root", "--resume")
    assert cli.main(["pack", str(tiny_root), str(dst), "--resume", "--no-progress"]) == 0
    assert "already packed from this source" in capsys.readouterr().out  # finished splits were kept
    assert not partial.exists()
    pack.pack_path(tiny_root, tmp_path / "clean", progress=False)
    a, b = _files(dst), _files(tmp_path / "clean")
    assert a.keys() == b.keys()
    for name in a:
        if not name.endswith("zarr.json"):  # metadata holds the source path and the same fingerprints
            assert a[name] == b[name], name


def test_a_bad_last_split_leaves_nothing_behind(tiny_root, tmp_path, capsys):
    src = tmp_path / "raw"
    shutil.copytree(tiny_root, src)
    states = np.load(src / "train" / "states.npy", mmap_mode="r+")
    states[-1, 3, 0, 10, 10] = np.nan  # found only while packing the last split (train)
    states.flush()
    del states
    assert cli.main(["pack", str(src), str(tmp_path / "packed"), "--no-progress"]) == 2
    _one_line(capsys, "train/states.npy: episode 255, frame 3, channel 0 contains NaN")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_a_plain_pack_rerun_does_not_discard_a_resumable_partial(tiny_root, tmp_path, capsys):
    src, dst = tiny_root / "probe_normal" / "val", tmp_path / "v.zarr"
    _interrupted_pack(src, dst, after_trajectories=28)
    assert cli.main(["pack", str(src), str(dst), "--chunk-trajectories", "7", "--no-progress"]) == 2
    _one_line(capsys, "holds an interrupted pack (476 of 1,088 frames done)", "--resume")
    assert (tmp_path / "v.zarr.partial").exists()
    assert cli.main(["pack", str(src), str(dst), "--chunk-trajectories", "7", "--resume", "--no-progress"]) == 0


def test_a_killed_generate_leaves_no_temp_folder_behind(tmp_path, capsys):
    stale = tmp_path / ".raw.tmp-abc123"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "states.npy").write_bytes(b"x" * 1000)  # what a kill -9 left
    assert cli.main(["generate", "--preset", "tiny", "--splits", "probe_wall/val", "--out", str(tmp_path / "raw"),
                     "--no-progress"]) == 0
    assert not stale.exists() and "removing" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def _interrupted_pack(src, dst, after_trajectories: int) -> None:
    """A pack of ``src`` stopped after ``after_trajectories`` (k = 7, blocks of 14), as a kill leaves it."""
    code = textwrap.dedent(f"""
        import os, signal
        from jepa_fast.config import PackConfig
        from jepa_fast.data import pack
        from jepa_fast.data import writer
        writer.PROGRESS_EVERY_S = 0.0  # record every shard
        real = pack._save_progress
        def save(partial, state):
            real(partial, state)
            if state["builder"] and state["builder"]["shards_done"] * 7 >= {after_trajectories}:
                os.kill(os.getpid(), signal.SIGKILL)
        pack._save_progress = save
        pack.pack_split({str(src)!r}, {str(dst)!r}, PackConfig(chunk_trajectories=7, workers=1), progress=False)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -9, r.stderr.decode()[-2000:]


# ---------------------------------------------------------------------------------------------
# 8: one line instead of a traceback


def _full_disk(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device", "/mnt/full/x")


def test_unwritable_destinations(root, tiny_root, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases = [["pack", str(tiny_root / "train"), str(blocker / "s.zarr"), "--no-progress"],
             ["generate", "--preset", "tiny", "--out", str(blocker / "raw"), "--no-progress"],
             ["train", str(root), "--preset", "tiny", "--out", str(blocker / "run")]]
    for argv in cases:
        assert cli.main(argv) == 2, argv
        _one_line(capsys, str(blocker))


def test_a_full_disk_gives_one_line_and_leaves_nothing_half_written(root, tiny_root, tiny_run, tmp_path, capsys,
                                                                      monkeypatch):
    from jepa_fast.data import writer

    with monkeypatch.context() as m:
        m.setattr(writer, "write_shard", _full_disk)
        assert cli.main(["pack", str(tiny_root / "train"), str(tmp_path / "s.zarr"), "--no-progress"]) == 2
        _one_line(capsys, "No space left on device", "free space", "--resume")
        assert cli.main(["generate", "--preset", "tiny", "--splits", "probe_wall/val", "--format", "zarr",
                         "--out", str(tmp_path / "gz"), "--no-progress"]) == 2
        _one_line(capsys, "No space left on device")
    assert not (tmp_path / "gz").exists() and not list(tmp_path.glob(".gz.tmp-*"))
    with monkeypatch.context() as m:
        m.setattr(ckpt.torch, "save", _full_disk)
        assert cli.main(["train", str(root), "--preset", "tiny", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
        _one_line(capsys, "No space left on device")
    assert not list((tmp_path / "r" / "checkpoints").glob(".step_*"))  # no half-written checkpoint
    from jepa_fast import probe_report

    with monkeypatch.context() as m:
        m.setattr(probe_report, "write_outputs", _full_disk)
        assert cli.main(["probe", str(tiny_run), "--data", str(root), "--out", str(tmp_path / "probe")]) == 2
        _one_line(capsys, "No space left on device")
    assert not (tmp_path / "probe").exists() and not list(tmp_path.glob(".probe.tmp-*"))


def test_show_and_probe_and_seed_errors(root, tiny_root, tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "states.npy").write_text("not numpy")
    np.save(bad / "actions.npy", np.zeros((1, 1, 2), np.float32))
    assert cli.main(["show", str(bad), "--out", str(tmp_path / "a.png")]) == 2
    _one_line(capsys, "states.npy: not a readable .npy file")
    trunc = tmp_path / "trunc"
    shutil.copytree(tiny_root / "probe_wall" / "val", trunc)
    with open(trunc / "states.npy", "r+b") as f:
        f.truncate(5000)
    assert cli.main(["show", str(trunc), "--out", str(tmp_path / "a.png")]) == 2
    _one_line(capsys, "truncated")
    assert cli.main(["show", str(tiny_root / "train"), "--out", str(tmp_path)]) == 2
    _one_line(capsys, "is a folder")
    if not torch.cuda.is_available():
        assert cli.main(["probe", str(tiny_run), "--data", str(root), "--device", "cuda"]) == 2
        _one_line(capsys, "no CUDA device here")
    assert cli.main(["probe", str(tmp_path / "runs" / "missing"), "--data", str(root)]) == 2
    _one_line(capsys, f"{tmp_path / 'runs' / 'missing'}: no such checkpoint or run folder")
    assert cli.main(["generate", "--preset", "tiny", "--seed", "-1", "--out", str(tmp_path / "g")]) == 2
    _one_line(capsys, "--seed -1: must be an integer >= 0")
    assert cli.main(["train", str(root), "--preset", "tiny", "--seed", "-1", "--out", str(tmp_path / "s")]) == 2
    _one_line(capsys, "seed=-1: must be >= 0")
    strs = tmp_path / "strs"
    shutil.copytree(tiny_root / "probe_wall" / "val", strs)
    np.save(strs / "actions.npy", np.full((64, 16, 2), "a"))
    assert cli.main(["pack", str(strs), str(tmp_path / "x.zarr"), "--no-progress"]) == 2
    _one_line(capsys, "actions.npy: dtype <U1; expected floats")


def test_a_refused_train_leaves_no_folder(root, tmp_path, capsys):
    assert cli.main(["train", str(root), "--preset", "tiny", "--batch-size", "9999", "--out", str(tmp_path / "r")]) == 2
    _one_line(capsys, "batch size 9999")
    assert not (tmp_path / "r").exists()


def test_metrics_do_not_repeat_steps_after_a_kill_and_resume(root, tmp_path):
    run = _tiny(max_steps=6, log_every=1, save_every=4)
    train(run, root, tmp_path / "r", progress=False)
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "step_0000006")  # killed after logging 5-6, before saving 6
    (tmp_path / "r" / "checkpoints" / "latest").write_text("step_0000004\n")
    train(run, root, tmp_path / "r", resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_outputs_follow_the_umask(root, tiny_root, tmp_path):
    old = os.umask(0o022)
    try:
        pack.pack_split(tiny_root / "probe_wall" / "val", tmp_path / "v.zarr", progress=False)
        train(_tiny(max_steps=1), root, tmp_path / "r", progress=False)
    finally:
        os.umask(old)
    for p in [tmp_path / "v.zarr", tmp_path / "r", tmp_path / "r" / "checkpoints" / "step_0000001"]:
        assert p.stat().st_mode & 0o777 == 0o755, p
    run = tmp_path / "r"
    for p in [run / "config.json", run / "checkpoints" / "latest", tmp_path / "v.zarr" / "zarr.json"]:
        assert p.stat().st_mode & 0o777 == 0o644, p
