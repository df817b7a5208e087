"""The packed Zarr store: round trips, the raw LZ4 contract, zarr compatibility, resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jepa_fast import cli
from jepa_fast.cli.data import describe_store
from jepa_fast.config import PackConfig, SimConfig, dataset_preset
from jepa_fast.data import pack, schema, shard
from jepa_fast.data.reader import StoreReader
from jepa_fast.errors import JepaFastError
from jepa_fast.sim.generate import generate_dataset


def _write_split(d: Path, states: np.ndarray, actions: np.ndarray | None = None, locations=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    N, T = states.shape[:2]
    np.save(d / "states.npy", states)
    np.save(d / "actions.npy", actions if actions is not None else np.zeros((N, T - 1, 2), np.float32))
    if locations is not None:
        np.save(d / "locations.npy", locations)
    return d


def _float_states(rng, N=23, T=5, S=65):
    x = rng.random((N, T, 2, S, S)).astype(np.float32) * np.float32(0.0942)
    x[rng.random(x.shape) < 0.6] = 0.0  # sparse-ish, like real frames
    return x


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(tmp_path: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("S", [64, 65])
def test_uint8_round_trip_is_exact_with_n_not_a_multiple_of_k(tmp_path, S):
    rng = np.random.default_rng(0)
    states = rng.integers(0, 256, size=(23, 5, 2, S, S), dtype=np.uint8)
    states[3] = 0  # an all-zero trajectory is an empty chunk in zarr terms
    actions = rng.normal(size=(23, 4, 2)).astype(np.float32)
    locations = rng.uniform(4, 60, size=(23, 5, 2)).astype(np.float32)
    src = _write_split(tmp_path / "raw", states, actions, locations)
    pack.pack_split(src, tmp_path / "s.zarr", PackConfig(chunk_trajectories=4), progress=False)
    r = StoreReader(tmp_path / "s.zarr")
    assert (r.rows, r.L, r.C, r.H, r.W, r.k, r.episodes, r.frames) == (23, 5, 2, S, S, 4, 23, 115)
    assert r.chunk_nbytes[3] == 0
    for i in range(23):
        np.testing.assert_array_equal(r.decode(i), states[i])
    flat = np.zeros((23, 5, 2), np.float32)  # per frame: an episode's last frame has no action
    flat[:, :-1] = actions
    np.testing.assert_array_equal(r.actions(), flat.reshape(-1, 2))
    np.testing.assert_array_equal(r.targets(), locations.reshape(-1, 2))
    np.testing.assert_array_equal(r.episode_starts(), np.arange(24) * 5)
    assert r.scale.tolist() == [1.0, 1.0]
    assert r.attrs["static_channels"] == [False, False]  # random frames
    assert r.spec().target_names == ("agent_x", "agent_y") and r.spec().protocol == "two-rooms"
    # plain zarr-python reads the same values
    import zarr

    z = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    np.testing.assert_array_equal(z["states"][...], states)
    st = r.attrs["stats"]
    np.testing.assert_allclose(st["target_mean"], locations.reshape(-1, 2).mean(0), rtol=1e-5)
    np.testing.assert_allclose(st["action_std"], actions.reshape(-1, 2).std(0), rtol=1e-5)


@pytest.mark.parametrize("mode", ["sample", "exact"])
def test_float_round_trip_within_half_a_step(tmp_path, mode):
    rng = np.random.default_rng(1)
    states = _float_states(rng)
    states[7, 2, 0, 10, 10] = 0.0942  # the max sits in a trajectory the sample may miss
    src = _write_split(tmp_path / "raw", states)
    pack.pack_split(src, tmp_path / "s.zarr", PackConfig(scale=mode, chunk_trajectories=3), progress=False)
    r = StoreReader(tmp_path / "s.zarr")
    scale = r.scale
    for i in range(len(states)):
        err = np.abs(r.decode(i) * scale[None, :, None, None] - states[i])
        bound = (scale / 2)[None, :, None, None]
        assert (err <= bound * (1 + 1e-9)).all()
    np.testing.assert_allclose(r.attrs["value_max"], states.max(axis=(0, 1, 3, 4)), rtol=1e-6)
    headroom = pack.SCALE_HEADROOM if mode == "sample" else 1.0
    assert (scale >= states.max(axis=(0, 1, 3, 4)) / 255 * (1 - 1e-6)).all()
    assert (scale <= states.max(axis=(0, 1, 3, 4)) * headroom / 255 * (1 + 1e-6)).all()


def test_sampled_scale_too_small_repacks_with_exact_max(tmp_path, capsys):
    rng = np.random.default_rng(2)
    states = _float_states(rng, N=200, T=3, S=16)
    states[102, 1, 1, 3, 3] = 5.0  # an outlier between sample points: the sampled scale would clip it
    src = _write_split(tmp_path / "raw", states)
    pack.pack_split(src, tmp_path / "s.zarr", PackConfig(chunk_trajectories=8), progress=False)
    assert "rescanning for the exact max" in capsys.readouterr().out
    r = StoreReader(tmp_path / "s.zarr")
    assert r.scale[1] == pytest.approx(5.0 / 255)
    assert abs(r.decode(102)[1, 1, 3, 3] * r.scale[1] - 5.0) <= r.scale[1] / 2


def test_raw_lz4_block_is_what_the_gpu_inflates(tmp_path):
    import google_crc32c
    import lz4.block

    rng = np.random.default_rng(3)
    src = _write_split(tmp_path / "raw", _float_states(rng))
    pack.pack_split(src, tmp_path / "s.zarr", progress=False)
    r = StoreReader(tmp_path / "s.zarr")
    for i in (0, 5, 22):
        chunk = bytes(r.chunk(i))
        assert int.from_bytes(chunk[:4], "little") == r.row_bytes  # numcodecs' 4-byte size header
        raw = bytes(r.codec.raw_block(r.chunk(i)))
        assert raw == chunk[4:-4]  # schema 2: <size><raw block><CRC32C of size + block>
        assert int.from_bytes(chunk[-4:], "little") == google_crc32c.value(chunk[:-4])
        out = lz4.block.decompress(raw, uncompressed_size=r.row_bytes)
        assert out == r.decode(i).tobytes()


def test_our_shards_are_the_bytes_zarr_writes(tmp_path):
    """The writer's shard encoder reproduces zarr-python's own sharding output byte for byte."""
    import zarr

    rng = np.random.default_rng(4)
    q = rng.integers(0, 3, size=(10, 3, 2, 16, 16), dtype=np.uint8) * (rng.random((10, 1, 1, 1, 1)) < 0.8)
    q = q.astype(np.uint8)
    for codec in (schema.ChunkCodec("lz4"), schema.ChunkCodec("zstd", 5)):
        ref = tmp_path / f"ref-{codec.name}.zarr"
        g = zarr.open_group(str(ref), mode="w", zarr_format=3)
        a = g.create_array("states", shape=q.shape, dtype="uint8", chunks=(1,) + q.shape[1:],
                           shards=(4,) + q.shape[1:], compressors=codec.zarr_codecs(), fill_value=0)
        a[...] = q
        for s in range(3):
            ours = shard.encode_shard(q[4 * s:4 * s + 4], 4, codec)
            p = schema.shard_path(ref, s)
            assert (ours is None and not p.exists()) or ours == p.read_bytes(), f"{codec.name} shard {s}"


def test_zstd_store_round_trip_and_no_gpu_decode(tmp_path):
    rng = np.random.default_rng(5)
    states = rng.integers(0, 256, size=(9, 4, 2, 16, 16), dtype=np.uint8)
    src = _write_split(tmp_path / "raw", states)
    pack.pack_split(src, tmp_path / "s.zarr", PackConfig(codec="zstd", chunk_trajectories=2), progress=False)
    r = StoreReader(tmp_path / "s.zarr")
    assert r.codec.name == "zstd"
    np.testing.assert_array_equal(np.stack([r.decode(i) for i in range(9)]), states)
    from jepa_fast.data.dali import _BatchSource
    from jepa_fast.data.sampler import Sampler
    from jepa_fast.data.split import SplitData

    with pytest.raises(JepaFastError, match="GPU decode needs an lz4 store"):
        _BatchSource(SplitData(tmp_path / "s.zarr"), None, Sampler(9, 2), (0, 0), gpu=True)


def test_simulated_store_is_much_smaller(tmp_path, tiny_root):
    pack.pack_split(tiny_root / "train", tmp_path / "t.zarr", progress=False)
    reader = StoreReader(tmp_path / "t.zarr")
    info = describe_store(reader)
    assert info["ratio_vs_float32"] >= 20
    assert reader.attrs["static_channels"] == [False, True]  # the walls
    stats = info["stats"]
    assert set(stats) == {"action_mean", "action_std", "target_mean", "target_std", "value_mean", "value_std"}


def test_pack_a_whole_root_and_generate_straight_to_zarr(tmp_path, tiny_root):
    pack.pack_path(tiny_root, tmp_path / "packed", progress=False)
    names = sorted(str(p.relative_to(tmp_path / "packed")) for p in (tmp_path / "packed").rglob("*.zarr"))
    assert names == sorted(f"{s}.zarr" for s in dataset_preset("tiny").sizes)
    # generate --format zarr: same schema, same trajectories, values within the quantisation bound
    generate_dataset(tmp_path / "gz", dataset_preset("tiny", splits=["probe_wall/val"]), SimConfig(), seed=0,
                     fmt="zarr", progress=False)
    r = StoreReader(tmp_path / "gz" / "probe_wall" / "val.zarr")
    raw = np.load(tiny_root / "probe_wall" / "val" / "states.npy")
    assert r.k == 7 and r.rows == 64
    for i in (0, 63):
        err = np.abs(r.decode(i) * r.scale[None, :, None, None] - raw[i])
        assert err.max() <= r.scale.max() / 2 * (1 + 1e-9)
    locations = np.load(tiny_root / "probe_wall" / "val" / "locations.npy")
    np.testing.assert_array_equal(r.targets(), locations.reshape(-1, 2))
    # a generated store and a packed one are the same data: same spec and episodes
    packed = StoreReader(tmp_path / "packed" / "probe_wall" / "val.zarr")
    no_stats = dict(value_mean=(), value_std=())
    assert dataclasses.replace(r.spec(), **no_stats) == dataclasses.replace(packed.spec(), **no_stats)
    np.testing.assert_array_equal(r.episode_starts(), packed.episode_starts())


def test_inspect_and_verify_cli(tmp_path, tiny_root, capsys):
    pack.pack_split(tiny_root / "probe_normal" / "val", tmp_path / "v.zarr", progress=False)
    assert cli.main(["show", str(tmp_path / "v.zarr"), "--out", str(tmp_path / "s.png"), "--n", "2"]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["inspect", str(tmp_path / "v.zarr"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verify              OK, 64 chunks decoded" in out and "smaller than float32" in out
    assert "flips               lr: a0 -> -a0, agent_x -> 64 - agent_x; ud: a1 -> -a1, agent_y -> 64 - agent_y" in out
    assert cli.main(["inspect", str(tmp_path / "v.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (info["frames"], info["episodes"], info["frame_shape"], info["codec"]) == (64 * 17, 64, [2, 65, 65], "lz4")
    assert info["episode_length"] == [17, 17] and info["row_frames"] == 17
    assert info["flips"]["lr"] == {"negate": [0], "mirror": [[0, 64.0]]}


# ---------------------------------------------------------------------------------------------
# corrupt stores


def test_corrupt_chunk_and_index_are_named(tmp_path, tiny_root):
    pack.pack_split(tiny_root / "probe_normal" / "val", tmp_path / "v.zarr", progress=False)
    p = schema.shard_path(tmp_path / "v.zarr", 2)
    data = bytearray(p.read_bytes())
    data[10:60] = b"\xff" * 50  # inside the first chunk of shard 2 (trajectory 14)
    p.write_bytes(bytes(data))
    r = StoreReader(tmp_path / "v.zarr")
    with pytest.raises(JepaFastError, match=r"row 14 \(shard 2\) fails its CRC32C check"):
        r.verify()
    data[-10] ^= 0xFF  # the shard index itself
    p.write_bytes(bytes(data))
    with pytest.raises(JepaFastError, match="CRC32C"):
        StoreReader(tmp_path / "v.zarr")


def test_wrong_schema_version_and_missing_array(tmp_path, tiny_root):
    import shutil

    import zarr

    pack.pack_split(tiny_root / "probe_normal" / "val", tmp_path / "v.zarr", progress=False)
    g = zarr.open_group(str(tmp_path / "v.zarr"), mode="r+")
    g.attrs["schema_version"] = 99
    with pytest.raises(JepaFastError, match="schema version 99"):
        StoreReader(tmp_path / "v.zarr")
    g.attrs["schema_version"] = schema.SCHEMA_VERSION
    shutil.rmtree(tmp_path / "v.zarr" / "actions")
    with pytest.raises(JepaFastError, match="'actions' is missing"):
        StoreReader(tmp_path / "v.zarr")


# ---------------------------------------------------------------------------------------------
# bad input: one line, nothing left behind


def _bad_sources():
    rng = np.random.default_rng(6)
    good = rng.random((6, 4, 2, 16, 16)).astype(np.float32)

    def nan():
        x = good.copy()
        x[4, 1, 0, 3, 3] = np.nan
        return x

    def neg():
        x = good.copy()
        x[2, 0, 1, 0, 0] = -0.5
        return x

    return {
        "missing_states": (None, np.zeros((6, 3, 2), np.float32), "states.npy: missing"),
        "missing_actions": (good, "skip", "actions.npy: missing"),
        "n_mismatch": (good, np.zeros((5, 3, 2), np.float32), "actions.npy: shape (5, 3, 2); expected (6, 3, A)"),
        "t_mismatch": (good, np.zeros((6, 5, 2), np.float32), "shape (6, 5, 2); expected (6, 3, A) with T=4"),
        "actions_rank": (good, np.zeros((6, 3), np.float32), "actions.npy: shape (6, 3); expected (6, 3, A)"),
        "rank": (good.reshape(6, 4, 512), None, "has rank 3; expected (N, T, C, H, W)"),
        "rank6": (good.reshape(6, 4, 2, 1, 16, 16), None, "has rank 6; expected (N, T, C, H, W)"),
        "channels": (rng.random((6, 4, 5, 16, 16)).astype(np.float32), None, "have 5 channels; 1-4 are supported"),
        "too_short": (good[:, :1], np.zeros((6, 0, 2), np.float32), "holds no episode of two frames or more"),
        "nan": (nan(), None, "episode 4, frame 1, channel 0 contains NaN or Inf"),
        "negative": (neg(), None, "episode 2, frame 0, channel 1 contains a negative value"),
        "nan_actions": (good, np.full((6, 3, 2), np.nan, np.float32), "actions of episode 0 contain NaN or Inf"),
    }


@pytest.mark.parametrize("case", list(_bad_sources()))
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case, capsys):
    states, actions, needle = _bad_sources()[case]
    src = tmp_path / "raw"
    src.mkdir()
    if states is None:
        np.save(src / "actions.npy", actions)
    else:
        np.save(src / "states.npy", states)
        if actions is None:
            np.save(src / "actions.npy", np.zeros((states.shape[0], states.shape[1] - 1, 2), np.float32))
        elif not isinstance(actions, str):
            np.save(src / "actions.npy", actions)
    rc = cli.main(["pack", str(src), str(tmp_path / "out.zarr"), "--no-progress", "--scale", "exact"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert _leftovers(tmp_path, {"raw"}) == []


def test_truncated_npy_is_named(tmp_path, capsys):
    src = _write_split(tmp_path / "raw", np.ones((6, 4, 2, 16, 16), np.float32))
    data = (src / "states.npy").read_bytes()
    (src / "states.npy").write_bytes(data[:-1000])
    assert cli.main(["pack", str(src), str(tmp_path / "o.zarr")]) == 2
    err = capsys.readouterr().err
    assert "states.npy: truncated: the header promises" in err and err.count("\n") == 1
    (src / "states.npy").write_bytes(b"garbage")
    assert cli.main(["pack", str(src), str(tmp_path / "o.zarr")]) == 2
    assert "not a readable .npy file" in capsys.readouterr().err
    assert _leftovers(tmp_path, {"raw"}) == []


def test_existing_destination_needs_overwrite(tmp_path, tiny_root, capsys):
    src = tiny_root / "probe_normal" / "val"
    pack.pack_split(src, tmp_path / "v.zarr", progress=False)
    before = _files(tmp_path / "v.zarr")
    assert cli.main(["pack", str(src), str(tmp_path / "v.zarr"), "--no-progress"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert _files(tmp_path / "v.zarr") == before
    assert cli.main(["pack", str(src), str(tmp_path / "v.zarr"), "--no-progress", "--overwrite"]) == 0
    assert _leftovers(tmp_path, {"v.zarr"}) == []


# ---------------------------------------------------------------------------------------------
# interrupted + resumed == uninterrupted

_KILLER = textwrap.dedent("""
    import os, signal, sys
    from jepa_fast.data import pack, writer
    from jepa_fast.config import PackConfig
    real = writer.write_shard
    count = {"n": 0}
    def write_shard(*args):
        count["n"] += 1
        if count["n"] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # die mid-pack, like a pre-empted job
        return real(*args)
    writer.write_shard = write_shard
    writer.PROGRESS_EVERY_S = 0.0  # record every shard, so the kill always lands after recorded progress
    from jepa_fast.data import scan
    scan.BLOCK_BYTES = int(sys.argv[4])  # small read blocks: the kill lands after some progress
    pack.pack_split(sys.argv[1], sys.argv[2], PackConfig(chunk_trajectories=2, workers=2, row_frames=int(sys.argv[5])),
                    progress=False)
""")


@pytest.mark.parametrize("layout", ["fixed", "episodes"])
def test_killed_pack_resumes_to_an_identical_store(tmp_path, layout):
    """Killed mid-pack (SIGKILL), resumed: the same bytes as an uninterrupted pack. 'fixed': one episode per row,
    whole shards read in place; 'episodes': episodes of 3-9 frames across rows of 4 and across shards."""
    rng = np.random.default_rng(7)
    if layout == "fixed":
        states = _float_states(rng, N=600, T=4, S=32)
        locations = rng.uniform(4, 60, size=(600, 4, 2)).astype(np.float32)
        src = _write_split(tmp_path / "raw", states, rng.normal(size=(600, 3, 2)).astype(np.float32), locations)
        row_frames, kill_at = 0, 150
    else:
        lengths = rng.integers(3, 10, size=300)
        F = int(lengths.sum())
        src = tmp_path / "raw"
        src.mkdir()
        np.save(src / "states.npy", _float_states(rng, N=F, T=1, S=32)[:, 0])
        np.save(src / "episode_ends.npy", np.cumsum(lengths))
        np.save(src / "actions.npy", rng.normal(size=(F, 3)).astype(np.float32))
        np.save(src / "targets.npy", rng.normal(size=(F, 2)).astype(np.float32))
        row_frames, kill_at = 4, 120
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    args = [str(src), str(tmp_path / "a.zarr"), str(kill_at), str(4 * 32 * 32 * 2 * 8), str(row_frames)]
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True)
    assert r.returncode == -9, r.stderr.decode()[-400:]
    partial = tmp_path / "a.zarr.partial"
    assert partial.exists() and not (tmp_path / "a.zarr").exists()
    done = json.loads((partial / pack.PROGRESS_FILE).read_text())["builder"]["shards_done"]
    assert 0 < done < kill_at
    rc = cli.main(["pack", str(src), str(tmp_path / "a.zarr"), "--resume", "--chunk-trajectories", "2",
                   "--row-frames", str(row_frames), "--no-progress"])
    assert rc == 0 and not partial.exists()
    pack.pack_split(src, tmp_path / "b.zarr", PackConfig(chunk_trajectories=2, row_frames=row_frames), progress=False)
    fa, fb = _files(tmp_path / "a.zarr"), _files(tmp_path / "b.zarr")
    assert fa.keys() == fb.keys()
    for name in fa:
        if name != "zarr.json":
            assert fa[name] == fb[name], name
    ja, jb = (json.loads(fa["zarr.json"]), json.loads(fb["zarr.json"]))
    ja["attributes"].pop("pack"), jb["attributes"].pop("pack")  # the same but for the resumed pack's own record
    assert ja == jb
