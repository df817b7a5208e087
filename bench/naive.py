"""The naive baseline, defined once: what a user of the reference project runs to load data.

``np.load(states.npy, mmap_mode='r')`` of the float32 raw files and a Dataset whose ``__getitem__``
does ``torch.from_numpy(states[i]).float().to(device)`` (same for actions), fed to
``DataLoader(batch_size, shuffle=True, drop_last=True)``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch


class NaiveDataset(torch.utils.data.Dataset):
    def __init__(self, split: Path, device: torch.device):
        self.states = np.load(Path(split) / "states.npy", mmap_mode="r")
        self.actions = np.load(Path(split) / "actions.npy", mmap_mode="r")
        self.device = device

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "The given NumPy array is not writable": a read-only memmap
            return (torch.from_numpy(self.states[i]).float().to(self.device),
                    torch.from_numpy(self.actions[i]).float().to(self.device))


def naive_loader(split: Path, batch_size: int, device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(NaiveDataset(split, device), batch_size=batch_size, shuffle=True,
                                       drop_last=True)


def drop_caches() -> bool:
    """Drop the OS page cache (root only) so the next read comes from disk; False where not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
