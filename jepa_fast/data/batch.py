"""The Batch contract every loader delivers, and what loaders share to execute a plan: its flips on frames
(decoding straight into flipped order, or on the device) and on actions/locations.

A loader delivers uint8 frames, already flipped as the sampler decided, with actions and locations
transformed to match. Turning frames into model input (cast, per-channel scale, brightness, noise)
is elementwise work that the model does on the training device (``JEPA.encode_stored``, inside the
compiled step), where it fuses with the first convolution's input read instead of moving 4x the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from jepa_fast.data.reader import SplitData
from jepa_fast.data.sampler import Plan


@dataclass
class Batch:
    states: torch.Tensor  # (B, T, C, H, W) uint8 on the training device, flipped
    actions: torch.Tensor  # (B, T-1, 2) float32, flipped to match
    locations: torch.Tensor | None  # (B, T, 2) float32 when the split has them, flipped to match
    indices: torch.Tensor  # (B,) int64 trajectory indices in the split
    brightness: torch.Tensor  # (B,) float32 factor, 1 = none
    noise_std: torch.Tensor  # (B,) float32, 0 = none, in units of the channel maximum
    scale: torch.Tensor  # (C,) float32: value = uint8 x scale

    def __len__(self) -> int:
        return self.states.shape[0]


def flip_actions_locations(actions: np.ndarray, locations: np.ndarray | None, flip_lr: np.ndarray,
                           flip_ud: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply trajectory flips to actions (B, T-1, 2) and locations (B, T, 2): x -> size-1-x, dx -> -dx (lr),
    y -> size-1-y, dy -> -dy (ud). Returns new float32 arrays."""
    a = np.array(actions, dtype=np.float32)
    a[flip_lr, :, 0] *= -1
    a[flip_ud, :, 1] *= -1
    loc = None
    if locations is not None:
        loc = np.array(locations, dtype=np.float32)
        loc[flip_lr, :, 0] = (size - 1) - loc[flip_lr, :, 0]
        loc[flip_ud, :, 1] = (size - 1) - loc[flip_ud, :, 1]
    return a, loc


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
    """Actions (B, T-1, 2) and locations (B, T, 2) or None of a plan's trajectories, flipped as the plan says."""
    idx = plan.indices
    loc = None if data.locations is None else data.locations[idx]
    return flip_actions_locations(data.actions[idx], loc, plan.flip_lr, plan.flip_ud, data.W)


def decode_flipped(data: SplitData, indices: np.ndarray, out: np.ndarray, flip_lr: np.ndarray,
                   flip_ud: np.ndarray) -> np.ndarray:
    """Decode trajectories ``indices`` into out (len(indices), T, C, H, W) uint8, flipped as the masks say.

    A flipped trajectory is decoded into a cache-resident scratch buffer and copied out reversed
    (one pass over the output instead of decode + a separate flip pass).
    """
    tmp = np.empty(data.frame_shape, dtype=np.uint8)
    for j, i in enumerate(indices):
        if not (flip_lr[j] or flip_ud[j]):
            data.reader.decode(int(i), out[j])
            continue
        np.copyto(out[j], flipped(data.reader.decode(int(i), tmp), flip_lr[j], flip_ud[j]))
    return out
