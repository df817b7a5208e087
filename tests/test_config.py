"""Configs: the generic dict <-> dataclass round trip, retired fields, one-line errors naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from jepa_fast.config import (
    AUGMENT_PRESETS,
    ConfigError,
    ModelConfig,
    ProbeConfig,
    RunConfig,
    from_dict,
    run_config_from_dict,
    run_preset,
    to_dict,
)
from jepa_fast.config.run import _run_presets


@pytest.mark.parametrize("name", sorted(_run_presets()))
def test_every_preset_round_trips_through_its_dict(name):
    run = dataclasses.replace(run_preset(name), data=dataclasses.replace(run_preset(name).data,
                                                                          augment=AUGMENT_PRESETS["full"]))
    back = run_config_from_dict(to_dict(run))
    assert back == run
    assert isinstance(back.model.encoder_widths, tuple) and isinstance(back.data.augment.brightness_range, tuple)


def test_one_preset_field_and_configs_written_before_still_read():
    assert "preset" not in {f.name for f in dataclasses.fields(ModelConfig)}
    d = to_dict(run_preset("ours"))
    d["model"]["preset"] = "ours"  # what earlier versions wrote
    assert run_config_from_dict(d) == run_preset("ours")


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["model"].update(bogus=1), "model.bogus: unknown field"),
    (lambda d: d["train"].update(lr=-1.0), "train.lr=-1.0: must be > 0"),
    (lambda d: d.update(data=[1, 2]), "data: expected a mapping"),
    (lambda d: d["data"]["augment"].update(flip_lr=2.0), "augment.flip_lr=2.0: a probability"),
])
def test_bad_dicts_name_the_field(mutate, needle):
    d = to_dict(run_preset("tiny"))
    mutate(d)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        run_config_from_dict(d)


def test_from_dict_works_for_any_config_dataclass():
    assert from_dict(ProbeConfig, {"epochs": 3}) == ProbeConfig(epochs=3)
    assert from_dict(RunConfig, {}) == RunConfig()
