"""SIGTERM as a request to stop the training loop cleanly: finish the current step, save a checkpoint, exit.

With several processes the request is agreed at log cadence (one all-reduce of a flag), so every
process stops after the same step and the checkpoint is collective.
"""

from __future__ import annotations

import signal

import torch


class StopRequest:
    """Inside the block, SIGTERM sets ``requested`` instead of killing the process."""

    def __init__(self):
        self.requested = False
        self._prev = None

    def __enter__(self) -> StopRequest:
        self._prev = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._prev)

    def agreed(self, at_log: bool, world: int, device: torch.device) -> bool:
        """One process: the flag itself. Several: agree at log cadence (an all-reduce), so all stop together."""
        if world == 1:
            return self.requested
        if not at_log:
            return False
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())  # a host sync, at log cadence only
