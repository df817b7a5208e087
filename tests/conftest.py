"""Shared fixtures. Environment switches that must be set before libraries initialise live here.

Session fixtures are made once and shared read-only: ``tiny_root`` (the tiny simulated dataset, .npy),
``tiny_packed`` (it packed), ``tiny_run`` / ``tiny_run_ours`` (a trained tiny run of each model). A test
that damages or writes into one takes a private copy (``packed_copy``, or ``shutil.copytree``).
"""

from __future__ import annotations

import os
import shutil

# Triton must see this before it decorates any kernel (docs/PERF_NOTES.md); harmless where Triton is absent.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A tiny simulated dataset root (all seven splits, float32, original .npy format)."""
    from jepa_fast.config import SimConfig, dataset_preset
    from jepa_fast.sim.generate import generate_dataset

    out = tmp_path_factory.mktemp("data") / "tiny"
    generate_dataset(out, dataset_preset("tiny"), SimConfig(), seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_packed(tiny_root, tmp_path_factory):
    """``tiny_root`` packed: <root>/<split>.zarr for every split (read-only: copy it to damage it)."""
    from jepa_fast.data.pack import pack_path

    out = tmp_path_factory.mktemp("packed") / "tiny"
    pack_path(tiny_root, out, progress=False)
    return out


@pytest.fixture()
def packed_copy(tiny_packed, tmp_path):
    """A private copy of ``tiny_packed`` that the test may damage."""
    out = tmp_path / "packed"
    shutil.copytree(tiny_packed, out)
    return out


def _trained(tiny_packed, tmp_path_factory, name, overrides):
    import logging

    from jepa_fast.config import apply_overrides, run_preset
    from jepa_fast.train import train

    out = tmp_path_factory.mktemp("runs") / name
    logging.disable(logging.INFO)
    try:
        train(apply_overrides(run_preset("tiny"), overrides), tiny_packed, out, progress=False)
    finally:
        logging.disable(logging.NOTSET)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_packed, tmp_path_factory):
    """A run folder of the tiny preset (reference model, 6 steps) on ``tiny_packed`` (read-only)."""
    return _trained(tiny_packed, tmp_path_factory, "reference", [])


@pytest.fixture(scope="session")
def tiny_run_ours(tiny_packed, tmp_path_factory):
    """The same with our residual predictor, trained by rollout (read-only)."""
    return _trained(tiny_packed, tmp_path_factory, "ours",
                    ["model.residual_predictor=true", "train.prediction=rollout", "train.max_steps=2"])


@pytest.fixture(scope="session")
def episodes_raw(tmp_path_factory):
    """A split of 40 episodes of unequal length (3-30 frames; ``helpers.dot_episodes``) as a flat .npy folder with
    episode_ends.npy: 3-channel 24x24 uint8 frames (channel 2 static), 3-d actions, 2 targets (the dot's x, y)."""
    import numpy as np
    from helpers import dot_episodes

    eps = dot_episodes(0, 40)
    eps[3] = tuple(a[:3] for a in eps[3])  # one episode shorter than most windows
    out = tmp_path_factory.mktemp("episodes") / "raw"
    out.mkdir()
    np.save(out / "states.npy", np.concatenate([e[0] for e in eps]))
    np.save(out / "episode_ends.npy", np.cumsum([len(e[0]) for e in eps]))
    actions = np.concatenate([np.concatenate([e[1][:-1], np.zeros((1, 3), np.float32)]) for e in eps])
    np.save(out / "actions.npy", actions)
    np.save(out / "targets.npy", np.concatenate([e[2] for e in eps]))
    return out


@pytest.fixture(scope="session")
def episodes_store(episodes_raw, tmp_path_factory):
    """``episodes_raw`` packed in rows of 8 frames, 3 rows per shard (windows cross rows and shards)."""
    from jepa_fast.config import PackConfig
    from jepa_fast.data.pack import pack_split

    out = tmp_path_factory.mktemp("episodes_packed") / "train.zarr"
    pack_split(episodes_raw, out, PackConfig(row_frames=8, chunk_trajectories=3), progress=False)
    return out
