"""What every config shares: the error type, validation helpers, and the generic dict/CLI machinery.

* ``to_dict`` / ``from_dict``: a nested config dataclass to JSON-ready dicts and back, for any
  dataclass (the field types say how: nested dataclasses, tuples from JSON lists);
* ``set_field`` / ``apply_overrides``: ``--set section.field=value``, parsed to the field's type;
* ``flat_config``: 'section.field' scalars (TensorBoard hparams, resume checks).
"""

from __future__ import annotations

import dataclasses
import typing

from jepa_fast.errors import JepaFastError


class ConfigError(JepaFastError, ValueError):
    """A configuration value is invalid. The message names the field and the fix."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def at_least(cfg, section: str, minimum: float, *names: str) -> None:
    """Each named field of ``cfg`` is >= minimum (one message naming the field otherwise)."""
    for n in names:
        v = getattr(cfg, n)
        check(v >= minimum, f"{section}.{n}={v!r}: must be >= {minimum}")


def one_of(cfg, section: str, name: str, options: tuple) -> None:
    v = getattr(cfg, name)
    check(v in options, f"{section}.{name}={v!r}: use {', '.join(map(str, options))}")


def probability(cfg, section: str, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        check(0.0 <= v <= 1.0, f"{section}.{n}={v}: a probability must be in [0, 1]")


# ---------------------------------------------------------------------------------------------
# dicts


def to_dict(cfg) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict, where: str = "", retired: frozenset[str] = frozenset()):
    """The dataclass ``cls`` from its ``to_dict`` form, recursively; validated by each ``__post_init__``.

    Missing fields take their defaults; an unknown field is a ConfigError naming it, except the dotted
    names in ``retired`` (fields that older versions wrote), which are dropped.
    """
    label = where.rstrip(".") or cls.__name__
    if not isinstance(d, dict):
        raise ConfigError(f"{label}: expected a mapping of fields, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in names and f"{where}{key}" not in retired:
            raise ConfigError(f"{where}{key}: unknown field (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, t = d[f.name], hints[f.name]
        if dataclasses.is_dataclass(t):
            v = from_dict(t, v, f"{where}{f.name}.", retired)
        elif typing.get_origin(t) is tuple and isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except TypeError as e:  # e.g. a value of the wrong type that __post_init__ compares
        raise ConfigError(f"{label}: {e}") from None


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested config dict as flat 'section.field' scalars."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


# ---------------------------------------------------------------------------------------------
# --set section.field=value


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
