"""The run config, its presets, and the command-line override machinery, in one place.

Precedence, everywhere: dataclass defaults < preset < named command-line flags (``--lr``, ``--augment``,
...) < ``--set section.field=value``. ``resolve`` applies it; the saved ``config.json`` of a run
holds the result, and ``run_config_from_dict`` reads it back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from jepa_fast.config.base import ConfigError, check
from jepa_fast.config.data import AugmentConfig, DataConfig
from jepa_fast.config.model import LossConfig, ModelConfig, model_preset
from jepa_fast.config.train import TrainConfig


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved resolved in the run folder and in every checkpoint."""

    preset: str = "reference"
    """The preset the values started from."""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _run_presets() -> dict[str, RunConfig]:
    # the public course project's recipe: AdamW 5e-4 / wd 1e-4, batch 512, 15 epochs, cosine to 0.1x,
    # clip 1.0, EMA 0.996, loss weights 5/5/1/1, teacher forcing
    ref = RunConfig(preset="reference", model=model_preset("reference"), data=DataConfig(batch_size=512))
    # ours: the same model size and recipe, but the predictor learns residual steps and is trained by
    # rollout, the way the probe uses it (bench/results/quality_*: better on all four probe sets)
    ours = dataclasses.replace(ref, preset="ours", model=model_preset("ours"),
                               train=dataclasses.replace(ref.train, prediction="rollout"))
    small_data = DataConfig(batch_size=64)
    small_train = TrainConfig(epochs=6, lr=1e-3, log_every=10, save_every=-1)
    return {
        "reference": ref,
        "ours": ours,
        # a few minutes on 2 CPU cores (the demo and the CPU quality benchmark)
        "reference-small": dataclasses.replace(ref, preset="reference-small", data=small_data, train=small_train),
        "ours-small": dataclasses.replace(ours, preset="ours-small", data=small_data,
                                          train=dataclasses.replace(small_train, prediction="rollout")),
        # tests: seconds
        "tiny": dataclasses.replace(
            ref, preset="tiny", data=DataConfig(batch_size=16),
            train=TrainConfig(epochs=1, max_steps=6, lr=1e-3, log_every=2, save_every=-1)),
    }


def run_preset(name: str) -> RunConfig:
    presets = _run_presets()
    check(name in presets, f"preset {name!r}: unknown; choose from {', '.join(presets)}")
    return presets[name]



def _parse_value(text: str, current):
    """Parse a command-line string into the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{text!r} is not a boolean (use true/false)")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, tuple):
        return tuple(type(current[0])(v) if current else v for v in text.split(","))
    return text


def set_field(cfg, key: str, value=None, text: str | None = None):
    """A copy of ``cfg`` with the dotted field ``key`` set to ``value`` (or ``text`` parsed to its type).

    The copy is validated by the section's ``__post_init__``; an unknown field names the known ones.
    """
    return _replace_path(cfg, key.strip().split("."), key, value, text)


def _replace_path(obj, path: list[str], key: str, value, text: str | None):
    name = path[0]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        known = ", ".join(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else ""
        raise ConfigError(f"--set {key}: unknown field {name!r} (known here: {known})")
    current = getattr(obj, name)
    if len(path) > 1:
        return dataclasses.replace(obj, **{name: _replace_path(current, path[1:], key, value, text)})
    if text is not None:
        try:
            value = _parse_value(text, current)
        except (ValueError, ConfigError) as e:
            raise ConfigError(f"--set {key}={text}: {e}") from None
    return dataclasses.replace(obj, **{name: value})


def apply_overrides(cfg, overrides: list[str]):
    """Apply ``section.field=value`` overrides (e.g. ``train.lr=1e-3``, ``data.augment.flip_lr=0.5``) in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        key, text = item.split("=", 1)
        cfg = set_field(cfg, key, text=text.strip())
    return cfg


def resolve(base: RunConfig, flags: dict | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The run config by the documented precedence: ``base`` (a preset, or a resumed run's config) <
    ``flags`` (dotted key -> typed value, from named command-line flags) < ``overrides`` (``--set``)."""
    run = base
    for key, value in (flags or {}).items():
        run = set_field(run, key, value)
    return apply_overrides(run, list(overrides or []))


def run_config_from_dict(d: dict) -> RunConfig:
    """Rebuild a RunConfig from its to_dict() form (checkpoints, config.json)."""
    def tup(x):
        return tuple(x) if isinstance(x, list) else x

    aug = AugmentConfig(**{k: tup(v) for k, v in d["data"]["augment"].items()})
    data = DataConfig(**{**d["data"], "augment": aug})
    model = ModelConfig(**{k: tup(v) for k, v in d["model"].items()})
    return RunConfig(preset=d.get("preset", "custom"), model=model, loss=LossConfig(**d["loss"]), data=data,
                     train=TrainConfig(**d["train"]))
