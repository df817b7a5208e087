"""The benches measure what they claim: identical timed steps on both sides of a comparison."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_bench_train_times_jepa_fast_over_exactly_the_reference_steps(capsys):
    from bench import bench_train

    fig = bench_train.main(["--n", "64", "--batch", "8", "--warmup", "2", "--steps", "6", "--window", "2",
                            "--rounds", "1", "--precision", "auto", "--compile", "off",
                            "--variant", "nchw=train.channels_last=false"])
    auto = fig["auto_precision"]
    assert fig["reference_timed_steps"] == fig[f"jepa_fast_{auto}_timed_steps"] == 6
    # each loop ran in its own fresh process: one loop's allocator, threads or compile state cannot reach another
    assert fig["loop_processes"] == 3
    assert fig[f"jepa_fast_{auto}_window_fps_min"] <= fig[f"jepa_fast_{auto}_window_fps_median"] \
        <= fig[f"jepa_fast_{auto}_window_fps_max"]
    # the headline is total frames / total seconds over those steps, not one window's rate
    assert fig["jepa_fast_vs_reference"] == pytest.approx(fig[f"jepa_fast_{auto}_fps"] / fig["reference_fps"], rel=0.01)
    # a variant is timed over the same steps, with its own ratio
    assert fig["jepa_fast_nchw_timed_steps"] == 6
    nchw = fig["jepa_fast_nchw_fps"] / fig["reference_fps"]
    assert fig["jepa_fast_nchw_vs_reference"] == pytest.approx(nchw, rel=0.01)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("{") and '"jepa_fast_vs_reference"' in out[-1]
    assert any(line.startswith("jepa-fast nchw (") and "train.channels_last=false" in line for line in out)


def test_bench_train_refuses_windows_that_do_not_divide_the_steps():
    from bench import bench_train

    with pytest.raises(SystemExit):
        bench_train.main(["--steps", "7", "--window", "2"])
    for bad in ("bf16=train.compile=on", "x=train.nope=1", "Bad=train.compile=on", "x"):  # checked before any run
        with pytest.raises(SystemExit):
            bench_train.main(["--variant", bad])


def test_ladder_rungs_resume_are_read_back_and_the_goal_is_the_smallest_budget_that_beats_all(tiny_packed, tmp_path):
    import json

    import torch

    from bench import ladder
    from jepa_fast import checkpoint as ckpt
    from jepa_fast.data.split import SplitData
    from jepa_fast.schedule import frame_label

    T = SplitData(tiny_packed / "train.zarr").T
    frames = 16 * T * 4  # 4 steps of the tiny preset's batch 16
    cpu = torch.device("cpu")
    out = tmp_path / "runs" / f"tiny-{frame_label(frames)}-s0"
    # an interrupted rung: a checkpoint at step 2 of 4, no rung.json
    from jepa_fast.config import apply_overrides, run_preset
    from jepa_fast.train import train

    run = apply_overrides(run_preset("tiny"), ["train.seed=0", "data.seed=0", "train.max_steps=-1",
                                               f"train.frames={frames}", "train.save_every=100"])
    train(run, tiny_packed, out, stop_at_step=2, progress=False)
    rec = ladder.rung(tiny_packed, tmp_path, "tiny", frames, 0, cpu)
    assert rec["steps"] == 4 and rec["frames"] == frames  # resumed to the budget, not restarted past it
    assert ckpt.load(ckpt.latest(out), 0)[0]["step"] == 4
    assert json.loads((out / "rung.json").read_text()) == rec
    (out / "rung.json").write_text(json.dumps({**rec, "probe_normal": -1.0}))
    assert ladder.rung(tiny_packed, tmp_path, "tiny", frames, 0, cpu)["probe_normal"] == -1.0  # read back
    # a rung trained before its preset changed is not passed off as the new preset's
    (out / "rung.json").write_text(json.dumps({**rec, "config_sha": "0" * 12}))
    from jepa_fast.errors import JepaFastError

    with pytest.raises(JepaFastError, match="another configuration of preset 'tiny'"):
        ladder.rung(tiny_packed, tmp_path, "tiny", frames, 0, cpu)

    pub = {"probe_normal": 4.0, "probe_wall": 6.0, "wall_other": 4.0, "expert": 8.0}

    def r(budget, seed, *vals):
        return {"preset": "ours", "budget": budget, "seed": seed, "train_s": 1.0, **dict(zip(pub, vals))}

    recs = [r(1_000_000, 0, 5, 7, 9, 20), r(1_000_000, 1, 5, 7, 9, 20),  # worst: expert at 2.5x
            r(2_500_000, 0, 3, 5, 3, 9), r(2_500_000, 1, 3, 5, 3, 7),  # mean expert 8.0: not below
            r(3_750_000, 0, 3, 5, 3, 7), r(30_000_000, 0, 1, 1, 1, 1)]  # 30M is over the tenth: not counted
    assert ladder.goal(recs, pub) == {"met": True, "budget": 3_750_000, "worst_ratio": 0.875, "worst_set": "expert"}
    closest = ladder.goal(recs[:4], pub)
    assert not closest["met"] and closest["budget"] == 2_500_000 and closest["worst_set"] == "expert"
    rows, fig = ladder.summarise(recs[:2], pub)
    assert fig["published_vs_ours_1M_probe_normal"] == 0.8 and rows[0]["seeds"] == 2
    ladder.plot(recs, pub, tmp_path / "ladder.png")
    assert (tmp_path / "ladder.png").stat().st_size > 10_000


def test_bench_plan_times_both_modes_on_the_same_episodes(tiny_run_ours, capsys):
    from bench import bench_plan

    fig = bench_plan.main(["--run", str(tiny_run_ours), "--episodes", "2", "--max-steps", "4", "--samples", "8"])
    out = capsys.readouterr().out
    assert "batched" in out and "one at a time" in out and out.strip().splitlines()[-1].startswith("{")
    assert fig["episodes"] == 2 and fig["batched_vs_sequential"] > 0 and fig["max_path_difference_px"] < 1e-3


def test_pusht_angle_contrastive_loss_rewards_grouping_by_episode_and_both_objectives_return_frozen_encoders():
    """multi_positive_nce is low when frames sit with their episode's other frames and high when the labels are
    shuffled; it equals the closed form for two groups of two; the autoencoder and contrastive objectives of
    bench/pusht_angle.py run on tiny seeded data and return frozen encoders of the right width."""
    import math

    import torch

    from bench.pusht_angle import autoencoder, contrastive, masked_latent, multi_positive_nce

    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    labels = torch.arange(8).repeat_interleave(4)
    z = torch.nn.functional.normalize(centres[labels] + 0.05 * torch.randn(32, 16), dim=1)
    grouped = multi_positive_nce(z, labels, 0.1)
    shuffled = multi_positive_nce(z, labels[torch.randperm(32)], 0.1)
    assert grouped < 0.5 * shuffled
    # two orthogonal pairs, tau 1: each row has one positive (cos 1) and two negatives (cos 0)
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    closed = -math.log(math.e / (math.e + 2))
    assert multi_positive_nce(e, torch.tensor([0, 0, 1, 1]), 1.0).item() == pytest.approx(closed, rel=1e-6)

    frames = torch.randint(0, 256, (6, 4, 3, 32, 32), dtype=torch.uint8)
    enc = contrastive((4, 8), frames, lambda b: b / 255, batch=4, per_episode=2, tau=0.1, steps=2, seed=0)
    assert not enc.training and enc(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    enc = autoencoder((4, 8), torch.rand(8, 3, 32, 32), size=12, steps=2, seed=0)
    assert not enc.training and enc(torch.rand(2, 3, 32, 32)).shape == (2, 128)

    enc = masked_latent((4, 8), torch.randn(8, 3, 32, 32), steps=2, seed=0, cells=3)
    assert not enc.training and enc(torch.rand(2, 3, 32, 32)).shape == (2, 8 * 16)
    with pytest.raises(ValueError, match="mask blocks of 9 cells do not fit the encoder's 8x8 grid"):
        masked_latent((4, 8), torch.randn(8, 3, 32, 32), steps=1, seed=0, cells=9)


def test_pusht_angle_masked_objective_learns_to_fill_in_the_blanked_cells():
    """Masked latent prediction on frames of two fixed patterns (plus noise): the predictor's error at the blanked
    cells falls well below its first steps' (the objective trains; it is not a no-op)."""
    import torch

    from bench.pusht_angle import masked_latent

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32).repeat(16, 1, 1, 1) + 0.05 * torch.randn(32, 3, 32, 32)
    losses = []
    masked_latent((4, 8), x, steps=80, seed=0, cells=2, losses=losses)
    assert len(losses) == 80
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses


@pytest.mark.parametrize("argv, message", [(["--ssl-batch", "2000"], "--ssl-batch 2000"),
                                           (["--per-episode", "30"], "--per-episode 30"),
                                           (["--tau", "0"], "--tau > 0"),
                                           (["--mask-cells", "7"], "--mask-cells 7")])
def test_pusht_angle_refuses_bad_arguments_in_one_line_before_any_work(monkeypatch, capsys, argv, message):
    from bench import pusht_angle

    monkeypatch.setattr("sys.argv", ["pusht_angle", *argv])
    monkeypatch.setattr(pusht_angle, "first_frames", lambda *a: pytest.fail("work started"))
    with pytest.raises(SystemExit):
        pusht_angle.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "".join(err)


def test_bench_pusht_trains_its_preset_with_the_flips_the_data_declares(episodes_raw, episodes_store, tmp_path):
    """bench_pusht trains ``ours-small`` (whose preset flips left-right) as ``jepa-fast train`` does: on a store
    without flip rules the flips are off (it trains instead of stopping at the loader's check), on one whose
    meta.json declares them (as PushT's recorder writes) they stay on."""
    import shutil

    from bench.bench_pusht import train_run
    from jepa_fast.data.pack import pack_split

    summary = train_run(episodes_store, tmp_path / "run", steps=1, seq_len=6, stride=6, idm_hidden=8)
    assert summary["step"] == 1 and summary["checkpoint"] is not None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["augment"]["flip_lr"] == 0.0

    shutil.copytree(episodes_raw, tmp_path / "raw")
    (tmp_path / "raw" / "meta.json").write_text(json.dumps({"flips": {"lr": {"negate": [0], "mirror": [[0, 23]]}}}))
    pack_split(tmp_path / "raw", tmp_path / "ruled" / "train.zarr", progress=False)
    summary = train_run(tmp_path / "ruled", tmp_path / "run2", steps=1, seq_len=6, stride=6, idm_hidden=8)
    assert summary["step"] == 1
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["data"]["augment"]["flip_lr"] == 0.5
