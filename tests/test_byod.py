"""Bring your own trajectories: HDF5 layouts, the EpisodeWriter, any channels/actions/targets through the model,
training and probing; checkpoints written before data specs still load; PushT end to end (with the extra)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import dot_episodes, one_line, snapshot

from jepa_fast import cli
from jepa_fast import probe as P
from jepa_fast.config import ProbeConfig, apply_overrides, model_preset, run_config_from_dict, run_preset
from jepa_fast.data import EpisodeWriter
from jepa_fast.data.pack import pack_path, pack_split
from jepa_fast.data.reader import StoreReader
from jepa_fast.errors import JepaFastError
from jepa_fast.model import JEPA, channel_groups, count_parameters, input_normalisation
from jepa_fast.spec import TWO_ROOMS, DataSpec, FlipRule
from jepa_fast.train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
needs_h5py = pytest.mark.skipif(importlib.util.find_spec("h5py") is None,
                                reason="h5py (the [hdf5] extra) is not installed")


def _spec(C=3, A=3, static=None, targets=("x", "y"), H=24, W=24, mean=None, std=None) -> DataSpec:
    return DataSpec(channels=C, height=H, width=W, action_size=A, channel_names=tuple(f"c{c}" for c in range(C)),
                    static_channels=tuple(static or [False] * C), target_names=targets,
                    value_mean=tuple(mean or ()), value_std=tuple(std or ()), protocol="generic")


# ---------------------------------------------------------------------------------------------
# HDF5 in the layouts people have


def _write_hdf5(path, layout: str, eps) -> dict:
    """``eps`` (frames (n, 3, H, W), actions (n, A), targets (n, 2)) as robomimic, Minari or D4RL write them;
    returns the pack flags that name the targets."""
    import h5py

    with h5py.File(path, "w") as f:
        if layout == "robomimic":  # data/demo_<i>/obs/<camera>_image (n, H, W, 3); actions (n, A)
            for i, (x, a, t) in enumerate(eps):
                g = f.create_group(f"data/demo_{i}")
                g["obs/agentview_image"] = np.moveaxis(x, 1, -1)
                g["obs/object"] = t
                g["obs/robot0_eef_pos"] = np.zeros((len(x), 3), np.float32)  # another state vector, not a target
                g["actions"] = a
            return {"targets": "obs/object"}
        if layout == "minari":  # episode_<i>/observations/pixels; actions (n - 1, A)
            for i, (x, a, t) in enumerate(eps):
                g = f.create_group(f"episode_{i}")
                g["observations/pixels"] = np.moveaxis(x, 1, -1)
                g["actions"] = a[:-1]
                g["infos/pos"] = t
            return {"targets": "infos/pos"}
        # D4RL: flat datasets, episodes split at terminals/timeouts
        f["observations"] = np.concatenate([np.moveaxis(x, 1, -1) for x, _, _ in eps])
        f["actions"] = np.concatenate([a for _, a, _ in eps])
        f["pos"] = np.concatenate([t for _, _, t in eps])
        ends = np.cumsum([len(x) for x, _, _ in eps]) - 1
        flags = np.zeros(len(f["actions"]), bool)
        flags[ends[::2]] = True
        f["terminals"] = flags
        timeouts = np.zeros_like(flags)
        timeouts[ends[1::2]] = True
        f["timeouts"] = timeouts
        return {"targets": "pos"}


@needs_h5py
@pytest.mark.parametrize("layout", ["robomimic", "minari", "d4rl"])
def test_hdf5_layouts_pack_to_the_episodes_they_hold(tmp_path, layout):
    eps = dot_episodes(1, 12)  # 12 episodes: demo_10 and demo_11 must come after demo_9
    keys = _write_hdf5(tmp_path / "eps.hdf5", layout, eps)
    pack_split(tmp_path / "eps.hdf5", tmp_path / "s.zarr", keys={**keys, "target_names": "x,y"}, progress=False)
    r = StoreReader(tmp_path / "s.zarr")
    starts = r.episode_starts()
    assert np.diff(starts).tolist() == [len(x) for x, _, _ in eps]
    actions, targets = r.actions(), r.targets()
    for e, (x, a, t) in enumerate(eps):
        s, n = int(starts[e]), len(x)
        np.testing.assert_array_equal(r.read_frames(s, n), x)
        np.testing.assert_array_equal(actions[s:s + n - 1], a[:-1])
        assert not actions[s + n - 1].any()  # no action follows an episode's last frame
        np.testing.assert_array_equal(targets[s:s + n], t)
    spec = r.spec()
    assert (spec.channels, spec.height, spec.action_size, spec.target_names, spec.protocol) == (
        3, 24, 3, ("x", "y"), "generic")
    assert spec.static_channels == (False, False, True)


def _bad_hdf5(path, case: str) -> dict:
    import h5py

    eps = dot_episodes(2, 3)
    keys = _write_hdf5(path, "minari", eps)
    with h5py.File(path, "r+") as f:
        if case == "missing_key":
            keys = {"targets": "infos/nope"}
        elif case == "actions_rank":
            del f["episode_1/actions"]
            f["episode_1/actions"] = np.zeros((len(eps[1][0]) - 1, 3, 1), np.float32)
        elif case == "nan_actions":
            a = f["episode_2/actions"][...]
            a[1, 0] = np.nan
            f["episode_2/actions"][...] = a
        elif case == "nan_targets":
            t = f["episode_0/infos/pos"][...]
            t[0, 1] = np.inf
            f["episode_0/infos/pos"][...] = t
        elif case == "shapes_differ":
            del f["episode_1/observations/pixels"]
            f["episode_1/observations/pixels"] = np.zeros((len(eps[1][0]), 20, 24, 3), np.uint8)
        elif case == "not_images":
            for i in range(3):
                f[f"episode_{i}/observations/vector"] = np.zeros((len(eps[i][0]), 7), np.uint8)
            keys["frames"] = "observations/vector"
        elif case == "one_frame":
            for name in ("observations/pixels", "actions", "infos/pos"):
                d = f[f"episode_1/{name}"][...]
                del f[f"episode_1/{name}"]
                f[f"episode_1/{name}"] = d[:1] if name != "actions" else d[:0]
    return keys


@needs_h5py
@pytest.mark.parametrize("case,needle", [
    ("missing_key", "/episode_0 has no dataset 'infos/nope' (it has: "),
    ("actions_rank", "/episode_1/actions has shape"),
    ("nan_actions", "actions of episode /episode_2 contain NaN or Inf (step 1)"),
    ("nan_targets", "targets infos/pos of episode /episode_0 contain NaN or Inf (step 0)"),
    ("shapes_differ", "episode /episode_1 has frames (20, 24, 3) but /episode_0 has (24, 24, 3)"),
    ("not_images", "observations/vector"),
    ("one_frame", "episode /episode_1 has 1 frame(s); an episode needs 2 or more"),
])
def test_bad_hdf5_is_one_line_naming_file_episode_and_key(tmp_path, capsys, case, needle):
    keys = _bad_hdf5(tmp_path / "bad.hdf5", case)
    argv = ["pack", str(tmp_path / "bad.hdf5"), str(tmp_path / "out.zarr"), "--no-progress"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in keys.items()]
    assert cli.main(argv) == 2
    line = one_line(capsys, needle)
    assert "bad.hdf5" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.hdf5"]  # nothing half-written


@needs_h5py
def test_hdf5_meta_names_channels_and_targets_and_declares_flips(tmp_path, capsys):
    """X.meta.json beside X.hdf5, or the file --meta names, gives an HDF5 file what a .npy folder's meta.json
    gives it: channel and target names and flip rules, in the store's spec; a store without one has none."""
    eps = dot_episodes(1, 4)
    keys = _write_hdf5(tmp_path / "eps.hdf5", "minari", eps)
    flags = ["--no-progress", "--targets", keys["targets"]]
    assert cli.main(["pack", str(tmp_path / "eps.hdf5"), str(tmp_path / "plain.zarr"), *flags]) == 0
    plain = StoreReader(tmp_path / "plain.zarr").spec()
    assert plain.flips == {} and plain.channel_names == ("c0", "c1", "c2") and plain.target_names == ("pos_0", "pos_1")

    meta = {"channel_names": ["r", "g", "b"], "target_names": ["x", "y"],
            "flips": {"ud": {"mirror_actions": [[1, 23.0]], "mirror": [[1, 23.0]]}}}
    (tmp_path / "eps.meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert cli.main(["pack", str(tmp_path / "eps.hdf5"), str(tmp_path / "beside.zarr"), *flags]) == 0
    assert f"smaller than the source frames; names and flip rules from {tmp_path / 'eps.meta.json'}" in (
        capsys.readouterr().out)
    spec = StoreReader(tmp_path / "beside.zarr").spec()
    assert spec.channel_names == ("r", "g", "b") and spec.target_names == ("x", "y")
    assert spec.flips == {"ud": FlipRule((), ((1, 23.0),), ((1, 23.0),))}

    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps({"flips": {"lr": {"negate": [0]}}}))
    assert cli.main(["pack", str(tmp_path / "eps.hdf5"), str(tmp_path / "named.zarr"), *flags,
                     "--meta", str(other)]) == 0
    assert StoreReader(tmp_path / "named.zarr").spec().flips == {"lr": FlipRule((0,))}
    capsys.readouterr()

    assert cli.main(["pack", str(tmp_path / "eps.hdf5"), str(tmp_path / "o.zarr"), *flags,
                     "--target-names", "u,v"]) == 2
    one_line(capsys, "--target-names u,v and ", "eps.meta.json's target_names x,y differ; give one")
    assert cli.main(["pack", str(tmp_path / "eps.hdf5"), str(tmp_path / "same.zarr"), *flags,
                     "--target-names", "x,y"]) == 0  # the same names twice are no conflict
    assert cli.main(["pack", str(tmp_path / "eps.hdf5"), str(tmp_path / "o.zarr"), *flags,
                     "--meta", str(tmp_path / "nope.json")]) == 2
    one_line(capsys, "--meta ", "nope.json: no such file")
    (tmp_path / "eps.meta.json").write_text(json.dumps({"flips": {"lr": {"negate": [3]}}}))
    assert cli.main(["pack", str(tmp_path / "eps.hdf5"), str(tmp_path / "o.zarr"), *flags]) == 2
    one_line(capsys, "eps.meta.json: flips.lr: action components [3]")
    assert not (tmp_path / "o.zarr").exists()


def test_meta_json_with_a_byte_order_mark_and_mirrors_without_targets(episodes_raw, tmp_path, capsys):
    """A meta.json saved with a UTF-8 byte-order mark reads; a target mirror on data without targets is one line."""
    src = tmp_path / "raw"
    shutil.copytree(episodes_raw, src)
    (src / "meta.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"channel_names": ["a", "b", "c"]}).encode())
    pack_split(src, tmp_path / "s.zarr", progress=False)
    assert StoreReader(tmp_path / "s.zarr").spec().channel_names == ("a", "b", "c")
    (src / "targets.npy").unlink()
    (src / "meta.json").write_text(json.dumps({"flips": {"lr": {"mirror": [[0, 1.0]]}}}))
    assert cli.main(["pack", str(src), str(tmp_path / "o.zarr"), "--no-progress"]) == 2
    one_line(capsys, "meta.json: flips.lr.mirror: this data has no targets to mirror; give it targets or drop the "
             "mirror")


def test_meta_flag_on_a_npy_folder_is_refused(episodes_raw, tmp_path, capsys):
    assert cli.main(["pack", str(episodes_raw), str(tmp_path / "o.zarr"), "--meta", "m.json", "--no-progress"]) == 2
    one_line(capsys, "--meta: names an HDF5 file's meta.json;", "meta.json (put it there)")


def test_hdf5_without_h5py_is_a_one_line_hint(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_h5py(name, *a, **k):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    (tmp_path / "x.hdf5").write_bytes(b"\x89HDF\r\n")
    assert cli.main(["pack", str(tmp_path / "x.hdf5"), str(tmp_path / "o.zarr"), "--no-progress"]) == 2
    one_line(capsys, "reading HDF5 needs h5py: pip install 'jepa-fast[hdf5]'")


def test_hdf5_flags_on_a_npy_folder_are_refused(episodes_raw, tmp_path, capsys):
    assert cli.main(["pack", str(episodes_raw), str(tmp_path / "o.zarr"), "--targets", "pos", "--no-progress"]) == 2
    one_line(capsys, "--targets: chooses datasets of an HDF5 file")


def test_meta_json_flip_rules_reach_the_store_and_flipped_batches(episodes_raw, tmp_path):
    """A folder's meta.json flip rules become the store's: a flipped window's actions and targets follow them."""
    from jepa_fast.config import AugmentConfig, DataConfig
    from jepa_fast.data.loader import build_loader
    from jepa_fast.data.split import SplitData

    src = tmp_path / "raw"
    shutil.copytree(episodes_raw, src)
    (src / "meta.json").write_text(json.dumps({"channel_names": ["dot", "noise", "floor"], "flips": {
        "lr": {"negate": [0], "mirror_actions": [[2, 10.0]], "mirror": [[0, 23.0], [1, 0.0]]}}}))
    pack_split(src, tmp_path / "s.zarr", progress=False)
    data = SplitData(tmp_path / "s.zarr", 6)
    assert data.spec.flips == {"lr": FlipRule((0,), ((0, 23.0), (1, 0.0)), ((2, 10.0),))}
    assert data.spec.channel_names == ("dot", "noise", "floor")
    cfg = DataConfig(batch_size=8, loader="torch", seq_len=6, augment=AugmentConfig(flip_lr=1.0))
    batch = next(iter(build_loader(data, cfg, torch.device("cpu"))))
    idx = batch.indices.numpy()
    a, t = data.window_actions(idx), data.window_targets(idx)
    np.testing.assert_array_equal(batch.actions.numpy()[..., 0], -a[..., 0])
    np.testing.assert_array_equal(batch.actions.numpy()[..., 1], a[..., 1])
    np.testing.assert_allclose(batch.actions.numpy()[..., 2], 10.0 - a[..., 2])
    np.testing.assert_allclose(batch.targets.numpy()[..., 0], 23.0 - t[..., 0])
    np.testing.assert_array_equal(batch.targets.numpy()[..., 1], -t[..., 1])
    np.testing.assert_array_equal(batch.states.numpy()[0], data.decode_window(int(idx[0]))[..., ::-1])


def test_flip_rules_without_action_mirrors_keep_their_json_form():
    """Stores written before action mirrors existed digest their flips' JSON: a rule without them serialises as
    it did, and their JSON form reads back to the same rule."""
    rule = FlipRule((0,), ((0, 64.0),))
    assert rule.to_json() == {"negate": [0], "mirror": [[0, 64.0]]}
    assert FlipRule.from_json(rule.to_json()) == rule
    both = FlipRule((1,), ((1, 0.0),), ((0, 512.0),))
    assert both.to_json()["mirror_actions"] == [[0, 512.0]] and FlipRule.from_json(both.to_json()) == both


@pytest.mark.parametrize("meta,needle", [
    ({"flips": {"lr": {"negate": [3]}}}, "flips.lr: action components [3] named in negate/mirror_actions; this "
     "data's are 0..2"),
    ({"flips": {"lr": {"mirror_actions": [[4, 1.0]]}}}, "flips.lr: action components [4]"),
    ({"flips": {"lr": {"negate": [1], "mirror_actions": [[1, 5.0]]}}}, "flips.lr: an action component is named twice"),
    ({"flips": {"ud": {"mirror_actions": [[0, "inf"]]}}}, "flips.ud.mirror_actions: every c must be a finite number"),
    ({"flips": {"lr": {"mirror": [[5, 1.0]]}}}, "flips.lr.mirror: target components are 0..1"),
    ({"flips": {"lr": {"mirror": [[0, 1.0], [0, 2.0]]}}}, "flips.lr.mirror: a target component is named twice"),
    ({"flips": {"diag": {}}}, "flips: expected"),
    ({"flips": {"ud": {"negate": "x"}}}, "flips.ud: expected"),
    ({"flips": {"ud": {"mirror": [[0]]}}}, "flips.ud: expected"),
    ({"flip": {}}, "unknown key 'flip'; the keys are channel_names, target_names, flips, protocol"),
    ({"channel_names": ["a", "b"]}, "channel_names must list 3 non-empty names (one per channel)"),
    ({"target_names": ["x", 7]}, "target_names must list 2 non-empty names"),
    ({"protocol": "atari"}, "protocol 'atari': two-rooms (recognised by shape) or generic"),
    ("{bad", "not valid JSON"),
    ([], "expected a JSON object with any of channel_names, target_names, flips, protocol"),
])
def test_bad_meta_json_is_one_line(episodes_raw, tmp_path, capsys, meta, needle):
    src = tmp_path / "raw"
    shutil.copytree(episodes_raw, src)
    (src / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    assert cli.main(["pack", str(src), str(tmp_path / "o.zarr"), "--no-progress"]) == 2
    one_line(capsys, "meta.json: " + needle)
    assert not (tmp_path / "o.zarr").exists()


# ---------------------------------------------------------------------------------------------
# the EpisodeWriter API


def test_episode_writer_round_trip_and_resume_after_a_crash(tmp_path):
    eps = dot_episodes(3, 30)
    kw = dict(frame_shape=(3, 24, 24), action_size=3, target_names=("x", "y"), row_frames=8, chunk_mib=0.02)
    with EpisodeWriter(tmp_path / "whole.zarr", **kw) as w:
        for e in eps:
            w.add(*e)
    with pytest.raises(RuntimeError, match="the source broke"):
        with EpisodeWriter(tmp_path / "resumed.zarr", **kw) as w:
            for i, e in enumerate(eps):
                if i == 21:
                    raise RuntimeError("the source broke")
                w.add(*e)
    assert not (tmp_path / "resumed.zarr").exists() and (tmp_path / "resumed.zarr.partial").exists()
    with EpisodeWriter(tmp_path / "resumed.zarr", resume=True, **kw) as w:
        done = w.episodes_done
        assert 0 < done <= 21
        for e in eps[done:]:
            w.add(*e)
    assert snapshot(tmp_path / "resumed.zarr") == snapshot(tmp_path / "whole.zarr")
    r = StoreReader(tmp_path / "whole.zarr")
    starts = r.episode_starts()
    actions, targets = r.actions(), r.targets()
    for e, (x, a, t) in enumerate(eps):
        s, n = int(starts[e]), len(x)
        np.testing.assert_array_equal(r.read_frames(s, n), x)
        np.testing.assert_array_equal(actions[s:s + n - 1], a[:n - 1])
        assert not actions[s + n - 1].any()  # the last frame of an episode has no action
        np.testing.assert_array_equal(targets[s:s + n], t)
    assert r.spec().static_channels == (False, False, True)


def test_episode_writer_errors_name_the_episode(tmp_path):
    (x, a, t), = dot_episodes(4, 1)
    with EpisodeWriter(tmp_path / "s.zarr", frame_shape=(3, 24, 24), action_size=3) as w:
        w.add(x, a, None)
        with pytest.raises(JepaFastError, match=r"episode 1: frames have shape \(\d+, 24, 24, 3\); expected .*"
                                                r"channels last\? np.moveaxis"):
            w.add(np.moveaxis(x, 1, -1), a)
        with pytest.raises(JepaFastError, match="episode 1: frames are float32; this writer takes uint8"):
            w.add(x.astype(np.float32), a)
    with pytest.raises(JepaFastError, match=r"o.zarr: EpisodeWriter: flips.lr: action components \[5\]"):
        EpisodeWriter(tmp_path / "o.zarr", frame_shape=(3, 24, 24), action_size=3, flips={"lr": FlipRule((5,))})
    with pytest.raises(JepaFastError, match="flips.ud.mirror: target components are 0..1"):
        EpisodeWriter(tmp_path / "o.zarr", frame_shape=(3, 24, 24), action_size=3, target_names=("x", "y"),
                      flips={"ud": FlipRule(mirror=((2, 1.0),))})
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()


# ---------------------------------------------------------------------------------------------
# the model for any data


@pytest.mark.parametrize("C,A,static", [(1, 2, [False]), (3, 5, [False, False, True]), (4, 1, [True] * 4)])
def test_the_model_takes_any_channels_actions_and_frame_size(C, A, static):
    spec = _spec(C, A, static, H=40, W=56, mean=[10.0 * (c + 1) for c in range(C)], std=[2.0] * C)
    m = JEPA(model_preset("ours"), spec).eval()
    groups = channel_groups(spec)
    dynamic = tuple(c for c in range(C) if not static[c])
    fixed = tuple(c for c in range(C) if static[c])
    assert groups == [(g, s) for g, s in ((dynamic, False), (fixed, True)) if g]
    assert sum(b.fc.out_features for b in m.encoder.branches) == 128
    states = torch.rand(2, 1, C, 40, 56) * 255
    out = m(states, torch.randn(2, 6, A))
    assert out.shape == (2, 7, 128) and torch.isfinite(out).all()
    shift, scale = input_normalisation(m.cfg, spec)  # 'auto' on generic data: the store's statistics
    assert shift == list(spec.value_mean) and scale == [0.5] * C


def test_store_normalisation_centres_the_input():
    spec = _spec(2, 2, [False, False], mean=[100.0, 20.0], std=[4.0, 5.0])
    m = JEPA(model_preset("ours"), spec).eval()
    seen = []
    m.encoder.branches[0].convs[0].register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].clone()))
    frames = torch.tensor([100.0, 20.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 24, 24)
    m.encode_stored(frames, torch.ones(2))
    assert torch.allclose(seen[0], torch.zeros_like(seen[0]), atol=1e-6)
    const = JEPA(model_preset("ours", input_norm="constant"), spec)
    assert not const.shifted and torch.equal(const.input_scale, torch.full((2,), model_preset("ours").input_scale))


def test_store_statistics_normalise_the_actions():
    """Actions of any scale (PushT: target positions in [0, 512]) reach the embedding normalised by the store's
    statistics; with constant normalisation (and on two-rooms data) they enter as they are."""
    import dataclasses

    spec = dataclasses.replace(_spec(2, 2, [False, False], mean=[100.0, 20.0], std=[4.0, 5.0]),
                               action_mean=(250.0, -3.0), action_std=(100.0, 0.5))
    m = JEPA(model_preset("ours"), spec).eval()
    seen = []
    m.action_embed.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].clone()))
    m.embed_actions(torch.tensor([[[350.0, -2.0]]]))
    torch.testing.assert_close(seen[-1], torch.tensor([[[1.0, 2.0]]]))
    const = JEPA(model_preset("ours", input_norm="constant"), spec)
    assert not const.actions_normalised and "action_shift" not in const.state_dict()
    assert not JEPA(model_preset("ours")).actions_normalised  # two-rooms: the course project's inputs
    # the statistics travel with the model: a checkpoint's spec rebuilds the same normalisation
    again = JEPA(model_preset("ours"), DataSpec.from_dict(spec.to_dict()))
    again.load_state_dict(m.state_dict())
    torch.testing.assert_close(again.action_scale, torch.tensor([0.01, 2.0]))


def test_the_inverse_dynamics_head_trains_the_encoder_on_the_actions():
    """model.idm_hidden adds a head predicting each normalised action from (s_t, s_t+1); its MSE enters the loss
    with loss.idm_coeff and its gradient reaches the encoder. Off (0) it adds no parameter and no term."""
    import dataclasses

    from jepa_fast.config import LossConfig
    from jepa_fast.train import ForwardLoss

    spec = dataclasses.replace(_spec(2, 2, [False, False], mean=[100.0, 20.0], std=[4.0, 5.0]),
                               action_mean=(250.0, -3.0), action_std=(100.0, 0.5))
    torch.manual_seed(0)
    plain = JEPA(model_preset("ours"), spec)
    torch.manual_seed(0)
    m = JEPA(model_preset("ours", idm_hidden=16), spec)
    assert count_parameters(m) - count_parameters(plain) == (2 * m.repr_dim * 16 + 16) + (16 * 2 + 2)
    states = torch.randint(0, 255, (4, 5, 2, 24, 24), dtype=torch.uint8)
    actions = torch.randn(4, 4, 2) * 100 + 250
    args = (states, actions, torch.ones(2), torch.ones(4), torch.zeros(4))
    terms = ForwardLoss(m, LossConfig(idm_coeff=2.0), "rollout")(*args)
    without = {k: v for k, v in terms.items() if k not in ("loss", "idm")}
    base = LossConfig()
    expect = (base.sim_coeff * without["sim"] + base.std_coeff * without["std"] + base.cov_coeff * without["cov"]
              + base.raw_coeff * without["raw"] + 2.0 * terms["idm"])
    torch.testing.assert_close(terms["loss"], expect)
    m.zero_grad()
    terms["idm"].backward()
    assert m.encoder.branches[0].convs[0].weight.grad.abs().sum() > 0
    assert "idm" not in ForwardLoss(plain, base, "rollout")(*args)
    assert JEPA(model_preset("ours")).idm is None and count_parameters(JEPA(model_preset("ours"))) == 477_664
    with pytest.raises(JepaFastError, match="model.idm_hidden"):
        model_preset("ours", idm_hidden=-1)


def test_two_rooms_keeps_the_course_projects_model():
    m = JEPA(model_preset("reference"))
    assert m.spec == TWO_ROOMS and channel_groups(TWO_ROOMS) == [((0,), False), ((1,), True)]
    assert count_parameters(m) == 477_664 and not m.shifted
    assert torch.equal(m.input_shift, torch.zeros(2))


def test_checkpoints_written_before_data_specs_still_load():
    """Older checkpoints named the two branches agent/walls, had no input shift and a model.static_walls field."""
    torch.manual_seed(0)
    m = JEPA(model_preset("reference")).eval()
    old = {k.replace("encoder.branches.0.", "encoder.agent.").replace("encoder.branches.1.", "encoder.walls."): v
           for k, v in m.state_dict().items() if k != "input_shift"}
    assert any(k.startswith("encoder.agent.") for k in old)
    again = JEPA(model_preset("reference")).eval()
    again.load_state_dict(old, strict=True)
    x, a = torch.rand(3, 1, 2, 65, 65) * 0.09, torch.randn(3, 5, 2)
    torch.testing.assert_close(again(x, a), m(x, a), rtol=0, atol=0)
    cfg = run_config_from_dict({"preset": "reference", "model": {"static_walls": False}})
    assert cfg.model.static_once is False


# ---------------------------------------------------------------------------------------------
# probing any targets


def test_the_generic_score_is_relative_to_a_constant_prober():
    targets = torch.tensor(np.random.default_rng(0).normal([5, 100], [2, 30], size=(5, 4, 2)), dtype=torch.float32)
    norm = P.TargetNorm.of(targets.numpy(), ("a", "b"))
    prober = torch.nn.Linear(3, 2)
    with torch.no_grad():
        prober.weight.zero_()
        prober.bias.zero_()  # predicts 0 in normalised units: the probe-train mean
    sc = P.evaluate(prober, lambda idx: torch.zeros(len(idx), 4, 3), targets, ProbeConfig(batch_size=2), norm,
                    drop_last=False)
    assert sc.loss == pytest.approx(1.0, rel=1e-4)  # all 5 windows count, the last batch by its size
    assert sc.per_target == pytest.approx(sc.chance, rel=1e-4)
    np.testing.assert_allclose(list(sc.chance.values()), targets.double().var(dim=(0, 1), unbiased=False), rtol=1e-5)


def _generic_root(tmp_path, episodes_raw):
    root = tmp_path / "packed"
    pack_split(episodes_raw, root / "train.zarr", progress=False)
    for name, seed, n in (("train", 5, 60), ("val", 6, 40)):
        with EpisodeWriter(root / "probe" / f"{name}.zarr", frame_shape=(3, 24, 24), action_size=3,
                           target_names=("x", "y")) as w:
            for e in dot_episodes(seed, n, lengths=(8, 20)):
                w.add(*e)
    return root


def test_any_data_trains_and_probes_end_to_end(episodes_raw, tmp_path, capsys):
    root = _generic_root(tmp_path, episodes_raw)
    run = tmp_path / "run"
    argv = ["train", str(root), "--preset", "tiny", "--seq-len", "6", "--stride", "3", "--out", str(run),
            "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "windows of 6 frames from 38 episodes; 2 shorter episodes skipped" in out
    model, config = P.load_checkpoint_model(run, torch.device("cpu"))
    assert model.spec.channels == 3 and model.spec.action_size == 3 and model.spec.static_channels[2]
    assert model.shifted and config["data"]["seq_len"] == 6
    assert cli.main(["probe", str(run), "--data", str(root)]) == 0
    table = capsys.readouterr().out
    assert "| probe | x |" in table and "| probe | (all, relative) |" in table
    metrics = json.loads((run / "probe" / "metrics.json").read_text())
    assert metrics["protocol"] == "generic" and set(metrics["per_target"]["probe"]) == {"x", "y"}
    assert np.isfinite(metrics["losses"]["probe"]) and len(metrics["per_timestep"]["probe"]) == 6
    assert (run / "probe" / "probe_targets_probe.png").exists()
    assert (run / "probe" / "metrics.txt").read_text().startswith("probe val loss: ")
    # a finished run resumes as a no-op on the same windows
    assert cli.main(argv + ["--resume"]) == 0
    capsys.readouterr()


def test_preset_flips_are_off_on_data_without_flip_rules_and_asked_ones_refused(episodes_store, tmp_path, capsys):
    """``ours-small`` flips left-right (a two-rooms recipe); on data that declares no flip rule its preset flips
    are turned off and said, while flips asked for on the command line are refused in one line."""
    argv = ["train", str(episodes_store), "--preset", "ours-small", "--seq-len", "6", "--steps", "1",
            "--batch-size", "8", "--no-progress"]
    assert run_preset("ours-small").data.augment.flip_lr == 0.5
    assert cli.main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert "data.augment.flip_lr of preset ours-small off" in capsys.readouterr().err
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["data"]["augment"]["flip_lr"] == 0.0
    for asked in (["--set", "data.augment.flip_lr=0.5"], ["--augment", "flips"]):
        assert cli.main(argv + ["--out", str(tmp_path / "b")] + asked) == 2
        one_line(capsys, "declares no lr flip rule")
        assert not (tmp_path / "b" / "checkpoints").exists()


def test_init_from_weights_of_other_data_is_refused(episodes_raw, tiny_packed, tmp_path, capsys):
    root = tmp_path / "packed"
    pack_split(episodes_raw, root / "train.zarr", progress=False)
    train(apply_overrides(run_preset("tiny"), ["data.seq_len=6", "train.max_steps=1"]), root, tmp_path / "a",
          progress=False)
    assert cli.main(["train", str(tiny_packed), "--preset", "tiny", "--init", str(tmp_path / "a"), "--out",
                     str(tmp_path / "b"), "--no-progress"]) == 2
    one_line(capsys, "was trained on other data (channels 3", "has channels 2")
    assert cli.main(["export-reference", str(tmp_path / "a"), "--out", str(tmp_path / "w.pth"),
                     "--rollout-differs"]) == 2
    one_line(capsys, "the course project's format holds the two-rooms model only")


def test_probe_errors_name_what_is_missing(episodes_raw, tmp_path, capsys):
    root = tmp_path / "packed"
    pack_split(episodes_raw, root / "train.zarr", progress=False)
    train(apply_overrides(run_preset("tiny"), ["data.seq_len=6", "train.max_steps=1"]), root, tmp_path / "a",
          progress=False)
    assert cli.main(["probe", str(tmp_path / "a"), "--data", str(root)]) == 2
    one_line(capsys, "no probe splits: probing needs a folder", "train.zarr", "val.zarr")
    (root / "probe").mkdir()
    for name in ("train", "val"):
        with EpisodeWriter(root / "probe" / f"{name}.zarr", frame_shape=(3, 24, 24), action_size=3) as w:
            for e in dot_episodes(9, 12):
                w.add(e[0], e[1])  # no targets
    assert cli.main(["probe", str(tmp_path / "a"), "--data", str(root)]) == 2
    one_line(capsys, "has no probe targets")
    for name in ("train", "val"):
        pack_split(episodes_raw, root / "probe" / f"{name}.zarr", overwrite=True, progress=False)
    # 40 episodes of 3-30 frames hold fewer than 64 windows of 20 frames, and more than 64 of 2
    assert cli.main(["probe", str(tmp_path / "a"), "--data", str(root), "--seq-len", "20"]) == 2
    one_line(capsys, "probe/train.zarr: ", " windows of 20 frames, fewer than the prober's batch of 64: pack more "
             "episodes into it, or probe shorter windows with --seq-len")
    assert cli.main(["probe", str(tmp_path / "a"), "--data", str(root), "--seq-len", "2"]) == 0


# ---------------------------------------------------------------------------------------------
# PushT, an environment no one here wrote


@pytest.mark.skipif(importlib.util.find_spec("gym_pusht") is None or importlib.util.find_spec("h5py") is None,
                    reason="gym-pusht and h5py (the [envs] extra) are not installed")
def test_pusht_episodes_record_pack_train_and_probe(tmp_path, capsys):
    from jepa_fast.envs import pusht
    from jepa_fast.probe_report import run_probe

    raw = tmp_path / "raw"
    for name, seed, n in (("train", 0, 10), ("probe/train", 1, 8), ("probe/val", 2, 6)):
        r = pusht.record(raw / f"{name}.hdf5", n, seed=seed, workers=2, min_len=12, max_len=20, progress=False)
        assert r["frames"] >= 12 * n
    assert json.loads((raw / "train.meta.json").read_text()) == pusht.META
    pack_path(raw, tmp_path / "packed", keys={"targets": ",".join(pusht.TARGET_KEYS)}, progress=False)
    spec = StoreReader(tmp_path / "packed" / "train.zarr").spec()
    assert (spec.channels, spec.height, spec.width, spec.action_size) == (3, 96, 96, 2)
    assert spec.target_names == pusht.TARGET_NAMES and spec.channel_names == ("red", "green", "blue")
    assert set(spec.flips) == {"lr", "ud"}
    assert cli.main(["inspect", str(tmp_path / "packed" / "train.zarr")]) == 0
    assert ("flips               lr: a0 -> 512 - a0, agent_x -> 512 - agent_x, block_x -> 512 - block_x, "
            "block_sin -> -block_sin; ud: a1 -> 512 - a1") in capsys.readouterr().out
    run = tmp_path / "run"
    train(apply_overrides(run_preset("tiny"), ["data.seq_len=8", "data.stride=4", "data.batch_size=8",
                                               "data.augment.flip_lr=0.5", "data.augment.flip_ud=0.5"]),
          tmp_path / "packed", run, progress=False)
    res = run_probe(run, tmp_path / "packed", cfg=ProbeConfig(batch_size=4, epochs=2))
    assert set(res["per_target"]["probe"]) == set(pusht.TARGET_NAMES)
    assert all(np.isfinite(v) for v in res["per_target"]["probe"].values())
    shutil.rmtree(raw)


@pytest.mark.skipif(importlib.util.find_spec("gym_pusht") is None,
                    reason="gym-pusht (the [envs] extra) is not installed")
def test_pusht_flip_rules_keep_the_physics_true():
    """A PushT frame flipped left-right (up-down) shows the pose the recorder's flip rules give: the env, reset to
    the flipped targets, renders the block where the flipped frame has it (and a rule that forgets the angle does
    not: the check can fail)."""
    from jepa_fast.data.batch import flip_actions_targets, flipped
    from jepa_fast.envs import pusht
    from jepa_fast.spec import flips_from_json

    env = pusht._env()
    flips = flips_from_json(pusht.META["flips"], 2, 6, "META")

    def render(agent, pose, cog):
        # reset_to_state takes the block's position before its rotation about the centre of gravity
        c, s = np.cos(pose[2]), np.sin(pose[2])
        xy = np.asarray(pose[:2]) - cog + np.array([[c, -s], [s, c]]) @ cog
        obs, info = env.reset(options={"reset_to_state": [*agent, *xy, pose[2]]})
        np.testing.assert_allclose(info["block_pose"][:2], pose[:2], atol=1e-6)
        return np.moveaxis(obs["pixels"], -1, 0), info

    def block(frame):  # the T's pixels (LightSlateGray)
        return np.abs(frame.astype(int) - np.array([119, 136, 153])[:, None, None]).sum(0) < 40

    def iou(a, b):
        return (a & b).sum() / max((a | b).sum(), 1)

    obs, info = env.reset(options={"reset_to_state": [100.0, 100.0, 256.0, 256.0, 1.0]})
    moved = np.asarray(info["block_pose"][:2]) - 256.0  # = (I - R(1)) cog: the centre of gravity in the T's frame
    cog = np.linalg.solve(np.eye(2) - np.array([[np.cos(1), -np.sin(1)], [np.sin(1), np.cos(1)]]), moved)
    rng = np.random.default_rng(0)
    for _ in range(4):
        agent, pose = rng.uniform(60, 450, 2), (*rng.uniform(150, 350, 2), rng.uniform(0, 2 * np.pi))
        frame, info = render(agent, pose, cog)
        t = np.array([[[*info["pos_agent"], *pose[:2], np.cos(pose[2]), np.sin(pose[2])]]], np.float32)
        a = np.array([[[*agent]]], np.float32)
        for name, lr, ud in (("lr", True, False), ("ud", False, True)):
            fa, ft = flip_actions_targets(a, t, np.array([lr]), np.array([ud]), flips)
            want = flipped(frame, lr, ud)
            got, _ = render(ft[0, 0, :2], (*ft[0, 0, 2:4], np.arctan2(ft[0, 0, 5], ft[0, 0, 4])), cog)
            np.testing.assert_allclose(fa[0, 0], ft[0, 0, :2], atol=1e-3)  # the agent's target point mirrors with it
            assert iou(block(got), block(want)) > 0.5, name
            wrong, _ = render(ft[0, 0, :2], (*ft[0, 0, 2:4], pose[2]), cog)  # the same mirror, the angle kept
            assert iou(block(wrong), block(want)) < 0.3, name
