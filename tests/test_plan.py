"""jepa-fast plan: episodes, the door-aware distance, the planners, batching, the report and its bad inputs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers import one_line, snapshot

from jepa_fast.cli import main
from jepa_fast.config import ConfigError, PlanConfig, SimConfig
from jepa_fast.plan import (
    ModelAgent,
    OracleAgent,
    RandomAgent,
    cost_field,
    format_field,
    geodesic,
    load_planning_model,
    make_episodes,
    optimise,
    run_episodes,
    run_plan,
    strata,
    summarise,
    wilson,
)

SIM = SimConfig()


def test_the_door_aware_distance_goes_through_the_door():
    wall, door = np.array(30.0), np.array(30.0)
    p, g = np.array([20.0, 30.0]), np.array([40.0, 30.0])
    assert geodesic(p, g, wall, door, SIM) == pytest.approx(20.0)  # straight through the open door
    # door rows 26..34 (centre 10 -> band 6.5..13.5 used): around the wall via its nearest door row
    far = geodesic(p, g, wall, np.array(10.0), SIM)
    assert far == pytest.approx(2 * math.hypot(9.0, 30.0 - 13.5) + 2.0, abs=1e-6)
    same = geodesic(np.array([10.0, 10.0]), np.array([20.0, 50.0]), wall, door, SIM)
    assert same == pytest.approx(math.hypot(10.0, 40.0))  # one room: the straight line
    # vectorised over positions and layouts, and never shorter than the straight line
    rng = np.random.default_rng(0)
    pts, goals = rng.uniform(6, 58, (50, 2)), rng.uniform(6, 58, (50, 2))
    d = geodesic(pts, goals, np.full(50, 30.0), rng.integers(10, 55, 50).astype(float), SIM)
    assert d.shape == (50,) and np.all(d >= np.linalg.norm(pts - goals, axis=1) - 1e-9)


def test_episode_sets_are_seeded_and_keep_to_their_rooms():
    cfg = PlanConfig(episodes=64, seed=3)
    for kind in ("cross", "same"):
        a, b = make_episodes(kind, cfg, SIM), make_episodes(kind, cfg, SIM)
        np.testing.assert_array_equal(a.start, b.start)
        np.testing.assert_array_equal(a.goal, b.goal)

        def side(p, a=a):
            return p[:, 0] < a.wall_x

        for p in (a.start, a.goal):
            assert np.all(np.abs(p[:, 0] - a.wall_x) >= SIM.wall_half + 2)  # off the wall's faces
            assert np.all((p > SIM.border_lo + 1.99) & (p < SIM.border_hi - 1.99))
        if kind == "cross":
            assert np.all(side(a.start) != side(a.goal))
        else:
            assert np.all(side(a.start) == side(a.goal))
            assert np.all(np.linalg.norm(a.start - a.goal, axis=1) >= cfg.min_distance)
    assert not np.array_equal(make_episodes("cross", cfg, SIM).start,
                              make_episodes("cross", dataclasses.replace(cfg, seed=4), SIM).start)
    held = make_episodes("cross", dataclasses.replace(cfg, layouts="held_out"), SIM)
    assert set(held.wall_x.astype(int)) <= set(range(37, 42))
    groups = strata(make_episodes("cross", cfg, SIM), cfg, SIM)
    assert set(groups) <= {"detour < 4 px", "detour 4-12 px", "detour >= 12 px"} and len(set(groups)) == 3


def test_cem_and_mppi_find_the_minimum_of_a_known_cost():
    """Cost: distance of the summed actions from a reachable target; both planners get close from zero."""
    target = torch.tensor([[6.0, -4.0]])

    def cost(a):  # (n, S, H, 2) -> (n, S)
        return (a.sum(2) - target[:, None]).norm(dim=-1)

    for planner in ("cem", "mppi"):
        cfg = PlanConfig(planner=planner, horizon=8, samples=256, iterations=6)
        gens = [torch.Generator().manual_seed(0)]
        mean = optimise(cost, torch.zeros(1, 8, 2), gens, cfg, bound=1.8)
        assert cost(mean[:, None]).item() < 1.0, planner  # from 7.2 at the start
        assert mean.norm(dim=-1).max() <= 1.8 + 1e-6


def test_the_baselines_bracket_the_task():
    """The door-aware oracle reaches every cross-room goal, the greedy one stalls on some, random on almost all."""
    cfg = PlanConfig(episodes=12, samples=64, iterations=2)
    eps = make_episodes("cross", cfg, SIM)
    groups = strata(eps, cfg, SIM)
    door = summarise(run_episodes(OracleAgent("door", SIM, cfg, True), eps, cfg, SIM).paths, eps, groups, cfg)
    greedy = summarise(run_episodes(OracleAgent("greedy", SIM, cfg, False), eps, cfg, SIM).paths, eps, groups, cfg)
    rand = summarise(run_episodes(RandomAgent(), eps, cfg, SIM).paths, eps, groups, cfg)
    assert door["all"]["success"] == 1.0
    assert greedy["all"]["success"] < 1.0 and greedy["detour >= 12 px"]["success"] == 0.0
    assert rand["all"]["success"] <= 1 / 12
    assert door["all"]["reached_ever"] == 1.0 and door["all"]["steps_to_success"] > 0


def test_batched_planning_plans_what_one_episode_at_a_time_does(tiny_run_ours):
    """Each episode samples from its own noise stream: batching changes the speed, not the paths."""
    cfg = PlanConfig(episodes=4, samples=32, iterations=2, max_steps=12)
    eps = make_episodes("cross", cfg, SIM)
    oracle = [run_episodes(OracleAgent("g", SIM, dataclasses.replace(cfg, batch=b), False), eps,
                           dataclasses.replace(cfg, batch=b), SIM).paths for b in (0, 1)]
    np.testing.assert_array_equal(oracle[0], oracle[1])
    model = load_planning_model(tiny_run_ours, SIM, torch.device("cpu"))
    paths = [run_episodes(ModelAgent("m", model, SIM, cfg, torch.device("cpu")), eps,
                          dataclasses.replace(cfg, batch=b), SIM).paths for b in (0, 1)]
    np.testing.assert_allclose(paths[0], paths[1], atol=1e-4)
    assert not np.allclose(paths[0][:, -1], eps.start)  # the agents moved


class _FakeEncoder:
    """An 'encoder' whose latent is a chosen function of the position: latent distance to the goal =
    shape(true distance), so the field's numbers are known."""

    def __init__(self, shape):
        self.shape = shape

    def encode(self, pos, eps):
        v = pos - eps.goal
        d = np.linalg.norm(v, axis=1, keepdims=True)
        return torch.from_numpy(v / np.maximum(d, 1e-9) * self.shape(d))


def test_the_cost_field_measures_how_far_the_latent_distance_keeps_growing():
    eps = make_episodes("same", PlanConfig(episodes=6), SIM)
    exact = cost_field(_FakeEncoder(lambda d: d), eps, SIM, points=200)
    assert exact["rank_agreement"] == 1.0
    filled = [hi for hi, n in zip(exact["edges"][1:], exact["count"]) if n > 0]
    assert exact["reach"] == filled[-1]  # grows over every bin the rooms fill
    med = [m for m in exact["median"] if m is not None]
    assert med == sorted(med)
    # grows up to 12 px, then falls: the reach is 12 px and far pairs are ordered backwards
    folded = cost_field(_FakeEncoder(lambda d: np.where(d < 12, d, 24 - d)), eps, SIM, points=200)
    assert folded["reach"] == 12.0
    assert 0.5 < folded["rank_agreement"] < exact["rank_agreement"]
    assert "| folded | 12 |" in format_field({"exact": exact, "folded": folded})


def test_wilson_interval():
    assert wilson(0, 10)[0] == 0.0 and wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.2366, abs=1e-4)
    assert wilson(40, 40)[1] == 1.0


def test_plan_writes_its_report_whole(tiny_run, tiny_run_ours, tmp_path, capsys):
    out = tmp_path / "plan"
    cfg = PlanConfig(episodes=2, samples=16, iterations=1, max_steps=8)
    r = run_plan(tiny_run, out, cfg, compare=[tiny_run_ours], budgets=(8,), log=lambda *_: None)
    assert {p.name for p in out.iterdir()} == {"report.md", "results.json", "episodes.png", "success_vs_budget.png"}
    blob = json.loads((out / "results.json").read_text())
    assert list(blob["agents"]) == ["random", "oracle-greedy", "oracle-door", "reference", "ours"]
    for agent in blob["agents"].values():
        assert agent["cross"]["all"]["n"] == 2 and agent["same"]["all"]["n"] == 2
    assert blob["budget"]["success"].keys() == {"8", "16"}
    assert "| oracle-door | cross | all | 2 |" in (out / "report.md").read_text()
    assert list(blob["field"]) == ["reference", "ours"]  # the cost field of each model, not of the baselines
    assert "| ours | " in (out / "report.md").read_text().split("latent cost field")[1]
    assert r["out"] == str(out)
    # an existing report is kept: one line, nothing touched
    before = snapshot(out)
    assert main(["plan", str(tiny_run), "--out", str(out), "--episodes", "2"]) == 2
    one_line(capsys, "exists", "--overwrite")
    assert snapshot(out) == before


@pytest.mark.parametrize("argv, needles", [
    (["--episodes", "0"], ["plan.episodes=0"]),
    (["--device", "cuda:7"], ["--device cuda:7"]),
    (["--device", "tpu"], ["--device tpu"]),
    (["--set", "cost=mean"], ["plan.cost"]),
    (["--set", "replan_every=20"], ["plan.replan_every=20"]),
    (["--budgets", "64,x"], ["--budgets"]),
    (["--budgets", "0"], ["--budgets"]),
])
def test_bad_plan_arguments_get_one_line_and_write_nothing(tiny_run, tmp_path, capsys, argv, needles):
    out = tmp_path / "plan"
    assert main(["plan", str(tiny_run), "--out", str(out), *argv]) == 2
    one_line(capsys, *needles)
    assert not out.exists()


def test_a_model_that_cannot_take_the_simulators_frames_is_refused(episodes_store, tmp_path, capsys):
    from jepa_fast.config import apply_overrides, run_preset
    from jepa_fast.train import train

    run = tmp_path / "run"
    train(apply_overrides(run_preset("tiny"), ["train.max_steps=1", "data.seq_len=4", "model.encoder_widths=4,8"]),
          episodes_store, run, progress=False)
    out = tmp_path / "plan"
    assert main(["plan", str(run), "--out", str(out)]) == 2
    one_line(capsys, str(run), "3x24x24", "2x65x65")
    assert not out.exists()
    with pytest.raises(ConfigError, match="plan.planner"):
        PlanConfig(planner="ilqr")


# ---------------------------------------------------------------------------------------------
# subgoals from the training data (plan --graph)


def test_the_roadmap_leads_around_the_wall_not_through_it():
    """Latents = positions. One trajectory runs down the left of a wall, through a door at the bottom and up the
    right; start and goal face each other across the wall (4 apart, more than graph_link steps): the subgoal is
    down the path towards the door, never across."""
    from jepa_fast.plan.graph import Roadmap, Subgoals

    left = [(0.0, float(y)) for y in range(10, -1, -1)]  # down the left side to the door at y = 0
    right = [(4.0, float(y)) for y in range(0, 11)]  # and up the right side
    path = torch.tensor(left + right)  # (22, 2): one trajectory of 22 frames, steps of 1 (4 at the door)
    road = Roadmap(path, T=22, link=1.5, neighbours=4)
    assert road.step == pytest.approx(1.0)
    assert all(abs(path[j][0] - path[i][0]) < 1 for i in range(22) for j, _ in road.adj[i] if abs(j - i) > 1)
    start, goal = torch.tensor([0.0, 9.0]), torch.tensor([4.0, 9.0])
    sub = Subgoals([road], goal[None], lookahead=5.0)
    s = sub.pick(start[None])[0]
    assert s[0] == 0.0 and s[1] < 9.0 - 4.0  # five steps down the left side, towards the door
    assert sub.used == 1
    near = sub.pick(torch.tensor([[4.0, 6.0]]))[0]  # three steps from the goal: aim at the goal itself
    torch.testing.assert_close(near, goal)
    # stuck (the same latent at two re-plans): the lookahead halves, the subgoal comes closer, then grows back
    stuck = Subgoals([road], goal[None], lookahead=8.0)
    far = stuck.pick(start[None])[0]
    closer = stuck.pick(start[None])[0]
    assert stuck.reach == [4.0] and closer.tolist() == [0.0, 5.0] and far.tolist() == [0.0, 1.0]
    stuck.pick(start[None])
    assert stuck.reach == [2.0]
    stuck.pick(torch.tensor([[0.0, 5.0]]))
    assert stuck.reach == [4.0]
    lost = Subgoals([None], goal[None], lookahead=5.0).pick(start[None])[0]  # no roadmap: the goal
    torch.testing.assert_close(lost, goal)


def test_layouts_are_recognised_from_the_simulators_pixels(tiny_packed, tiny_run_ours):
    """The index groups the stored trajectories by walls image; a frame the simulator renders for a stored
    trajectory's layout finds that trajectory (quantisation keeps every wall pixel set and every other one not)."""
    from jepa_fast.plan.graph import LayoutIndex, layout_key
    from jepa_fast.sim.env import render

    index = LayoutIndex(tiny_packed, (False, True))
    assert sum(len(v) for v in index.groups.values()) == index.data.n and len(index.groups) > 1
    frame = index.data.decode_window(0)[0, 1]  # the walls of trajectory 0
    cols = (frame[10:55] > 0).sum(0)
    wall_x = int(np.argmax(cols[10:55])) + 10  # the middle wall's centre column (3 wide)
    wall_x = wall_x + 1 if cols[wall_x + 1] == cols[wall_x] and cols[wall_x + 2] == cols[wall_x] else wall_x
    open_rows = np.nonzero(frame[5:60, wall_x] == 0)[0] + 5
    door_y = int(open_rows.mean())
    walls = render(SIM, np.zeros((1, 1, 2)), np.array([wall_x]), np.array([door_y]))[0, 0, 1:]
    assert layout_key(walls) == layout_key(frame[None])
    assert 0 in index.trajectories(walls, 100)
    with pytest.raises(Exception, match="static channels"):
        LayoutIndex(tiny_packed, (False, False))


def test_plan_with_a_graph_reports_both_ways(tiny_run_ours, tiny_packed, tmp_path):
    out = tmp_path / "plan"
    cfg = PlanConfig(episodes=2, samples=16, iterations=1, max_steps=8)
    run_plan(tiny_run_ours, out, cfg, baselines=False, graph=tiny_packed, budgets=(4,), log=lambda *_: None)
    blob = json.loads((out / "results.json").read_text())
    assert list(blob["agents"]) == ["ours", "ours + graph"]
    assert blob["budget"]["agent"] == "ours + graph"  # the sweep follows the planner the graph serves
    assert blob["budget"]["success"].keys() == {"4", "16"}
