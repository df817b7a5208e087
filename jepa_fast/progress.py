"""The one progress bar of long data jobs (generate, pack, verify): frames and frames/s."""

from __future__ import annotations


def frame_bar(total: int, enabled: bool, desc: str):
    """The frames/s progress bar of generate, pack and verify."""
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", unit_scale=True, disable=not enabled, desc=desc, dynamic_ncols=True)
