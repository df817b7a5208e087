"""What every config file shares: the error type, the validation helper, the dict form."""

from __future__ import annotations

import dataclasses

from jepa_fast.errors import JepaFastError


class ConfigError(JepaFastError, ValueError):
    """A configuration value is invalid. The message names the field and the fix."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)



def to_dict(cfg) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)
