"""Typed configuration: one dataclass per component, validated in ``__post_init__``, plus presets.

One file per concern:

    base.py   ConfigError, the validation helper, to_dict
    sim.py    SimConfig, the splits, DatasetConfig and the dataset presets       (jepa_fast/sim)
    data.py   PackConfig, AugmentConfig, DataConfig                             (jepa_fast/data)
    model.py  ModelConfig and its presets, LossConfig                           (model.py, loss.py)
    train.py  TrainConfig                                                       (train.py)
    probe.py  ProbeConfig                                                       (probe.py)
    run.py    RunConfig, the run presets, the override machinery and its precedence

Precedence everywhere: dataclass defaults < preset < named command-line flags < ``--set``. Every field
has a one-line docstring (the string literal below it). A bad value raises ``ConfigError`` with a
message that names the field and says what is allowed, never a traceback from deep inside a library.
The names below are the public ones; import them from ``jepa_fast.config``.
"""

from jepa_fast.config.base import ConfigError, to_dict
from jepa_fast.config.data import AUGMENT_PRESETS, AugmentConfig, DataConfig, PackConfig
from jepa_fast.config.model import MODEL_PRESETS, LossConfig, ModelConfig, model_preset
from jepa_fast.config.probe import ProbeConfig
from jepa_fast.config.run import RunConfig, apply_overrides, resolve, run_config_from_dict, run_preset, set_field
from jepa_fast.config.sim import (
    DATASET_PRESETS,
    SPLIT_KIND,
    SPLITS,
    DatasetConfig,
    SimConfig,
    dataset_preset,
)
from jepa_fast.config.train import TrainConfig

__all__ = [
    "AUGMENT_PRESETS", "DATASET_PRESETS", "MODEL_PRESETS", "SPLITS", "SPLIT_KIND", "AugmentConfig", "ConfigError",
    "DataConfig", "DatasetConfig", "LossConfig", "ModelConfig", "PackConfig", "ProbeConfig", "RunConfig",
    "SimConfig", "TrainConfig", "apply_overrides", "dataset_preset", "model_preset", "resolve",
    "run_config_from_dict", "run_preset", "set_field", "to_dict",
]
