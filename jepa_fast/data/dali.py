"""The DALI pipeline: compressed trajectories in, flipped uint8 frames out, one graph for GPU and CPU.

    parallel fn.external_source (Python workers, batch mode)
        reads this rank's plan for (epoch, step) from the Sampler, slices each trajectory's raw LZ4
        block out of the in-RAM store, flips actions/locations to match the plan
    GPU mode:  raw blocks --.gpu()--> fn.decoders.inflate (nvCOMP LZ4) --> frames (T, C, H, W) uint8
    CPU mode:  the worker decodes the blocks (numcodecs LZ4) --> frames (T, C, H, W) uint8
    fn.flip(frames, horizontal=flip_lr, vertical=flip_ud)      (per trajectory, every frame alike)
    DALIGenericIterator --> Batch

Cast, per-channel scale, brightness and noise are elementwise and happen in the compiled training
step (``batch.finish_states``), fused with the first read of the frames.

Workers are forked; DALI requires that no CUDA context exists when they start, so the pipeline
starts its workers at construction and falls back to ``spawn`` if CUDA is already initialised.
Errors raised in a worker (e.g. a corrupt chunk) are re-raised by DALI in the main process.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from jepa_fast.data.batch import Batch, flip_actions_locations
from jepa_fast.data.reader import SplitData
from jepa_fast.data.sampler import Sampler
from jepa_fast.errors import JepaFastError

OUTPUTS = ["states", "actions", "locations", "indices", "brightness", "noise_std", "position"]


class _BatchSource:
    """The external_source callback: stateless in the DALI sense (a pure function of BatchInfo).

    The sampler maps DALI's (epoch_idx, iteration) to a plan (``Sampler.plan_at``); the plan's
    (epoch, step) travels with the batch as a CPU output, so the main process hands batches out
    through ``Sampler.consume`` without re-deriving any position.
    """

    def __init__(self, data: SplitData, sampler: Sampler, start: tuple[int, int], gpu: bool):
        if not data.reader.in_ram:
            raise JepaFastError(f"{data.path}: the DALI loader needs the compressed store in RAM")
        if gpu and data.reader.codec.name != "lz4":
            raise JepaFastError(f"{data.path}: GPU decode needs an lz4 store; re-pack with --codec lz4")
        self.reader, self.frame_shape, self.size = data.reader, data.frame_shape, data.W
        self.actions, self.locations = data.actions, data.locations
        self.sampler, self.start, self.gpu = sampler, start, gpu

    def __call__(self, info):
        plan = self.sampler.plan_at(self.start, info.epoch_idx, info.iteration)
        if plan is None:
            raise StopIteration
        B = len(plan.indices)
        if self.gpu:
            frames = [self._raw_block(int(i)) for i in plan.indices]
        else:
            frames = np.empty((B,) + self.frame_shape, dtype=np.uint8)
            for j, i in enumerate(plan.indices):
                self.reader.decode(int(i), frames[j])
        loc = None if self.locations is None else self.locations[plan.indices]
        actions, loc = flip_actions_locations(self.actions[plan.indices], loc, plan.flip_lr, plan.flip_ud,
                                              self.size)
        if loc is None:
            loc = np.zeros((B, self.frame_shape[0], 2), np.float32)
        position = np.broadcast_to(np.array([plan.epoch, plan.step], np.int64), (B, 2))
        return (frames, plan.flip_lr.astype(np.int32), plan.flip_ud.astype(np.int32), actions, loc,
                plan.indices.astype(np.int64), plan.brightness, plan.noise_std, position)

    def _raw_block(self, i: int) -> np.ndarray:
        block = self.reader.raw_block(i)
        if block is None:
            raise JepaFastError(f"{self.reader.path}: trajectory {i} is an all-zero (empty) chunk, which GPU "
                                "inflate cannot decode; drop it from the split or use --loader torch")
        return np.frombuffer(block, dtype=np.uint8)


def _worker_error(e: Exception) -> Exception:
    """DALI re-raises a Python worker's exception as ``Exception(<traceback text>)``; recover our message."""
    marker = "JepaFastError: "
    text = str(e)
    if marker in text:
        return JepaFastError(text[text.rindex(marker) + len(marker):].strip().splitlines()[0])
    return e


class DaliLoader:
    """DALI-backed loader with the same sampler, plans and Batch contract as the torch loader."""

    name = "dali"

    def __init__(self, data: SplitData, sampler: Sampler, device: torch.device, workers: int = 2,
                 prefetch: int = 2, threads: int = 2):
        self.data, self.sampler, self.device = data, sampler, torch.device(device)
        self.workers, self.prefetch, self.threads = workers, prefetch, threads
        self.gpu = self.device.type == "cuda"
        self.mode = "dali-gpu" if self.gpu else "dali-cpu"
        self._has_locations = data.locations is not None
        self._it = None
        self._expected: tuple[int, int] | None = None  # sampler position the running pipeline continues from
        # start now: on a GPU machine the workers must fork before anything creates a CUDA context
        self._build()

    def _build(self) -> None:
        """(Re)build the pipeline so that it continues from the sampler's current position."""
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        s, gpu = self.sampler, self.gpu
        source = _BatchSource(self.data, s, s.position, gpu)
        T, C, H, W = self.data.frame_shape
        start = "spawn" if (gpu and torch.cuda.is_initialized()) else "fork"

        @pipeline_def(batch_size=s.batch_size, num_threads=self.threads,
                      device_id=(self.device.index or 0) if gpu else None, py_num_workers=self.workers,
                      py_start_method=start, prefetch_queue_depth=self.prefetch, seed=s.seed)
        def pipe():
            frames, lr, ud, actions, locations, indices, bright, noise, position = fn.external_source(
                source=source, num_outputs=9, batch=True, parallel=True, batch_info=True,
                layout=["FCHW" if not gpu else "", "", "", "", "", "", "", "", ""])
            if gpu:
                frames = fn.decoders.inflate(frames.gpu(), shape=[T, C, H, W], dtype=types.UINT8, layout="FCHW")
            frames = fn.flip(frames, horizontal=lr, vertical=ud)
            if gpu:
                actions, locations, indices = actions.gpu(), locations.gpu(), indices.gpu()
                bright, noise = bright.gpu(), noise.gpu()
            return frames, actions, locations, indices, bright, noise, position  # position stays on the CPU

        self._it = None  # release the old pipeline (and its workers) first
        self._pipe = pipe()
        self._pipe.start_py_workers()
        self._pipe.build()
        self._it = DALIGenericIterator(self._pipe, OUTPUTS, auto_reset=True, prepare_first_batch=False)
        self._expected = s.position

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the epoch from the sampler's position (the sampler advances as batches are handed out)."""
        s = self.sampler
        if self._expected != s.position:  # resumed, or an epoch was abandoned half-way
            self._build()
        self._expected = None  # mid-epoch: a new iterator must rebuild unless this one finishes
        yield from s.consume(self._batches())
        self._expected = s.position  # the pipeline's next epoch starts where the sampler now is

    def _batches(self) -> Iterator[tuple[tuple[int, int], Batch]]:
        it = iter(self._it)
        while True:
            try:
                out = next(it)
            except StopIteration:
                return
            except Exception as e:  # a worker's error arrives as a traceback string: keep its one line
                raise _worker_error(e) from None
            o = out[0]
            epoch, step = o["position"][0].tolist()  # a CPU output: no device sync
            yield (epoch, step), Batch(states=o["states"], actions=o["actions"],
                                       locations=o["locations"] if self._has_locations else None,
                                       indices=o["indices"], brightness=o["brightness"], noise_std=o["noise_std"],
                                       scale=self.data.scale.to(o["states"].device))
