"""The benches measure what they claim: identical timed steps on both sides of a comparison."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_bench_train_times_jepa_fast_over_exactly_the_reference_steps(capsys):
    from bench import bench_train

    fig = bench_train.main(["--n", "64", "--batch", "8", "--warmup", "2", "--steps", "6", "--window", "2",
                            "--rounds", "1", "--precision", "auto"])
    auto = fig["auto_precision"]
    assert fig["reference_timed_steps"] == fig[f"jepa_fast_{auto}_timed_steps"] == 6
    assert fig[f"jepa_fast_{auto}_window_fps_min"] <= fig[f"jepa_fast_{auto}_window_fps_median"] \
        <= fig[f"jepa_fast_{auto}_window_fps_max"]
    # the headline is total frames / total seconds over those steps, not one window's rate
    assert fig["jepa_fast_vs_reference"] == pytest.approx(fig[f"jepa_fast_{auto}_fps"] / fig["reference_fps"], rel=0.01)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("{") and '"jepa_fast_vs_reference"' in out[-1]


def test_bench_train_refuses_windows_that_do_not_divide_the_steps():
    from bench import bench_train

    with pytest.raises(SystemExit):
        bench_train.main(["--steps", "7", "--window", "2"])
