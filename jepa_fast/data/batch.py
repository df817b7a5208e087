"""The Batch contract every loader delivers, and what loaders share to execute a plan: its flips on frames
(decoding straight into flipped order, or on the device) and on actions/targets (the data's flip rules).

A loader delivers uint8 frames, already flipped as the sampler decided, with actions and targets
transformed to match. Turning frames into model input (cast, per-channel scale, brightness, noise)
is elementwise work that the model does on the training device (``JEPA.encode_stored``, inside the
compiled step), where it fuses with the first convolution's input read instead of moving 4x the bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from jepa_fast.data.sampler import Plan
from jepa_fast.data.split import SplitData
from jepa_fast.errors import JepaFastError
from jepa_fast.spec import FlipRule


@dataclass
class Batch:
    states: torch.Tensor  # (B, T, C, H, W) uint8 on the training device, flipped
    actions: torch.Tensor  # (B, T-1, A) float32, flipped to match
    targets: torch.Tensor | None  # (B, T, K) float32 when the split has them, flipped to match
    indices: torch.Tensor  # (B,) int64 window indices in the split
    brightness: torch.Tensor  # (B,) float32 factor, 1 = none
    noise_std: torch.Tensor  # (B,) float32, 0 = none, in units of the channel maximum
    scale: torch.Tensor  # (C,) float32: value = uint8 x scale

    def __len__(self) -> int:
        return self.states.shape[0]


def flip_actions_targets(actions: np.ndarray, targets: np.ndarray | None, flip_lr: np.ndarray, flip_ud: np.ndarray,
                         flips: dict[str, FlipRule]) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply window flips to actions (B, T-1, A) and targets (B, T, K) by the data's rules: each flip negates
    its ``negate`` action components, mirrors its ``mirror_actions`` ones (a -> c - a) and its target components
    (t -> c - t). Returns new float32 arrays.
    Two-rooms: lr negates dx and maps x -> W-1-x; ud negates dy and maps y -> H-1-y."""
    a = np.array(actions, dtype=np.float32)
    t = None if targets is None else np.array(targets, dtype=np.float32)
    for name, mask in (("lr", flip_lr), ("ud", flip_ud)):
        if not mask.any():
            continue
        rule = flips[name]
        for c in rule.negate:
            a[mask, :, c] *= -1
        for c, center in rule.mirror_actions:
            a[mask, :, c] = center - a[mask, :, c]
        if t is not None:
            for c, center in rule.mirror:
                t[mask, :, c] = center - t[mask, :, c]
    return a, t


def flipped(frames: np.ndarray, lr: bool, ud: bool) -> np.ndarray:
    """A view of one trajectory's frames (T, C, H, W) flipped left-right (W) and/or up-down (H)."""
    if lr:
        frames = frames[..., ::-1]
    if ud:
        frames = frames[..., ::-1, :]
    return frames


def flip_on_device(states: torch.Tensor, flip_lr: torch.Tensor, flip_ud: torch.Tensor) -> torch.Tensor:
    """states (B, T, C, H, W) flipped per trajectory where the masks (B,) say, with no host sync."""
    lr = flip_lr.to(torch.bool).view(-1, 1, 1, 1, 1)
    ud = flip_ud.to(torch.bool).view(-1, 1, 1, 1, 1)
    states = torch.where(lr, states.flip(-1), states)
    return torch.where(ud, states.flip(-2), states)


def plan_arrays(data: SplitData, plan: Plan) -> tuple[np.ndarray, np.ndarray | None]:
    """Actions (B, T-1, A) and targets (B, T, K) or None of a plan's windows, flipped as the plan says."""
    idx = plan.indices
    return flip_actions_targets(data.window_actions(idx), data.window_targets(idx), plan.flip_lr, plan.flip_ud,
                                data.spec.flips)


def check_flips(data: SplitData, augment) -> None:
    """Flips are allowed only on data that says how they transform its actions and targets."""
    for name, p in (("lr", augment.flip_lr), ("ud", augment.flip_ud)):
        if p > 0 and name not in data.spec.flips:
            raise JepaFastError(f"data.augment.flip_{name}={p}: {data.path} declares no {name} flip rule (how a flip "
                                "changes its actions and targets), so flipping would break them; set it to 0")


def undeclared_flips_off(augment, spec) -> tuple:
    """(augment with every flip the data declares no rule for set to 0, the names of those flips): how a
    preset's flips (``ours``: left-right, for two-rooms) meet data that has no flip rules. A flip asked for
    explicitly is refused instead (``check_flips``)."""
    off = [n for n in ("lr", "ud") if getattr(augment, f"flip_{n}") > 0 and n not in spec.flips]
    return dataclasses.replace(augment, **{f"flip_{n}": 0.0 for n in off}), off


def decode_flipped(data: SplitData, indices: np.ndarray, out: np.ndarray, flip_lr: np.ndarray,
                   flip_ud: np.ndarray) -> np.ndarray:
    """Decode windows ``indices`` into out (len(indices), T, C, H, W) uint8, flipped as the masks say.

    A flipped window is decoded into a cache-resident scratch buffer and copied out reversed
    (one pass over the output instead of decode + a separate flip pass).
    """
    tmp = np.empty(data.frame_shape, dtype=np.uint8)
    for j, i in enumerate(indices):
        if not (flip_lr[j] or flip_ud[j]):
            data.decode_window(int(i), out[j])
            continue
        np.copyto(out[j], flipped(data.decode_window(int(i), tmp), flip_lr[j], flip_ud[j]))
    return out
