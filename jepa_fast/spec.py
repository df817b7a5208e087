"""What a dataset is, as the model and the probe need to know it: the ``DataSpec``.

A store describes its frames (channels, size, which channels are static over an episode, their value
statistics), its actions (size) and its probe targets (names); the trainer builds the model from the
spec, and every checkpoint records it, so a model can be rebuilt and probed without the data at hand.
``TWO_ROOMS`` is the spec of the two-rooms data (and of checkpoints written before specs existed).

Flip rules say how a left-right or up-down flip of the frames transforms actions and targets, so that
augmentation keeps the physics true: ``negate`` lists the action components that change sign (a
displacement along the flipped axis), ``mirror_actions`` lists (action component, c) pairs that map
a -> c - a (an absolute position along it, e.g. PushT's target point), ``mirror`` lists (target component,
c) pairs that map t -> c - t (a position along it; c = 0 negates, e.g. the sine of an angle under a left-right
flip). A store without rules cannot be flipped. Their JSON form, in a store's attrs, a checkpoint and a
source's meta.json: {"lr": {"negate": [0], "mirror_actions": [[1, 512.0]], "mirror": [[0, 95.0]]}, "ud": ...}.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FlipRule:
    """How one flip (left-right or up-down) transforms actions and targets."""

    negate: tuple[int, ...] = ()
    """Action components that change sign."""
    mirror: tuple[tuple[int, float], ...] = ()
    """(target component, c): the target maps t -> c - t."""
    mirror_actions: tuple[tuple[int, float], ...] = ()
    """(action component, c): the action maps a -> c - a."""

    def to_json(self) -> dict:
        """The JSON form; ``mirror_actions`` only when there are some, so that rules without them (every store
        written before they existed) serialise to the same bytes."""
        d = {"negate": list(self.negate), "mirror": [list(m) for m in self.mirror]}
        if self.mirror_actions:
            d["mirror_actions"] = [list(m) for m in self.mirror_actions]
        return d

    @staticmethod
    def from_json(d: dict) -> FlipRule:
        """The rule of its ``to_json`` form (unchecked: ``flips_from_json`` checks a user's file)."""
        return FlipRule(tuple(int(i) for i in d.get("negate", ())),
                        tuple((int(k), float(c)) for k, c in d.get("mirror", ())),
                        tuple((int(k), float(c)) for k, c in d.get("mirror_actions", ())))


def flips_to_json(flips: dict[str, FlipRule]) -> dict:
    """{'lr'/'ud': rule} in JSON form."""
    return {k: r.to_json() for k, r in flips.items()}


@dataclass(frozen=True)
class DataSpec:
    """The shape and meaning of a dataset's frames, actions and targets."""

    channels: int = 2
    height: int = 65
    width: int = 65
    action_size: int = 2
    channel_names: tuple[str, ...] = ("agent", "walls")
    static_channels: tuple[bool, ...] = (False, True)
    """Channels identical in every frame of every episode (two-rooms: the walls): encoded once per window."""
    target_names: tuple[str, ...] = ("agent_x", "agent_y")
    """Per-frame probe targets (none: an empty tuple)."""
    value_mean: tuple[float, ...] = ()
    """Per-channel mean of the frames in raw value units (the store's statistics; empty: unknown)."""
    value_std: tuple[float, ...] = ()
    """Per-channel standard deviation of the frames in raw value units."""
    action_mean: tuple[float, ...] = ()
    """Per-component mean of the actions (the store's statistics; empty: unknown)."""
    action_std: tuple[float, ...] = ()
    """Per-component standard deviation of the actions."""
    flips: dict[str, FlipRule] = field(default_factory=dict)
    """'lr' and/or 'ud' -> FlipRule; a flip without a rule is not allowed on this data."""
    protocol: str = "two-rooms"
    """'two-rooms': the course project's data, probed with its original protocol and constants;
    'generic': anything else (targets normalised with the probe-train split's statistics)."""

    def __post_init__(self) -> None:
        from jepa_fast.errors import JepaFastError

        C = self.channels
        if not 1 <= C <= 4:
            raise JepaFastError(f"data spec: {C} channels; frames need 1 to 4 channels (C in (..., C, H, W))")
        for name in ("channel_names", "static_channels"):
            if len(getattr(self, name)) != C:
                raise JepaFastError(f"data spec: {name} has {len(getattr(self, name))} entries for {C} channels")
        for name in ("value_mean", "value_std"):
            if getattr(self, name) and len(getattr(self, name)) != C:
                raise JepaFastError(f"data spec: {name} has {len(getattr(self, name))} entries for {C} channels")
        if self.action_size < 1:
            raise JepaFastError(f"data spec: action size {self.action_size}; actions need >= 1 component")
        for name in ("action_mean", "action_std"):
            if getattr(self, name) and len(getattr(self, name)) != self.action_size:
                raise JepaFastError(f"data spec: {name} has {len(getattr(self, name))} entries for actions of size "
                                    f"{self.action_size}")
        if self.protocol not in ("two-rooms", "generic"):
            raise JepaFastError(f"data spec: protocol {self.protocol!r}: two-rooms or generic")

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["flips"] = flips_to_json(self.flips)
        return d

    @staticmethod
    def from_dict(d: dict | None) -> DataSpec:
        """The spec of its ``to_dict`` form; None (a checkpoint from before specs) is the two-rooms spec."""
        if d is None:
            return TWO_ROOMS
        d = dict(d)
        flips = {k: FlipRule.from_json(r) for k, r in (d.pop("flips", None) or {}).items()}
        known = {f.name for f in dataclasses.fields(DataSpec)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return DataSpec(**kw, flips=flips)


def flips_from_json(d, action_size: int, n_targets: int, where: str) -> dict[str, FlipRule]:
    """Flip rules from their JSON form ({"lr": {"negate": [0], "mirror_actions": [[1, 512.0]], "mirror": [[0, 95.0]]},
    "ud": ...}), checked against the action size and the number of target components (``check_flips``); ``where``
    names the file in errors."""
    from jepa_fast.errors import JepaFastError

    hint = ('expected {"lr": {"negate": [action components], "mirror_actions": [[action component, c], ...], '
            '"mirror": [[target component, c], ...]}, "ud": ...}; a mirror maps v -> c - v')
    if not isinstance(d, dict) or not set(d) <= {"lr", "ud"}:
        raise JepaFastError(f"{where}: flips: {hint}")
    out = {}
    for name, rule in d.items():
        if not isinstance(rule, dict) or not set(rule) <= {"negate", "mirror", "mirror_actions"}:
            raise JepaFastError(f"{where}: flips.{name}: {hint}")
        try:
            out[name] = FlipRule.from_json(rule)
        except (TypeError, ValueError):
            raise JepaFastError(f"{where}: flips.{name}: {hint}") from None
    check_flips(out, action_size, n_targets, where)
    return out


def check_flips(flips: dict[str, FlipRule], action_size: int, n_targets: int, where: str) -> None:
    """Refuse, in one line naming ``where``, flip rules that do not fit data of ``action_size``-d actions and
    ``n_targets`` target components: components out of range or named twice, centres that are not finite."""
    import math

    from jepa_fast.errors import JepaFastError

    for name, r in flips.items():
        for key, pairs in (("mirror", r.mirror), ("mirror_actions", r.mirror_actions)):
            if not all(math.isfinite(c) for _, c in pairs):
                raise JepaFastError(f"{where}: flips.{name}.{key}: every c must be a finite number")
        actions = [*r.negate, *(k for k, _ in r.mirror_actions)]
        if any(not 0 <= i < action_size for i in actions):
            raise JepaFastError(f"{where}: flips.{name}: action components {actions} named in negate/mirror_actions; "
                                f"this data's are 0..{action_size - 1}")
        if len(set(actions)) != len(actions):
            raise JepaFastError(f"{where}: flips.{name}: an action component is named twice in negate/mirror_actions; "
                                "each component changes one way")
        targets = [k for k, _ in r.mirror]
        if targets and not n_targets:
            raise JepaFastError(f"{where}: flips.{name}.mirror: this data has no targets to mirror; give it targets or "
                                "drop the mirror")
        if any(not 0 <= k < n_targets for k in targets):
            raise JepaFastError(f"{where}: flips.{name}.mirror: target components are 0..{n_targets - 1}")
        if len(set(targets)) != len(targets):
            raise JepaFastError(f"{where}: flips.{name}.mirror: a target component is named twice")


def two_rooms_flips(size: int) -> dict[str, FlipRule]:
    """Two-rooms: a flip negates the action component along its axis and mirrors the location about it."""
    return {"lr": FlipRule(negate=(0,), mirror=((0, float(size - 1)),)),
            "ud": FlipRule(negate=(1,), mirror=((1, float(size - 1)),))}


TWO_ROOMS = DataSpec(flips=two_rooms_flips(65))
"""The course project's data: agent and walls channels (the walls static), 65x65, (dx, dy) actions, the
agent's (x, y) as targets, flips that keep the physics true."""
