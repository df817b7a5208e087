"""The packed Zarr store: round trips, the raw LZ4 contract, zarr compatibility, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jepa_fast import cli
from jepa_fast.config import PackConfig, SimConfig, dataset_preset
from jepa_fast.data import pack, schema, writer
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
    assert (r.n, r.T, r.C, r.H, r.W, r.k) == (23, 5, 2, S, S, 4)
    assert r.chunk_nbytes[3] == 0
    for i in range(23):
        np.testing.assert_array_equal(r.decode(i), states[i])
    np.testing.assert_array_equal(r.actions(), actions)
    np.testing.assert_array_equal(r.locations(), locations)
    assert r.scale.tolist() == [1.0, 1.0]
    assert r.attrs["walls_static"] is False  # random frames
    # plain zarr-python reads the same values
    import zarr

    z = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    np.testing.assert_array_equal(z["states"][...], states)
    st = r.attrs["stats"]
    np.testing.assert_allclose(st["location_mean"], locations.reshape(-1, 2).mean(0), rtol=1e-5)
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
        assert int.from_bytes(chunk[:4], "little") == r.traj_bytes  # numcodecs' 4-byte size header
        raw = bytes(r.codec.raw_block(r.chunk(i)))
        assert raw == chunk[4:-4]  # schema 2: <size><raw block><CRC32C of size + block>
        assert int.from_bytes(chunk[-4:], "little") == google_crc32c.value(chunk[:-4])
        out = lz4.block.decompress(raw, uncompressed_size=r.traj_bytes)
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
            ours = writer.encode_shard(q[4 * s:4 * s + 4], 4, codec)
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
    from jepa_fast.data.reader import SplitData
    from jepa_fast.data.sampler import Sampler

    with pytest.raises(JepaFastError, match="GPU decode needs an lz4 store"):
        _BatchSource(SplitData(tmp_path / "s.zarr"), None, Sampler(9, 2), (0, 0), gpu=True)


def test_simulated_store_is_much_smaller(tmp_path, tiny_root):
    pack.pack_split(tiny_root / "train", tmp_path / "t.zarr", progress=False)
    reader = StoreReader(tmp_path / "t.zarr")
    info = reader.describe()
    assert info["ratio_vs_float32"] >= 20
    assert reader.attrs["walls_static"] is True
    stats = info["stats"]
    assert set(stats) == {"action_mean", "action_std", "location_mean", "location_std"}


def test_pack_a_whole_root_and_generate_straight_to_zarr(tmp_path, tiny_root):
    pack.pack_path(tiny_root, tmp_path / "packed", progress=False)
    names = sorted(str(p.relative_to(tmp_path / "packed")) for p in (tmp_path / "packed").rglob("*.zarr"))
    assert names == sorted(f"{s}.zarr" for s in dataset_preset("tiny").sizes)
    # generate --format zarr: same schema, same trajectories, values within the quantisation bound
    generate_dataset(tmp_path / "gz", dataset_preset("tiny", splits=["probe_wall/val"]), SimConfig(), seed=0,
                     fmt="zarr", progress=False)
    r = StoreReader(tmp_path / "gz" / "probe_wall" / "val.zarr")
    raw = np.load(tiny_root / "probe_wall" / "val" / "states.npy")
    assert r.k == 7 and r.n == 64
    for i in (0, 63):
        err = np.abs(r.decode(i) * r.scale[None, :, None, None] - raw[i])
        assert err.max() <= r.scale.max() / 2 * (1 + 1e-9)
    np.testing.assert_array_equal(r.locations(), np.load(tiny_root / "probe_wall" / "val" / "locations.npy"))


def test_inspect_and_verify_cli(tmp_path, tiny_root, capsys):
    pack.pack_split(tiny_root / "probe_normal" / "val", tmp_path / "v.zarr", progress=False)
    assert cli.main(["show", str(tmp_path / "v.zarr"), "--out", str(tmp_path / "s.png"), "--n", "2"]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["inspect", str(tmp_path / "v.zarr"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verify              OK, 64 chunks decoded" in out and "smaller than float32" in out
    assert cli.main(["inspect", str(tmp_path / "v.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["shape"] == [64, 17, 2, 65, 65] and info["codec"] == "lz4"


# ---------------------------------------------------------------------------------------------
# corrupt stores


def test_corrupt_chunk_and_index_are_named(tmp_path, tiny_root):
    pack.pack_split(tiny_root / "probe_normal" / "val", tmp_path / "v.zarr", progress=False)
    p = schema.shard_path(tmp_path / "v.zarr", 2)
    data = bytearray(p.read_bytes())
    data[10:60] = b"\xff" * 50  # inside the first chunk of shard 2 (trajectory 14)
    p.write_bytes(bytes(data))
    r = StoreReader(tmp_path / "v.zarr")
    with pytest.raises(JepaFastError, match=r"trajectory 14 \(shard 2\) fails its CRC32C check"):
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
        "n_mismatch": (good, np.zeros((5, 3, 2), np.float32), "5 trajectories but states.npy has 6"),
        "t_mismatch": (good, np.zeros((6, 4, 2), np.float32), "4 actions per trajectory; states.npy has T=4"),
        "rank": (good.reshape(6, 4, 2, 256), None, "rank 4; expected (N, T, C, H, W)"),
        "channels": (rng.random((6, 4, 3, 16, 16)).astype(np.float32), None, "3 channels; expected 2"),
        "not_square": (rng.random((6, 4, 2, 16, 12)).astype(np.float32), None, "images are 16x12"),
        "nan": (nan(), None, "trajectory 4 contains NaN or Inf"),
        "negative": (neg(), None, "trajectory 2 has negative values"),
        "nan_actions": (good, np.full((6, 3, 2), np.nan, np.float32), "actions.npy: contains NaN"),
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
    real = writer.StoreWriter.write_shard
    count = {"n": 0}
    def write_shard(self, s, q):
        count["n"] += 1
        if count["n"] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # die mid-pack, like a pre-empted job
        return real(self, s, q)
    writer.StoreWriter.write_shard = write_shard
    pack.pack_split(sys.argv[1], sys.argv[2], PackConfig(chunk_trajectories=2, workers=2), progress=False)
""")


def test_killed_pack_resumes_to_an_identical_store(tmp_path):
    rng = np.random.default_rng(7)
    states = _float_states(rng, N=600, T=4, S=32)
    locations = rng.uniform(4, 60, size=(600, 4, 2)).astype(np.float32)
    src = _write_split(tmp_path / "raw", states, rng.normal(size=(600, 3, 2)).astype(np.float32), locations)
    # _block_len gives ~16 MiB blocks; make blocks small so the kill lands after some progress
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.replace("from jepa_fast.config import PackConfig",
                                      "from jepa_fast.config import PackConfig\npack._block_len = lambda s, k: 8 * k"))
    r = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "a.zarr"), "150"], capture_output=True)
    assert r.returncode == -9
    partial = tmp_path / "a.zarr.partial"
    assert partial.exists() and not (tmp_path / "a.zarr").exists()
    done = json.loads((partial / pack.PROGRESS_FILE).read_text())["done"]
    assert 0 < done < 600
    rc = cli.main(["pack", str(src), str(tmp_path / "a.zarr"), "--resume", "--chunk-trajectories", "2",
                   "--no-progress"])
    assert rc == 0 and not partial.exists()
    pack.pack_split(src, tmp_path / "b.zarr", PackConfig(chunk_trajectories=2), progress=False)
    fa, fb = _files(tmp_path / "a.zarr"), _files(tmp_path / "b.zarr")
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name] == fb[name], name
