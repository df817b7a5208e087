"""The progress bars: frames and frames/s for the long data jobs (generate, pack, verify), steps for training."""

from __future__ import annotations


def frame_bar(total: int, enabled: bool, desc: str):
    """The frames/s progress bar of generate, pack and verify."""
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", unit_scale=True, disable=not enabled, desc=desc, dynamic_ncols=True)


def step_bar(total: int, initial: int):
    """The training loop's steps/s bar (starting at ``initial`` on resume)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")
