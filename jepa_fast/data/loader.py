"""Loader selection and the plain-torch loader (the correctness reference and the CPU default).

``build_loader`` picks DALI when it is importable (``data.loader='auto'``), else the torch loader,
and logs the choice. Both consume the same ``Sampler`` plans and give identical ``Batch``es.

The torch loader has two modes:
* ``device``: the whole split is decoded once into one uint8 tensor on the training device; a batch
  is an ``index_select`` plus flips there (on a GPU: no host work per step at all);
* ``host``: each batch is decoded from the in-RAM compressed store on the CPU (numcodecs LZ4 writes
  straight into a pinned buffer), flipped, and copied to the device asynchronously.
A background thread prepares ``prefetch`` batches ahead either way, so the step never waits on it
unless the loader is slower than the step.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from jepa_fast.config import DataConfig
from jepa_fast.data.batch import Batch, check_flips, decode_flipped, flip_on_device, flipped, plan_arrays
from jepa_fast.data.sampler import Plan, Sampler
from jepa_fast.data.split import SplitData
from jepa_fast.errors import JepaFastError
from jepa_fast.hardware import dali_extra, resolve_workers

log = logging.getLogger(__name__)


def make_batch(plan: Plan, states: torch.Tensor, actions: np.ndarray, targets: np.ndarray | None,
               scale: torch.Tensor, device: torch.device) -> Batch:
    """The Batch of a plan; on CUDA the small arrays go through pinned memory with non-blocking copies
    (a pageable copy would block the host until the device has caught up). ``scale`` is already on device."""
    cuda = device.type == "cuda"

    def put(a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.pin_memory().to(device, non_blocking=True) if cuda else t

    return Batch(states=states, actions=put(actions), targets=None if targets is None else put(targets),
                 indices=put(plan.indices.astype(np.int64)), brightness=put(plan.brightness),
                 noise_std=put(plan.noise_std), scale=scale)


# ---------------------------------------------------------------------------------------------
# background prefetch


class _Prefetcher:
    """Runs ``produce(plan)`` for each plan on a background thread, ``depth`` ahead; errors re-raise here."""

    _DONE = object()

    def __init__(self, plans: Iterator[Plan], produce: Callable[[Plan], object], depth: int):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(plans, produce), daemon=True, name="jepa-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, plans, produce) -> None:
        try:
            for plan in plans:
                if not self._put(produce(plan)):
                    return
            self._put(self._DONE)
        except BaseException as e:  # surfaces in the consumer, never a silent hang
            self._put(e)

    def __iter__(self):
        try:
            while True:
                item = self._q.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# the torch fallback loader


def _gather(src: np.ndarray, starts: np.ndarray, T: int, out: np.ndarray, flip_lr: np.ndarray,
            flip_ud: np.ndarray) -> None:
    """out[j] = src[starts[j]:starts[j] + T] (frames of the resident split, flat), flipped as asked (numpy copies
    release the GIL)."""
    for j, s in enumerate(starts):
        np.copyto(out[j], flipped(src[s:s + T], flip_lr[j], flip_ud[j]))


class TorchLoader:
    """The plain-torch loader: the correctness reference for DALI and the fallback where DALI is absent."""

    name = "torch"

    def __init__(self, data: SplitData, sampler: Sampler, device: torch.device, resident: str = "auto",
                 prefetch: int = 2, workers: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.data, self.sampler, self.device = data, sampler, torch.device(device)
        self.prefetch, self.workers = prefetch, workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="jepa-decode")
        weakref.finalize(self, self._pool.shutdown, wait=False)
        self.resident = self._choose_resident(resident)
        self.scale = data.scale.to(self.device)  # once, not per batch
        self.frames: torch.Tensor | None = None
        if self.resident == "device":
            self.frames = self._decode_all()
        self.mode = f"torch-{self.resident}"

    def _choose_resident(self, resident: str) -> str:
        if resident != "auto":
            return resident
        d = self.data
        need = d.reader.rows * d.L * d.C * d.H * d.W
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return "device" if need < free // 4 else "host"
        return "host"  # on CPU, decoding a batch is as fast as gathering it and holds no copy of the split

    def _decode_all(self) -> torch.Tensor:
        """Every frame of the split, flat: (rows x L, C, H, W) uint8 on the device."""
        d, r = self.data, self.data.reader
        frames = torch.empty((r.rows * d.L, d.C, d.H, d.W), dtype=torch.uint8, device=self.device)
        step = max(1, 16384 // d.L)
        buf = np.empty((step, d.L, d.C, d.H, d.W), dtype=np.uint8)
        for a in range(0, r.rows, step):
            b = min(r.rows, a + step)
            for i in range(a, b):
                r.decode(i, buf[i - a])
            frames[a * d.L:b * d.L].copy_(torch.from_numpy(buf[: b - a].reshape(-1, d.C, d.H, d.W)))
        return frames

    def _resident_gather(self, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The frames of windows whose first frames are ``index`` (B,): (B, T, C, H, W)."""
        d = self.data
        if d.aligned:  # every window is one row: gather rows
            rows = self.frames.view(-1, d.T, d.C, d.H, d.W)
            return torch.index_select(rows, 0, index // d.T, out=out) if out is not None else rows.index_select(
                0, index // d.T)
        frames = index[:, None] + torch.arange(d.T, device=index.device)  # (B, T)
        got = self.frames.index_select(0, frames.reshape(-1)).view(len(index), d.T, d.C, d.H, d.W)
        if out is not None:
            out.copy_(got)
            return out
        return got

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch

    def _host_buffer(self, m: int, pin: bool) -> torch.Tensor:
        """The next buffer of a ring of reusable host buffers (fresh 70 MB allocations would cost more
        in page faults than decoding). The ring holds prefetch + 3 buffers: the queue, the batch being
        produced, the one the consumer holds and the one before it. So a host-mode batch on a CPU
        device stays valid until two more batches have been taken; clone it to keep it longer."""
        if not hasattr(self, "_ring"):
            shape = (self.sampler.batch_size,) + self.data.frame_shape
            self._ring = [torch.empty(shape, dtype=torch.uint8, pin_memory=pin) for _ in range(self.prefetch + 3)]
            self._ring_events = [torch.cuda.Event() if pin else None for _ in self._ring]
            self._ring_pos = 0
        slot = self._ring_pos
        self._ring_pos = (slot + 1) % len(self._ring)
        if self._ring_events[slot] is not None:
            self._ring_events[slot].synchronize()  # its last host->device copy has finished (no-op if never used)
        self._last_slot = slot
        return self._ring[slot][:m]

    def _produce(self, plan: Plan) -> Batch:
        d = self.data
        actions, targets = plan_arrays(d, plan)
        starts = d.window_starts[plan.indices]  # (B,) first frame of each window
        if self.frames is not None and self.device.type == "cpu":
            # resident in RAM: gather with flipped views straight into a ring buffer, on worker threads
            out = self._host_buffer(len(plan.indices), False)
            if not (plan.flip_lr.any() or plan.flip_ud.any()):
                self._resident_gather(torch.from_numpy(starts), out=out)
                return make_batch(plan, out, actions, targets, self.scale, self.device)
            src, dst = self.frames.numpy(), out.numpy()
            parts = np.array_split(np.arange(len(plan.indices)), self.workers)
            list(self._pool.map(lambda p: _gather(src, starts[p], d.T, dst[p[0]:p[-1] + 1], plan.flip_lr[p],
                                                  plan.flip_ud[p]) if len(p) else None, parts))
            return make_batch(plan, out, actions, targets, self.scale, self.device)
        if self.frames is not None:  # resident on the GPU: gather and flip there, with no host sync
            pinned = torch.from_numpy(np.stack([starts, plan.flip_lr, plan.flip_ud])).pin_memory()
            plan_dev = pinned.to(self.device, non_blocking=True)  # (3, B): first frames, flip_lr, flip_ud
            states = flip_on_device(self._resident_gather(plan_dev[0]), plan_dev[1], plan_dev[2])
            return make_batch(plan, states, actions, targets, self.scale, self.device)
        pin = self.device.type == "cuda"
        host = self._host_buffer(len(plan.indices), pin)
        out = host.numpy()
        parts = np.array_split(np.arange(len(plan.indices)), self.workers)
        list(self._pool.map(lambda p: decode_flipped(d, plan.indices[p], out[p[0]:p[-1] + 1], plan.flip_lr[p],
                                                     plan.flip_ud[p]) if len(p) else None, parts))
        states = host.to(self.device, non_blocking=pin)
        if pin:  # the pinned buffer may be reused only once this copy has run
            self._ring_events[self._last_slot].record()
        return make_batch(plan, states, actions, targets, self.scale, self.device)

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the epoch from the sampler's position (the sampler advances as batches are handed out)."""
        def produce(plan: Plan) -> tuple[tuple[int, int], Batch]:
            return (plan.epoch, plan.step), self._produce(plan)

        plans = self.sampler.plans()
        # On a CPU device the step and the loader share the same cores, and torch ops called from a
        # second Python thread run ~4x slower here (measured: index_select 0.4 vs 1.9 M frames/s), so
        # the resident gather runs in the consumer's thread; everything else is prefetched.
        batches = (map(produce, plans) if self.frames is not None and self.device.type == "cpu"
                   else _Prefetcher(plans, produce, self.prefetch))
        yield from self.sampler.consume(batches)


# ---------------------------------------------------------------------------------------------
# selection


def dali_importable() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:  # ImportError, or a broken install raising OSError
        return False
    return True


def build_loader(store: Path | SplitData, cfg: DataConfig, device: torch.device, rank: int = 0,
                 world_size: int = 1, shuffle: bool | None = None, drop_last: bool | None = None,
                 augment: bool = True):
    """The loader for one split: DALI or torch per ``cfg.loader``; logs which one and why."""
    data = store if isinstance(store, SplitData) else SplitData(store, cfg.seq_len, cfg.stride, cfg.window_offset)
    if augment:
        check_flips(data, cfg.augment)
    sampler = Sampler(data.n, cfg.batch_size, cfg.seed, rank, world_size,
                      shuffle=cfg.shuffle if shuffle is None else shuffle,
                      drop_last=cfg.drop_last if drop_last is None else drop_last,
                      augment=cfg.augment if augment else None, name=str(data.path))
    workers, _ = resolve_workers(cfg.workers, torch.device(device))  # 0 = auto, resolved for this device
    choice = cfg.loader
    if choice == "auto":
        # DALI earns its keep by decoding on the GPU; on a CPU device its CPU mode measured 2-4x slower
        # than the torch loader (bench/results/loader_*), so 'auto' takes torch there.
        if torch.device(device).type != "cuda":
            choice, why = "torch", "CPU device: the torch loader is the faster one here"
        elif dali_importable():
            choice, why = "dali", "DALI is importable"
        else:
            choice, why = "torch", "nvidia-dali is not importable here"
    else:
        why = "requested"
        if choice == "dali" and not dali_importable():
            extra, wheel = dali_extra()
            raise JepaFastError(f"data.loader='dali' but nvidia-dali is not importable here; install {wheel} (pip "
                                f"install 'jepa-fast[{extra}]', matching this torch's CUDA "
                                f"{torch.version.cuda or '(none: a CPU build)'}) or use --loader torch")
    if choice == "dali":
        from jepa_fast.data.dali import DaliLoader

        loader = DaliLoader(data, sampler, torch.device(device), workers=workers, prefetch=cfg.prefetch)
    else:
        loader = TorchLoader(data, sampler, torch.device(device), resident=cfg.resident, prefetch=cfg.prefetch,
                             workers=workers)
    log.info("loader for %s: %s (%s)", data.path.name, loader.mode, why)
    return loader
