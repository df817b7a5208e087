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
from jepa_fast.data.loader import SplitData
from jepa_fast.data.sampler import Sampler
from jepa_fast.errors import JepaFastError

OUTPUTS = ["states", "actions", "locations", "indices", "brightness", "noise_std"]


class _BatchSource:
    """The external_source callback: stateless in the DALI sense (a pure function of BatchInfo)."""

    def __init__(self, data: SplitData, sampler: Sampler, base_epoch: int, base_step: int, gpu: bool):
        r = data.reader
        if r._blob is None:
            raise JepaFastError(f"{data.path}: the DALI loader needs the compressed store in RAM")
        self.blob, self.offset, self.nbytes = r._blob, r.chunk_global, r.chunk_nbytes
        self.codec, self.frame_shape, self.size = r.codec, data.frame_shape, data.W
        self.store = str(data.path)
        self.actions, self.locations = data.actions, data.locations
        self.sampler = sampler
        self.base_epoch, self.base_step, self.gpu = base_epoch, base_step, gpu
        if gpu and r.codec.name != "lz4":
            raise JepaFastError(f"{data.path}: GPU decode needs an lz4 store; re-pack with --codec lz4")

    def __call__(self, info):
        epoch = self.base_epoch + info.epoch_idx
        step = info.iteration + (self.base_step if info.epoch_idx == 0 else 0)
        if step >= self.sampler.steps_per_epoch:
            raise StopIteration
        plan = self.sampler.plan(epoch, step)
        B = len(plan.indices)
        if self.gpu:
            # raw LZ4 blocks: skip numcodecs' 4-byte size header of each chunk
            frames = [self.blob[self.offset[i] + 4:self.offset[i] + self.nbytes[i]] for i in plan.indices]
            if any(self.nbytes[i] == 0 for i in plan.indices):
                raise JepaFastError(f"{self.store}: an all-zero (empty) chunk cannot go through GPU inflate")
        else:
            frames = np.empty((B,) + self.frame_shape, dtype=np.uint8)
            out = np.empty(self.frame_shape, dtype=np.uint8)
            for j, i in enumerate(plan.indices):
                nb = self.nbytes[i]
                if nb == 0:
                    frames[j] = 0
                    continue
                try:
                    self.codec.decode_into(self.blob[self.offset[i]:self.offset[i] + nb], out)
                except Exception as e:
                    raise JepaFastError(f"{self.store}: chunk of trajectory {int(i)} fails to decompress ({e}); "
                                        "the store is corrupt, re-pack the split") from None
                frames[j] = out
        loc = None if self.locations is None else self.locations[plan.indices]
        actions, loc = flip_actions_locations(self.actions[plan.indices], loc, plan.flip_lr, plan.flip_ud,
                                              self.size)
        if loc is None:
            loc = np.zeros((B, self.frame_shape[0], 2), np.float32)
        return (frames, plan.flip_lr.astype(np.int32), plan.flip_ud.astype(np.int32), actions, loc,
                plan.indices.astype(np.int64), plan.brightness, plan.noise_std)


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
        source = _BatchSource(self.data, s, s.epoch, s.step, gpu)
        T, C, H, W = self.data.frame_shape
        start = "spawn" if (gpu and torch.cuda.is_initialized()) else "fork"

        @pipeline_def(batch_size=s.batch_size, num_threads=self.threads,
                      device_id=(self.device.index or 0) if gpu else None, py_num_workers=self.workers,
                      py_start_method=start, prefetch_queue_depth=self.prefetch, seed=s.seed)
        def pipe():
            frames, lr, ud, actions, locations, indices, bright, noise = fn.external_source(
                source=source, num_outputs=8, batch=True, parallel=True, batch_info=True,
                layout=["FCHW" if not gpu else "", "", "", "", "", "", "", ""])
            if gpu:
                frames = fn.decoders.inflate(frames.gpu(), shape=[T, C, H, W], dtype=types.UINT8, layout="FCHW")
            frames = fn.flip(frames, horizontal=lr, vertical=ud)
            if gpu:
                actions, locations, indices = actions.gpu(), locations.gpu(), indices.gpu()
                bright, noise = bright.gpu(), noise.gpu()
            return frames, actions, locations, indices, bright, noise

        self._it = None  # release the old pipeline (and its workers) first
        self._pipe = pipe()
        self._pipe.start_py_workers()
        self._pipe.build()
        self._it = DALIGenericIterator(self._pipe, OUTPUTS, auto_reset=True, prepare_first_batch=False)
        self._expected = (s.epoch, s.step)

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        """One epoch from the sampler's position (the sampler advances as batches are consumed)."""
        s = self.sampler
        if self._expected != (s.epoch, s.step):  # resumed, or an epoch was abandoned half-way
            self._build()
        epoch = s.epoch
        self._expected = None  # mid-epoch: a new iterator must rebuild unless this one finishes
        it = iter(self._it)
        while True:
            try:
                out = next(it)
            except StopIteration:
                break
            except Exception as e:  # a worker's error arrives as a traceback string: keep its one line
                raise _worker_error(e) from None
            o = out[0]
            s.step += 1
            yield Batch(states=o["states"], actions=o["actions"],
                        locations=o["locations"] if self._has_locations else None,
                        indices=o["indices"], brightness=o["brightness"], noise_std=o["noise_std"],
                        scale=self.data.scale.to(o["states"].device))
        s.epoch, s.step = epoch + 1, 0
        self._expected = (s.epoch, s.step)
