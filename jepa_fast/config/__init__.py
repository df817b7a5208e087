"""Typed configuration: one dataclass per component, validated in ``__post_init__``, plus presets.

    base.py   ConfigError, validation helpers, dict <-> dataclass, --set overrides, flat_config
    sim.py    SimConfig, the splits, DatasetConfig and the dataset presets       (jepa_fast/sim)
    run.py    AugmentConfig, DataConfig, ModelConfig, LossConfig, TrainConfig, RunConfig and the run presets
    jobs.py   PackConfig (jepa_fast/data/pack.py), ProbeConfig (jepa_fast/probe.py), PlanConfig (jepa_fast/plan)

Precedence everywhere: dataclass defaults < preset < named command-line flags < ``--set``. Every field
has a one-line docstring (the string literal below it). A bad value raises ``ConfigError`` with a
message that names the field and says what is allowed, never a traceback from deep inside a library.
The names below are the public ones; import them from ``jepa_fast.config``.
"""

from jepa_fast.config.base import ConfigError, apply_overrides, flat_config, from_dict, set_field, to_dict
from jepa_fast.config.jobs import PackConfig, PlanConfig, ProbeConfig
from jepa_fast.config.run import (
    AUGMENT_PRESETS,
    MODEL_PRESETS,
    AugmentConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    model_preset,
    resolve,
    run_config_from_dict,
    run_preset,
)
from jepa_fast.config.sim import (
    DATASET_PRESETS,
    SPLIT_KIND,
    SPLITS,
    DatasetConfig,
    SimConfig,
    dataset_preset,
)

__all__ = [
    "AUGMENT_PRESETS", "DATASET_PRESETS", "MODEL_PRESETS", "SPLITS", "SPLIT_KIND", "AugmentConfig", "ConfigError",
    "DataConfig", "DatasetConfig", "LossConfig", "ModelConfig", "PackConfig", "PlanConfig", "ProbeConfig", "RunConfig",
    "SimConfig", "TrainConfig", "apply_overrides", "dataset_preset", "flat_config", "from_dict", "model_preset",
    "resolve", "run_config_from_dict", "run_preset", "set_field", "to_dict",
]
