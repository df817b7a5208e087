"""Loaders: DALI (CPU mode) and torch agree batch for batch; sharding, resume, physics of flips, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from jepa_fast.config import AUGMENT_PRESETS, DataConfig
from jepa_fast.data import schema
from jepa_fast.data.loader import build_loader, dali_importable
from jepa_fast.data.reader import StoreReader
from jepa_fast.data.sampler import Sampler
from jepa_fast.data.split import SplitData
from jepa_fast.errors import JepaFastError

needs_dali = pytest.mark.skipif(not dali_importable(), reason="nvidia-dali is not importable here")
FIELDS = ("states", "actions", "targets", "indices", "brightness", "noise_std")


@pytest.fixture(scope="module")
def store(tiny_packed):
    return tiny_packed / "train.zarr"


@pytest.fixture(scope="module")
def data(store):
    return SplitData(store)


def _clone(batch):
    return {f: None if getattr(batch, f) is None else getattr(batch, f).clone() for f in FIELDS}


def _epoch(loader):
    return [_clone(b) for b in loader]


def _assert_same(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        for f in FIELDS:
            assert torch.equal(x[f], y[f]), f


@needs_dali
@pytest.mark.parametrize("augment", ["none", "full"])
def test_dali_cpu_and_torch_give_identical_batches(data, augment):
    cfg = DataConfig(batch_size=48, seed=7, augment=AUGMENT_PRESETS[augment])
    torch_loader = build_loader(data, DataConfig(**{**cfg.__dict__, "loader": "torch"}), torch.device("cpu"))
    dali_loader = build_loader(data, DataConfig(**{**cfg.__dict__, "loader": "dali"}), torch.device("cpu"))
    assert dali_loader.mode == "dali-cpu" and torch_loader.mode == "torch-host"
    for _ in range(2):  # two epochs: the second has another permutation and other decisions
        a, b = _epoch(torch_loader), _epoch(dali_loader)
        _assert_same(a, b)
    if augment == "full":  # the augmentations really happened, the same in both loaders
        lr = ud = 0
        for x in a:
            for j, i in enumerate(x["indices"].tolist()):
                raw = torch.from_numpy(data.reader.decode(i))
                got = x["states"][j]
                lr += bool(torch.equal(got, raw.flip(-1)) and not torch.equal(got, raw))
                ud += bool(torch.equal(got, raw.flip(-2)) and not torch.equal(got, raw))
                assert any(torch.equal(got, f) for f in (raw, raw.flip(-1), raw.flip(-2), raw.flip(-1).flip(-2)))
        bright, noise = torch.cat([x["brightness"] for x in a]), torch.cat([x["noise_std"] for x in a])
        assert lr > 20 and ud > 20  # of 240 trajectories, each flip with p = 0.5 (x 0.5 for the other flip off)
        assert 0.3 < float((bright != 1).float().mean()) < 0.7 and 0.3 < float((noise > 0).float().mean()) < 0.7


def test_device_resident_and_host_modes_agree(data):
    cfg = DataConfig(loader="torch", batch_size=64, seed=1, augment=AUGMENT_PRESETS["flips"])
    host = build_loader(data, DataConfig(**{**cfg.__dict__, "resident": "host"}), torch.device("cpu"))
    dev = build_loader(data, DataConfig(**{**cfg.__dict__, "resident": "device"}), torch.device("cpu"))
    assert dev.mode == "torch-device"
    _assert_same(_epoch(host), _epoch(dev))


def test_batch_contract(data):
    loader = build_loader(data, DataConfig(loader="torch", batch_size=32), torch.device("cpu"))
    b = next(iter(loader))
    assert b.states.shape == (32, 17, 2, 65, 65) and b.states.dtype == torch.uint8
    assert b.actions.shape == (32, 16, 2) and b.actions.dtype == torch.float32
    assert b.targets.shape == (32, 17, 2) and b.indices.dtype == torch.int64
    x = b.states * b.scale.view(1, 1, -1, 1, 1)  # value = uint8 x scale: raw units
    assert x.dtype == torch.float32 and float(x.max()) == pytest.approx(0.0942, abs=5e-4)


@pytest.mark.parametrize("drop_last", [True, False])
def test_two_ranks_see_disjoint_data_covering_the_epoch(drop_last):
    n, B = 103, 8
    seen = []
    for rank in range(2):
        s = Sampler(n, B, seed=5, rank=rank, world_size=2, drop_last=drop_last)
        seen.append(np.concatenate([p.indices for p in s.consume(((p.epoch, p.step), p) for p in s.plans())]))
        assert s.epoch == 1 and s.step == 0
    assert not set(seen[0]) & set(seen[1])
    union = np.concatenate(seen)
    assert len(union) == len(set(union))
    if drop_last:
        assert len(union) == (n // (2 * B)) * 2 * B
    else:
        assert sorted(union) == list(range(n))
    # the next epoch is another permutation
    s = Sampler(n, B, seed=5, rank=0, world_size=2)
    assert not np.array_equal(s.plan(0, 0).indices, s.plan(1, 0).indices)


def test_two_rank_loaders_cover_the_split(data):
    got = []
    for rank in range(2):
        loader = build_loader(data, DataConfig(loader="torch", batch_size=32, drop_last=False), torch.device("cpu"),
                              rank=rank, world_size=2)
        got.append(torch.cat([b.indices for b in loader]).numpy())
    assert sorted(np.concatenate(got)) == list(range(data.n))


@pytest.mark.parametrize("kind", ["torch", pytest.param("dali", marks=needs_dali)])
def test_resume_from_a_sampler_position_reproduces_the_rest_of_the_epoch(data, kind):
    cfg = DataConfig(loader=kind, batch_size=32, seed=3, augment=AUGMENT_PRESETS["full"])
    full = _epoch(build_loader(data, cfg, torch.device("cpu")))
    first = build_loader(data, cfg, torch.device("cpu"))
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.sampler.state_dict()
    assert state["step"] == 3
    resumed = build_loader(data, cfg, torch.device("cpu"))
    resumed.sampler.load_state_dict(state)
    _assert_same(full[3:], _epoch(resumed))
    assert resumed.sampler.epoch == 1 and resumed.sampler.step == 0


def test_flips_keep_the_physics_true(data):
    cfg = DataConfig(loader="torch", batch_size=64, seed=11, augment=AUGMENT_PRESETS["flips"])
    raw_actions = data.window_actions(np.arange(data.n))
    raw_loc = data.window_targets(np.arange(data.n))
    size = data.W
    for b in build_loader(data, cfg, torch.device("cpu")):
        lr = b.actions[:, :, 0] * torch.from_numpy(raw_actions[b.indices.numpy()][:, :, 0]) < 0
        for j, i in enumerate(b.indices.tolist()):
            loc = b.targets[j].numpy()
            frames = b.states[j].numpy()
            # brightest agent pixel sits at the (flipped) location, every frame (0.6: uint8 ties near 0.5)
            flat = frames[:, 0].reshape(frames.shape[0], -1).argmax(-1)
            rows, cols = np.divmod(flat, size)
            assert (np.abs(cols - loc[:, 0]) <= 0.6).all() and (np.abs(rows - loc[:, 1]) <= 0.6).all()
            # the wall column is at wall_x or size-1-wall_x, consistently with the location flip
            x_flipped = not np.allclose(loc[:, 0], raw_loc[i, :, 0])
            y_flipped = not np.allclose(loc[:, 1], raw_loc[i, :, 1])
            if x_flipped:
                np.testing.assert_allclose(loc[:, 0], size - 1 - raw_loc[i, :, 0], atol=1e-5)
            if y_flipped:
                np.testing.assert_allclose(loc[:, 1], size - 1 - raw_loc[i, :, 1], atol=1e-5)
            wall_rows = frames[0, 1]
            raw_frames = data.reader.decode(i)
            expect = raw_frames[0, 1]
            if x_flipped:
                expect = expect[:, ::-1]
            if y_flipped:
                expect = expect[::-1, :]
            np.testing.assert_array_equal(wall_rows, expect)
            # actions move the dot: where a step was not blocked, delta location == action
            d = np.diff(loc, axis=0)
            moved = np.abs(d).sum(-1) > 0
            np.testing.assert_allclose(d[moved], b.actions[j].numpy()[moved], atol=1e-4)
            assert (b.actions[j, :, 0] == (-1 if x_flipped else 1) * torch.from_numpy(raw_actions[i, :, 0])).all()
        assert lr.any()


# ---------------------------------------------------------------------------------------------
# errors


def test_batch_larger_than_split_and_too_many_shards(data):
    with pytest.raises(JepaFastError, match="batch size 999 is larger than the split"):
        build_loader(data, DataConfig(loader="torch", batch_size=999), torch.device("cpu"))
    with pytest.raises(JepaFastError, match="no full batch of 200 for each of 2 processes"):
        build_loader(data, DataConfig(loader="torch", batch_size=200), torch.device("cpu"), rank=0, world_size=2)


def test_wrong_schema_and_missing_store(tmp_path, store):
    import shutil

    import zarr

    with pytest.raises(JepaFastError, match="not a packed store"):
        SplitData(tmp_path / "nope.zarr")
    bad = tmp_path / "bad.zarr"
    shutil.copytree(store, bad)
    zarr.open_group(str(bad), mode="r+").attrs["schema_version"] = 0
    with pytest.raises(JepaFastError, match="schema version 0"):
        SplitData(bad)


def _corrupt(store, tmp_path):
    import shutil

    bad = tmp_path / "corrupt.zarr"
    shutil.copytree(store, bad)
    r = StoreReader(bad)
    p = schema.shard_path(bad, 1)
    data = bytearray(p.read_bytes())
    o = int(r.chunk_offset[r.k])  # first chunk of shard 1
    data[o + 8:o + 40] = b"\xff" * 32
    p.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("kind", ["torch", pytest.param("dali", marks=needs_dali)])
def test_corrupt_chunk_is_a_clear_error_not_a_hang(store, tmp_path, kind):
    bad = _corrupt(store, tmp_path)
    # caught by the chunk's CRC32C as the store is loaded, before any batch
    with pytest.raises(JepaFastError, match=r"corrupt.zarr/states/c/1/0/0/0/0: the chunk of row 7 \(shard 1\) "
                       r"fails its CRC32C check"):
        for _ in build_loader(bad, DataConfig(loader=kind, batch_size=256, shuffle=False), torch.device("cpu")):
            pass


def test_dali_requested_but_missing(monkeypatch, data):
    import jepa_fast.data.loader as loader_mod

    monkeypatch.setattr(loader_mod, "dali_importable", lambda: False)
    with pytest.raises(JepaFastError, match="use --loader torch"):
        build_loader(data, DataConfig(loader="dali", batch_size=8), torch.device("cpu"))
    auto = build_loader(data, DataConfig(loader="auto", batch_size=8), torch.device("cpu"))
    assert auto.mode.startswith("torch")


@needs_dali
def test_auto_takes_torch_on_a_cpu_device(data, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="jepa_fast.data.loader"):
        auto = build_loader(data, DataConfig(loader="auto", batch_size=8), torch.device("cpu"))
    assert auto.mode == "torch-host"
    assert any("CPU device" in r.message for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# the GPU path, checked on CPU: fork/spawn, the trainer's order, the GPU feed's bytes, flips without syncs


def test_workers_are_spawned_once_the_cuda_driver_is_initialised(monkeypatch):
    pytest.importorskip("nvidia.dali")
    from jepa_fast.data import dali

    monkeypatch.setattr(dali, "cuda_driver_initialized", lambda: True)  # as after torch.cuda.is_available()
    assert dali.worker_start_method(gpu=True) == "spawn"
    assert dali.worker_start_method(gpu=False) == "fork"  # a CPU-only pipeline never touches CUDA
    monkeypatch.setattr(dali, "cuda_driver_initialized", lambda: False)
    assert dali.worker_start_method(gpu=True) == "fork"


@needs_dali
def test_spawned_dali_workers_give_the_torch_loaders_batches(data):
    from jepa_fast.data.dali import DaliLoader
    from jepa_fast.data.sampler import Sampler

    cfg = DataConfig(loader="torch", batch_size=48, seed=7, augment=AUGMENT_PRESETS["full"])
    ref = _epoch(build_loader(data, cfg, torch.device("cpu")))
    sampler = Sampler(data.n, 48, 7, augment=AUGMENT_PRESETS["full"])
    spawned = DaliLoader(data, sampler, torch.device("cpu"), workers=1, start_method="spawn")
    _assert_same(ref, _epoch(spawned))


def test_the_trainer_builds_the_loader_before_anything_initialises_cuda(store, tmp_path, monkeypatch):
    import jepa_fast.train as T
    from jepa_fast import hardware
    from jepa_fast.config import run_preset

    order = []
    real_loader, real_precision = T.build_loader, hardware.resolve_precision

    def loader(*a, **k):
        order.append(("loader", os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")))
        return real_loader(*a, **k)

    def precision(*a, **k):  # torch.cuda.is_bf16_supported() initialises CUDA on a GPU machine
        order.append(("precision", None))
        return real_precision(*a, **k)

    monkeypatch.setattr(T, "build_loader", loader)
    monkeypatch.setattr(hardware, "resolve_precision", precision)
    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
    T.train(run_preset("tiny"), store, tmp_path / "r", progress=False)
    assert order == [("loader", "1"), ("precision", None)]


def test_the_gpu_feed_hands_inflate_exactly_the_raw_lz4_blocks(data):
    import lz4.block

    from jepa_fast.data.batch import plan_arrays
    from jepa_fast.data.dali import ChunkTable, _BatchSource
    from jepa_fast.data.sampler import Sampler

    table = ChunkTable(data)
    sampler = Sampler(data.n, 32, 3, augment=AUGMENT_PRESETS["flips"])
    plan = sampler.plan(0, 1)
    rows, actions, loc, idx, bright, noise, lr, ud, position, offsets, sizes = _BatchSource(
        data, table, sampler, (0, 0), gpu=True).feed(plan)
    assert rows.dtype == np.uint8 and rows.shape == (32 * table.stride,)
    assert offsets.dtype == sizes.dtype == np.int32  # what fn.decoders.inflate's schema takes
    assert position.tolist() == [0, 1] and np.array_equal(idx, plan.indices)
    T_, C, H, W = data.frame_shape
    for j, i in enumerate(plan.indices):  # what fn.decoders.inflate will do with (offsets, sizes) on the GPU
        block = rows[offsets[j]:offsets[j] + sizes[j]].tobytes()
        frames = np.frombuffer(lz4.block.decompress(block, uncompressed_size=T_ * C * H * W), np.uint8)
        np.testing.assert_array_equal(frames.reshape(T_, C, H, W), data.reader.decode(int(i)))
    ref_a, ref_l = plan_arrays(data, plan)
    np.testing.assert_array_equal(actions, ref_a)
    np.testing.assert_array_equal(loc, ref_l)


def test_flips_on_the_device_match_the_plans(data):
    from jepa_fast.data.batch import flip_on_device, flipped

    rng = np.random.default_rng(0)
    frames = np.stack([data.reader.decode(i) for i in range(6)])
    lr, ud = rng.random(6) < 0.5, rng.random(6) < 0.5
    out = flip_on_device(torch.from_numpy(frames), torch.from_numpy(lr), torch.from_numpy(ud)).numpy()
    for j in range(6):
        np.testing.assert_array_equal(out[j], flipped(frames[j], lr[j], ud[j]))


def test_the_dali_error_names_the_wheel_of_this_cuda(data, monkeypatch):
    import jepa_fast.data.loader as loader_mod

    monkeypatch.setattr(loader_mod, "dali_importable", lambda: False)
    for cuda, wheel, extra in (("13.0", "nvidia-dali-cuda130", "cuda13"), ("12.8", "nvidia-dali-cuda120", "cuda12"),
                               (None, "nvidia-dali-cuda120", "cuda12")):
        monkeypatch.setattr(torch.version, "cuda", cuda)
        with pytest.raises(JepaFastError, match=rf"install {wheel} \(pip install 'jepa-fast\[{extra}\]'"):
            build_loader(data, DataConfig(loader="dali", batch_size=8), torch.device("cpu"))


def test_without_drop_last_no_rank_is_ever_handed_an_empty_batch():
    # n=9, batch 4, two ranks: the tail is one trajectory; rank 1 gets perm[0] again instead of nothing
    plans = [list(Sampler(9, 4, seed=2, rank=r, world_size=2, drop_last=False).plans()) for r in range(2)]
    assert [len(p.indices) for p in plans[0]] == [4, 1] and [len(p.indices) for p in plans[1]] == [4, 1]
    perm = Sampler(9, 4, seed=2).permutation(0)
    assert plans[0][1].indices.tolist() == [perm[8]] and plans[1][1].indices.tolist() == [perm[0]]
    for n in range(1, 24):
        for B in range(1, 6):
            for W in range(1, 5):
                try:
                    samplers = [Sampler(n, B, seed=n, rank=r, world_size=W, drop_last=False) for r in range(W)]
                except JepaFastError:
                    continue
                per_rank = [list(s.plans()) for s in samplers]
                assert len({len(p) for p in per_rank}) == 1  # every rank takes every step
                seen = []
                for step in range(len(per_rank[0])):
                    sizes = [len(p[step].indices) for p in per_rank]
                    assert min(sizes) >= 1, (n, B, W, step, sizes)
                    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
                    seen += [int(i) for p in per_rank for i in p[step].indices]
                assert set(seen) == set(range(n))  # every trajectory at least once
                assert len(seen) - n == max(0, W - (n % (B * W) or B * W))  # padding only for a tail m < W


# ---------------------------------------------------------------------------------------------
# episodes of unequal length: windows


def _raw(episodes_raw):
    ends = np.load(episodes_raw / "episode_ends.npy")
    starts = np.concatenate([[0], ends])
    return (np.load(episodes_raw / "states.npy"), np.load(episodes_raw / "actions.npy"),
            np.load(episodes_raw / "targets.npy"), starts)


@pytest.mark.parametrize("cached", [True, False], ids=["window-arrays-cached", "gathered-per-frame"])
@pytest.mark.parametrize("seq_len,stride,offset", [(8, 0, 0), (5, 3, 1), (12, 12, 2)])
def test_windows_of_unequal_episodes_are_the_raw_frames(episodes_raw, episodes_store, seq_len, stride, offset,
                                                        cached, monkeypatch):
    """Frames, actions and targets of every window are the raw data's, whether the per-window actions and
    targets are cached (small stores) or gathered frame by frame (past split.WINDOW_ARRAYS_BYTES)."""
    from jepa_fast.data import split

    frames, actions, targets, starts = _raw(episodes_raw)
    if not cached:
        monkeypatch.setattr(split, "WINDOW_ARRAYS_BYTES", 0)
    d = SplitData(episodes_store, seq_len, stride, offset)
    assert (d._window_actions is not None) == cached
    step = stride or seq_len
    expect, skipped = [], 0
    for e in range(len(starts) - 1):
        a, b = int(starts[e]), int(starts[e + 1])
        first = list(range(a + offset, b - seq_len + 1, step))
        expect += first
        skipped += not first
    assert d.window_starts.tolist() == expect and d.skipped == skipped and d.n == len(expect)
    assert not d.aligned and d.L == 8
    idx = np.arange(d.n)
    for i in idx:
        s = expect[i]
        np.testing.assert_array_equal(d.decode_window(int(i)), frames[s:s + seq_len])
    np.testing.assert_array_equal(d.window_actions(idx), np.stack([actions[s:s + seq_len - 1] for s in expect]))
    np.testing.assert_array_equal(d.window_targets(idx), np.stack([targets[s:s + seq_len] for s in expect]))
    np.testing.assert_allclose(d.first_frames(idx[:5])[:, 0], np.stack([frames[s] for s in expect[:5]]) * 1.0)
    assert d.spec.static_channels == (False, False, True) and d.spec.action_size == 3


def test_window_length_must_be_chosen_and_fit(episodes_store):
    with pytest.raises(JepaFastError, match=r"episodes have 3-29 frames; choose the window length: data.seq_len"):
        SplitData(episodes_store)
    with pytest.raises(JepaFastError, match="no episode holds a window of 30 frames"):
        SplitData(episodes_store, 30)


@pytest.mark.parametrize("kind", ["torch", pytest.param("dali", marks=needs_dali)])
def test_window_batches_match_the_raw_data_and_resume_exactly(episodes_raw, episodes_store, kind):
    frames, actions, targets, _ = _raw(episodes_raw)
    cfg = DataConfig(loader=kind, batch_size=16, seed=4, seq_len=6, stride=2,
                     augment=AUGMENT_PRESETS["full"].__class__(noise_p=0.5, brightness_p=0.5))
    data = SplitData(episodes_store, 6, 2)
    loader = build_loader(data, cfg, torch.device("cpu"))
    full = _epoch(loader)
    for b in full:
        for j, i in enumerate(b["indices"].tolist()):
            s = int(data.window_starts[i])
            np.testing.assert_array_equal(b["states"][j].numpy(), frames[s:s + 6])
            np.testing.assert_array_equal(b["actions"][j].numpy(), actions[s:s + 5])
            np.testing.assert_array_equal(b["targets"][j].numpy(), targets[s:s + 6])
    first = build_loader(data, cfg, torch.device("cpu"))
    it = iter(first)
    for _ in range(2):
        next(it)
    resumed = build_loader(data, cfg, torch.device("cpu"))
    resumed.sampler.load_state_dict(first.sampler.state_dict())
    _assert_same(full[2:], _epoch(resumed))


@needs_dali
def test_dali_cpu_and_torch_agree_on_windows(episodes_store):
    data = SplitData(episodes_store, 7, 3)
    cfg = DataConfig(batch_size=12, seed=9, seq_len=7, stride=3,
                     augment=AUGMENT_PRESETS["full"].__class__(noise_p=0.5, brightness_p=0.5))
    a = _epoch(build_loader(data, DataConfig(**{**cfg.__dict__, "loader": "torch"}), torch.device("cpu")))
    b = _epoch(build_loader(data, DataConfig(**{**cfg.__dict__, "loader": "dali"}), torch.device("cpu")))
    _assert_same(a, b)


def test_the_gpu_feed_of_windows_inflates_the_rows_they_touch(episodes_store):
    """What the DALI GPU path does, checked on CPU: the feed hands over each needed row once, and gathering
    frame_index out of the inflated rows gives every window's frames."""
    import lz4.block

    from jepa_fast.data.dali import ChunkTable, _BatchSource, window_rows

    data = SplitData(episodes_store, 9, 4)
    table = ChunkTable(data)
    sampler = Sampler(data.n, 16, 3)
    plan = sampler.plan(0, 0)
    rows, actions, targets, idx, *_, offsets, sizes, frame_index = _BatchSource(
        data, table, sampler, (0, 0), gpu=True).feed(plan)
    want_rows, _ = window_rows(data, plan.indices)
    L, C, H, W = data.L, data.C, data.H, data.W
    assert rows.shape == (len(want_rows) * table.stride,) and len(set(want_rows.tolist())) == len(want_rows)
    inflated = np.stack([np.frombuffer(lz4.block.decompress(rows[o:o + n].tobytes(), uncompressed_size=L * C * H * W),
                                       np.uint8).reshape(L, C, H, W) for o, n in zip(offsets, sizes)])
    windows = inflated.reshape(-1, C, H, W)[frame_index].reshape(len(idx), 9, C, H, W)
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(windows[j], data.decode_window(int(i)))


def test_flips_are_refused_on_data_without_flip_rules(episodes_store):
    data = SplitData(episodes_store, 6)
    with pytest.raises(JepaFastError, match="declares no lr flip rule"):
        build_loader(data, DataConfig(loader="torch", batch_size=8, seq_len=6, augment=AUGMENT_PRESETS["flips"]),
                     torch.device("cpu"))


def test_two_ranks_share_the_windows_disjointly(episodes_store):
    data = SplitData(episodes_store, 5)
    for drop_last in (True, False):
        got = []
        for rank in range(2):
            loader = build_loader(data, DataConfig(loader="torch", batch_size=8, seq_len=5, drop_last=drop_last),
                                  torch.device("cpu"), rank=rank, world_size=2)
            got.append(torch.cat([b.indices for b in loader]).numpy())
        if drop_last:
            assert not set(got[0]) & set(got[1]) and len(np.concatenate(got)) == data.n // 16 * 16
        else:
            assert set(np.concatenate(got)) == set(range(data.n))
