"""The DALI pipeline: compressed trajectories in, flipped uint8 frames out, one graph for GPU and CPU.

One DALI sample is one whole batch, so the per-batch CPU work does not grow with the number of
trajectories in Python:

    parallel fn.external_source (Python workers, batch mode, one sample per batch)
        asks the Sampler for this rank's plan (``Sampler.plan_at``), then with one vectorised gather
        copies the batch's compressed chunks out of a fixed-stride table of the in-RAM store
        (``ChunkTable``: row i = trajectory i's stored chunk, zero-padded to the longest one), and
        flips actions/locations to match the plan
    GPU mode:  the rows the batch's windows touch (U x stride bytes) --.gpu()--> fn.decoders.inflate (nvCOMP
               LZ4) with chunk_offsets = i x stride + 4 and chunk_sizes = each raw block's length
               --> rows (U, L, C, H, W) uint8 on the GPU --> the windows' frames (B, T, C, H, W): the rows
               themselves when every window is one row (fixed-length data), else one device gather
    CPU mode:  the worker decodes each trajectory (numcodecs LZ4, CRC checked), flipped as it is copied
               out --> frames (B, T, C, H, W)
    DALIGenericIterator --> (GPU mode) flips on the device (``torch.where``: no host sync) --> Batch

Cast, per-channel scale, brightness and noise are elementwise and happen in the compiled training
step (``JEPA.encode_stored``), fused with the first read of the frames.

Workers are forked unless the CUDA driver is already initialised in this process (DALI's own test,
``nvidia.dali.backend.IsDriverInitialized``: ``torch.cuda.is_available()`` initialises the driver
without ``torch.cuda.is_initialized()`` saying so), in which case they are spawned. Errors raised in
a worker (e.g. a corrupt chunk) are re-raised in the main process as one line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from jepa_fast.data.batch import Batch, decode_flipped, flip_on_device, plan_arrays
from jepa_fast.data.sampler import Sampler
from jepa_fast.data.split import SplitData
from jepa_fast.errors import JepaFastError

log = logging.getLogger(__name__)
OUTPUTS = ["states", "actions", "targets", "indices", "brightness", "noise_std", "flip_lr", "flip_ud", "position"]


class ChunkTable:
    """The in-RAM compressed store as a fixed-stride table, so a batch's chunks are one fancy-index gather.

    ``rows[i]`` holds row i's stored chunk (numcodecs' 4-byte size, the raw LZ4 block, and from schema 2 the
    CRC32C), zero-padded to ``stride`` bytes; ``raw_len[i]`` is its raw LZ4 block's length. Costs rows x
    stride bytes (~1.5x the compressed store for simulated data).
    """

    def __init__(self, data: SplitData):
        r = data.reader
        if not r.in_ram:
            raise JepaFastError(f"{data.path}: the DALI loader needs the compressed store in RAM")
        nbytes = r.chunk_nbytes
        if (nbytes == 0).any():
            i = int(np.nonzero(nbytes == 0)[0][0])
            raise JepaFastError(f"{data.path}: row {i} is an all-zero (empty) chunk, which the DALI loader cannot "
                                "decode; use --loader torch")
        self.stride = int(nbytes.max())
        self.rows = np.zeros((r.rows, self.stride), dtype=np.uint8)
        blob, start = r.ram_blob(), r.chunk_global
        for i in range(r.rows):  # once per split, at start-up
            self.rows[i, :nbytes[i]] = blob[start[i]:start[i] + nbytes[i]]
        self.raw_start = r.codec.RAW_BLOCK_START
        self.raw_len = r.codec.raw_block_len(nbytes.astype(np.int64))

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """(B * stride,) uint8: the rows of ``indices``, one vectorised copy."""
        return self.rows[indices].reshape(-1)


class _BatchSource:
    """The external_source callback: stateless in the DALI sense (a pure function of BatchInfo)."""

    def __init__(self, data: SplitData, table: ChunkTable, sampler: Sampler, start: tuple[int, int], gpu: bool):
        if gpu and data.reader.codec.name != "lz4":
            raise JepaFastError(f"{data.path}: GPU decode needs an lz4 store; re-pack with --codec lz4")
        self.data, self.table, self.frame_shape = data, table, data.frame_shape
        self.sampler, self.start, self.gpu = sampler, start, gpu

    def __call__(self, info):
        plan = self.sampler.plan_at(self.start, info.epoch_idx, info.iteration)
        if plan is None:
            raise StopIteration
        return [[x] for x in self.feed(plan)]  # one sample per batch

    def feed(self, plan) -> tuple:
        """Everything the pipeline needs for one plan, before any host->device copy (what bench_loader times
        as the GPU feed): vectorised over the batch, no per-window Python in GPU mode."""
        idx = plan.indices
        B = len(idx)
        if self.gpu:
            stride = self.table.stride
            rows, frame_index = window_rows(self.data, idx)
            frames = self.table.gather(rows)  # (U * stride,) compressed rows
            # inflate's chunk_offsets / chunk_sizes are int32 tensor arguments (DALI's schema)
            offsets = (np.arange(len(rows), dtype=np.int64) * stride + self.table.raw_start).astype(np.int32)
            sizes = self.table.raw_len[rows].astype(np.int32)
            extra = (offsets, sizes) if frame_index is None else (offsets, sizes, frame_index)
        else:  # CPU mode: decoding is per window anyway, and flipping while copying out costs nothing more
            frames = np.empty((B,) + self.frame_shape, dtype=np.uint8)
            decode_flipped(self.data, idx, frames, plan.flip_lr, plan.flip_ud)
            extra = ()
        actions, targets = plan_arrays(self.data, plan)
        if targets is None:  # a placeholder output: the Batch carries None
            targets = np.zeros((B, self.frame_shape[0], 1), np.float32)
        position = np.array([plan.epoch, plan.step], np.int64)
        return (frames, actions, targets, idx.astype(np.int64), plan.brightness, plan.noise_std,
                plan.flip_lr.astype(np.uint8), plan.flip_ud.astype(np.uint8), position, *extra)


def window_rows(data: SplitData, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows a batch of windows needs, and where each window's frames sit once those rows are inflated.

    Returns (rows (U,) to inflate, in order; frame_index (B * T,) into the U x L inflated frames, or None when
    every window is exactly its row, in batch order). Vectorised: no per-window Python."""
    L, T = data.L, data.T
    starts = data.window_starts[idx]
    if data.aligned:
        return starts // L, None
    r0, r1 = starts // L, (starts + T - 1) // L
    span = int((r1 - r0).max()) + 1
    touched = r0[:, None] + np.arange(span)  # (B, span), clipped to each window's last row below
    rows = np.unique(np.minimum(touched, r1[:, None]))
    pos = np.searchsorted(rows, r0)  # a window's rows are consecutive in the sorted set
    frame_index = (pos * L + (starts - r0 * L))[:, None] + np.arange(T)
    return rows, frame_index.reshape(-1).astype(np.int64)


def _worker_error(e: Exception) -> Exception:
    """DALI re-raises a Python worker's exception as ``Exception(<traceback text>)``; recover our message."""
    marker = "JepaFastError: "
    text = str(e)
    if marker in text:
        return JepaFastError(text[text.rindex(marker) + len(marker):].strip().splitlines()[0])
    return e


def cuda_driver_initialized() -> bool:
    """DALI's own test of whether forking workers is still allowed in this process."""
    from nvidia.dali import backend

    return bool(backend.IsDriverInitialized())


def worker_start_method(gpu: bool) -> str:
    """'fork' unless this process already initialised the CUDA driver (DALI then refuses to fork): 'spawn'.
    The trainer builds its loader before anything touches CUDA, so a training run forks."""
    if gpu and cuda_driver_initialized():
        log.info("CUDA is already initialised in this process: DALI workers are spawned, not forked")
        return "spawn"
    return "fork"


class DaliLoader:
    """DALI-backed loader with the same sampler, plans and Batch contract as the torch loader."""

    name = "dali"

    def __init__(self, data: SplitData, sampler: Sampler, device: torch.device, workers: int = 2,
                 prefetch: int = 2, threads: int = 2, start_method: str | None = None):
        self.data, self.sampler, self.device = data, sampler, torch.device(device)
        self.start_method = start_method or worker_start_method(self.device.type == "cuda")
        self.workers, self.prefetch, self.threads = workers, prefetch, threads
        self.gpu = self.device.type == "cuda"
        self.mode = "dali-gpu" if self.gpu else "dali-cpu"
        self.table = ChunkTable(data) if self.gpu else None
        self._has_targets = data.has_targets
        self._outputs = OUTPUTS + (["frame_index"] if self.gpu and not data.aligned else [])
        self._scale: torch.Tensor | None = None  # the store's scale on the training device, copied once
        self._it = None
        self._expected: tuple[int, int] | None = None  # sampler position the running pipeline continues from
        # start now: on a GPU machine the workers should fork before anything creates a CUDA context
        self._build()

    def _build(self) -> None:
        """(Re)build the pipeline so that it continues from the sampler's current position."""
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        s, gpu = self.sampler, self.gpu
        source = _BatchSource(self.data, self.table, s, s.position, gpu)
        _, C, H, W = self.data.frame_shape
        L = self.data.L
        start = self.start_method

        @pipeline_def(batch_size=1, num_threads=self.threads, device_id=(self.device.index or 0) if gpu else None,
                      py_num_workers=self.workers, py_start_method=start, prefetch_queue_depth=self.prefetch,
                      seed=s.seed)
        def pipe():
            outs = fn.external_source(source=source, num_outputs=len(self._outputs) + (2 if gpu else 0), batch=True,
                                      parallel=True, batch_info=True)
            frames, actions, targets, indices, bright, noise, lr, ud, position = outs[:9]
            rest = []
            if gpu:
                offsets, sizes = outs[9:11]
                frames = fn.decoders.inflate(frames.gpu(), shape=[L, C, H, W], dtype=types.UINT8,
                                             chunk_offsets=offsets, chunk_sizes=sizes)  # (U, L, C, H, W)
                actions, targets, indices = actions.gpu(), targets.gpu(), indices.gpu()
                bright, noise, lr, ud = bright.gpu(), noise.gpu(), lr.gpu(), ud.gpu()
                rest = [o.gpu() for o in outs[11:]]  # frame_index, for windows that are not whole rows
            # position stays on the CPU
            return (frames, actions, targets, indices, bright, noise, lr, ud, position, *rest)

        self._it = None  # release the old pipeline (and its workers) first
        self._pipe = pipe()
        self._pipe.start_py_workers()
        self._pipe.build()
        self._it = DALIGenericIterator(self._pipe, self._outputs, auto_reset=True, prepare_first_batch=False)
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
            o = {k: v[0] for k, v in out[0].items()}  # the one sample = the whole batch
            epoch, step = o["position"].tolist()  # a CPU output: no device sync
            states = o["states"]
            if "frame_index" in o:  # the windows' frames out of the inflated rows (a device gather)
                d = self.data
                states = states.view(-1, d.C, d.H, d.W).index_select(0, o["frame_index"]).view(-1, *d.frame_shape)
            # GPU mode flips on the device (no host sync); the CPU mode's workers flipped while decoding
            states = flip_on_device(states, o["flip_lr"], o["flip_ud"]) if self.gpu else states
            if self._scale is None:
                self._scale = self.data.scale.to(states.device)
            yield (epoch, step), Batch(states=states, actions=o["actions"],
                                       targets=o["targets"] if self._has_targets else None,
                                       indices=o["indices"], brightness=o["brightness"], noise_std=o["noise_std"],
                                       scale=self._scale)
