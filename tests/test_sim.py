"""The simulator meets every validation target of docs/TWO_ROOMS.md §8 and keeps the physics true."""

from __future__ import annotations

import numpy as np
import pytest

from jepa_fast.config import ConfigError, SimConfig
from jepa_fast.sim import env, splits

CFG = SimConfig()
PEAK = 1.0 / (2 * np.pi * 1.3**2)


@pytest.fixture(scope="module")
def random_split():
    rng = np.random.default_rng(1234)
    return splits.generate("random", rng, CFG, 4096, 17)


# ---------------------------------------------------------------------------------------------
# statistics (§8 validation targets)


def test_location_statistics_match_real_normalizer(random_split):
    loc = random_split.locations.reshape(-1, 2)
    # the real data's Normalizer: mean (31.5863, 32.0618), std (16.1025, 16.1353)
    np.testing.assert_allclose(loc.mean(0), [31.59, 32.06], atol=0.6)
    np.testing.assert_allclose(loc.std(0), [16.10, 16.14], atol=0.4)


def test_action_statistics(random_split):
    a = random_split.actions.reshape(-1, 2)
    np.testing.assert_allclose(a.std(0), [0.75, 0.75], atol=0.04)
    np.testing.assert_allclose(a.mean(0), [0.0, 0.0], atol=0.05)
    norm = np.linalg.norm(random_split.actions, axis=-1)
    assert norm.min() >= 0.2 - 1e-9 and norm.max() <= 1.8 + 1e-9


def test_held_out_walls_never_in_train_and_only_in_wall_other():
    rng = np.random.default_rng(0)
    tr = splits.generate("random", rng, CFG, 2000, 17)
    other = splits.generate("wall_other", rng, CFG, 500, 17)
    assert not np.isin(tr.wall_x, np.arange(37, 42)).any()
    assert set(np.unique(tr.wall_x)) == set(range(20, 37)) | {42, 43, 44}
    assert set(np.unique(other.wall_x)) == set(range(37, 42))
    assert tr.door_y.min() >= 10 and tr.door_y.max() <= 54


def test_rendering_targets(random_split):
    n = 64
    states = env.render(CFG, random_split.locations[:n], random_split.wall_x[:n], random_split.door_y[:n])
    assert states.shape == (n, 17, 2, 65, 65) and states.dtype == np.float32
    walls = states[:, :, 1]
    assert ((walls > 0).sum(axis=(-1, -2)) == 418).all()
    assert (walls == walls[:, :1]).all()  # identical across the trajectory
    np.testing.assert_allclose(np.unique(walls), [0.0, PEAK], rtol=1e-6)
    agent = states[:, :, 0]
    loc = random_split.locations[:n]
    away = ((loc > 10) & (loc < 54)).all(-1)  # dot far from the image edge
    np.testing.assert_allclose(agent.sum(axis=(-1, -2))[away], 1.0, atol=2e-3)
    assert agent.max() <= PEAK * (1 + 1e-6)
    # brightest pixel is the pixel nearest the true position
    flat = agent.reshape(n, 17, -1).argmax(-1)
    rows, cols = np.divmod(flat, 65)
    assert (np.abs(cols - loc[..., 0]) <= 0.5 + 1e-6).all() and (np.abs(rows - loc[..., 1]) <= 0.5 + 1e-6).all()


def test_agent_peak_on_a_pixel_centre():
    states = env.render(CFG, np.array([[[30.0, 20.0]]]), np.array([28]), np.array([19]))
    assert states[0, 0, 0, 20, 30] == pytest.approx(PEAK, rel=1e-6)
    assert PEAK == pytest.approx(0.09418, abs=1e-5)


def test_wall_mask_geometry_matches_real_frame():
    # a real DL24FA frame: borders at 4/60, wall columns 27-29 (wall_x=28), door rows 15-23 (door_y=19)
    m = env.wall_masks(CFG, np.array([28]), np.array([19]))[0]
    assert m.sum() == 418
    assert m[:, 4].all() and m[:, 60].all() and m[4, :].all() and m[60, :].all()
    for c in (27, 28, 29):
        assert not m[15:24, c].any()
        assert m[0:15, c].all() and m[24:65, c].all()  # also drawn outside the border
    assert m[:, 26].sum() == 2 and m[:, 30].sum() == 2  # neighbouring columns: only the border rows


def test_64px_geometry_and_uint8_scale():
    cfg = SimConfig(image_size=64, value_scale="uint8")
    assert cfg.border_hi == 59 and cfg.wall_values()[-1] == 43 and cfg.door_values()[-1] == 53
    rng = np.random.default_rng(3)
    tr = splits.generate("random", rng, cfg, 32, 17)
    st = env.render(cfg, tr.locations, tr.wall_x, tr.door_y, dtype="uint8")
    assert st.shape == (32, 17, 2, 64, 64) and st.dtype == np.uint8
    assert set(np.unique(st[:, :, 1])) == {0, 255}
    assert st[:, :, 0].max() >= 200
    assert ((st[:, :, 1] > 0).sum(axis=(-1, -2)) == 4 * 64 - 4 + 3 * (64 - 9 - 2)).all()
    assert tr.locations.max() < 59 and tr.locations.min() > 4


def test_bad_sim_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="image_size"):
        SimConfig(image_size=63)
    with pytest.raises(ConfigError, match="cross_wall_rate"):
        SimConfig(cross_wall_rate=1.5)


# ---------------------------------------------------------------------------------------------
# collision rule (§2)


def _check_physics(tr, cfg=CFG):
    loc, act = tr.locations, tr.actions
    moved = np.abs(loc[:, 1:] - loc[:, :-1]).sum(-1) > 0  # (N, T-1)
    # a step either applies the commanded action exactly or stays exactly in place
    np.testing.assert_allclose(loc[:, 1:][moved], (loc[:, :-1] + act)[moved], atol=1e-9)
    assert (loc[:, 1:][~moved] == loc[:, :-1][~moved]).all()
    # never on or outside the border box
    assert loc.min() > cfg.border_lo and loc.max() < cfg.border_hi
    # no point of any executed segment lies inside the wall slab outside the door band
    s = np.linspace(0.0, 1.0, 41)[None, None, :, None]
    pts = loc[:, :-1, None] + s * (loc[:, 1:, None] - loc[:, :-1, None])  # (N, T-1, 41, 2)
    wx = tr.wall_x[:, None, None]
    dy = tr.door_y[:, None, None]
    bad = env.in_wall_outside_door(cfg, pts[..., 0], pts[..., 1], wx, dy)
    assert not bad.any(), f"{bad.sum()} segment points inside the wall"
    return moved


def test_random_trajectories_obey_collision_rule(random_split):
    moved = _check_physics(random_split)
    assert 0.6 < moved.mean() < 0.99  # blocking happens, but not all the time


def test_cross_wall_trajectories_cross_the_door():
    cfg = SimConfig(cross_wall_rate=1.0)
    tr = splits.generate("random", np.random.default_rng(5), cfg, 1000, 17)
    _check_physics(tr, cfg)
    side = np.sign(tr.locations[..., 0] - tr.wall_x[:, None])
    crossed = (side[:, 0] != side[:, -1])
    assert crossed.mean() > 0.3  # "likely but not guaranteed" (§3)
    # with rate 0 nearly nothing crosses
    tr0 = splits.generate("random", np.random.default_rng(5), SimConfig(cross_wall_rate=0.0), 1000, 17)
    side0 = np.sign(tr0.locations[..., 0] - tr0.wall_x[:, None])
    assert (side0[:, 0] != side0[:, -1]).mean() < crossed.mean() / 3


@pytest.mark.parametrize("case,blocked", [
    # (p, a, wall_x, door_y)
    (((18.9, 40.0), (1.5, 0.0), 21, 15), True),   # into the wall below the door
    (((19.5, 15.0), (3.0, 0.2), 21, 15), False),  # straight through the door, both faces in the band
    (((19.5, 18.5), (3.0, 2.0), 21, 15), True),   # enters in the band, leaves the far face above it
    (((21.0, 18.8), (0.0, 0.5), 21, 15), True),   # inside the door, through the jamb (y = door + 4)
    (((21.0, 11.2), (0.0, -0.5), 21, 15), True),  # through the bottom jamb (y = door - 4)
    (((21.0, 15.0), (0.0, 1.0), 21, 15), False),  # moving inside the door band
    (((4.5, 30.0), (-0.6, 0.0), 30, 15), True),   # crosses the left border line x = 4
    (((59.5, 30.0), (0.5, 0.0), 30, 15), True),   # touches the right border line x = 60
    (((30.0, 59.9), (0.0, 0.2), 40, 15), True),   # crosses y = 60
    (((10.0, 10.0), (1.0, 1.0), 30, 15), False),  # free space
])
def test_blocked_moves_cases(case, blocked):
    p, a, wall, door = case
    got = env.blocked_moves(CFG, np.array([p]), np.array([a]), np.array([wall]), np.array([door]))
    assert bool(got[0]) is blocked


def test_blocked_step_stays_in_place_and_action_is_recorded():
    start = np.array([[18.5, 40.0]])
    actions = np.array([[[1.5, 0.0], [-1.0, 0.0]]])
    loc, blocked = env.simulate(CFG, start, actions, np.array([21]), np.array([15]))
    assert blocked.tolist() == [[True, False]]
    np.testing.assert_array_equal(loc[0], [[18.5, 40.0], [18.5, 40.0], [17.5, 40.0]])


# ---------------------------------------------------------------------------------------------
# probe_wall and probe_expert


def test_probe_wall_defining_properties():
    T = 17
    tr = splits.generate("wall", np.random.default_rng(7), CFG, 640, T, offset=0)
    _check_physics(tr)
    dx = tr.actions[..., 0]
    assert (np.abs(dx) == 1.0).all() and (tr.actions[..., 1] == 0).all()
    rightward = (np.arange(640) % 64) < 32
    assert (dx[rightward] == 1.0).all() and (dx[~rightward] == -1.0).all()
    x0 = tr.locations[:, 0, 0]
    assert (x0[rightward] <= tr.wall_x[rightward] - 2).all() and (x0[rightward] >= tr.wall_x[rightward] - T + 2).all()
    assert (x0[~rightward] >= tr.wall_x[~rightward] + 2).all()
    # rows outside the door band never pass the wall: they end pinned against it
    y = tr.locations[:, 0, 1]
    outside = np.abs(y - tr.door_y) > CFG.door_space
    final_side = np.sign(tr.locations[:, -1, 0] - tr.wall_x)
    start_side = np.sign(x0 - tr.wall_x)
    assert (final_side[outside] == start_side[outside]).all()
    pinned = np.abs(tr.locations[outside, -1, 0] - tr.wall_x[outside]) < 2.0 + 1e-9
    assert pinned.all()
    # rows aimed at the door centre pass through
    aimed = np.abs(y - tr.door_y) <= 2
    assert (final_side[aimed] != start_side[aimed]).mean() > 0.9
    # the batch-of-64 halves continue across block boundaries
    tr2 = splits.generate("wall", np.random.default_rng(7), CFG, 64, T, offset=32)
    assert (tr2.actions[:32, 0, 0] == -1).all() and (tr2.actions[32:, 0, 0] == 1).all()


def test_probe_expert_defining_properties():
    T = 65
    tr = splits.generate("expert", np.random.default_rng(11), CFG, 400, T)
    _check_physics(tr)
    step = np.linalg.norm(tr.actions, axis=-1)
    assert step.max() <= CFG.expert_step + 1e-9
    assert np.isclose(step[:, 0], CFG.expert_step).all()
    # once the goal is reached, actions stay exactly zero
    zero = step == 0
    assert (np.cumsum(~zero[:, ::-1], axis=1)[:, ::-1][zero] == 0).all()
    # every path starts and ends on opposite sides... or is still on its way (path longer than T steps)
    start_side = np.sign(tr.locations[:, 0, 0] - tr.wall_x)
    end_side = np.sign(tr.locations[:, -1, 0] - tr.wall_x)
    assert (start_side != end_side).mean() > 0.95
    assert 0.4 < (start_side < 0).mean() < 0.6
    # they pass the wall inside door +- 2
    at_wall = np.abs(tr.locations[..., 0] - tr.wall_x[:, None]) <= 1.0
    ys = np.where(at_wall, np.abs(tr.locations[..., 1] - tr.door_y[:, None]), 0.0)
    assert ys.max() <= 2.0 + 1e-9
    # no step was blocked: the physics reproduced the planned path
    assert (step[:, :-1] > 0).sum() > 0


def test_same_seed_same_trajectories_and_independent_splits():
    a = splits.generate("random", np.random.default_rng(42), CFG, 100, 17)
    b = splits.generate("random", np.random.default_rng(42), CFG, 100, 17)
    np.testing.assert_array_equal(a.locations, b.locations)
    np.testing.assert_array_equal(a.actions, b.actions)
