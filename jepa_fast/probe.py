"""The probing evaluation (the only one): the course project's protocol, exactly, made fast.

Protocol (docs/TWO_ROOMS.md §5; the original evaluator's behaviour, quirks included):
* the frozen model rolls out from the first frame and all actions: ``model(states[:, :1], actions)``
  -> (B, T, D) predicted embeddings;
* a prober Linear(D, 256) - ReLU - Linear(256, 2) regresses the agent's normalised (x, y) at every
  timestep (Normalizer: mean (31.5863, 32.0618), std (16.1025, 16.1353), + 1e-6);
* Adam, 20 epochs, batch 64, shuffle, drop_last. The first step runs at lr 2e-4; after step k the
  lr is set to schedule(k): linear warm-up over 10% of all steps from 0 to 2e-4 x 64/256 = 5e-5, then
  cosine down to 5e-8. (So step 1 runs at lr 0, as in the original.)
* when T > 30, each training sample uses 30 random timesteps;
* evaluation (batch 64, drop_last): per-timestep MSE in normalised units, averaged over batches,
  multiplied by std^2 per axis, averaged over x/y, then over timesteps: pixel^2.
* one prober trained on probe_normal/train, evaluated on probe_normal/val, probe_wall/val and
  probe_wall_other/val; a second trained on probe_expert/train, evaluated on probe_expert/val.

Fast: the model is frozen, so each split's embeddings are computed once (batched) and the prober
trains on the cache. ``ProbeConfig(cache=False)`` re-runs the model on every prober batch instead, as
the original does; a test shows both give the same numbers.

Precision: embeddings are computed in fp32, as the original evaluator does, whatever precision the
model trained in. A 16-step GRU rollout under bf16 autocast moves the embeddings ~9% (relative L2)
and the course project's published model's probe_wall MSE from 6.2 to 7.7; a lower precision is
used only on request (``--precision bf16``) and recorded in metrics.json.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from jepa_fast import atomic, lock
from jepa_fast.config import ProbeConfig
from jepa_fast.data.reader import SplitData
from jepa_fast.errors import JepaFastError

LOCATION_MEAN = (31.5863, 32.0618)
LOCATION_STD = (16.1025, 16.1353)

# name in metrics.txt -> (prober group, split)
VAL_SETS = {
    "probe_normal": ("normal", "probe_normal/val"),
    "probe_wall": ("normal", "probe_wall/val"),
    "wall_other": ("normal", "probe_wall_other/val"),
    "expert": ("expert", "probe_expert/val"),
}
TRAIN_SETS = {"normal": "probe_normal/train", "expert": "probe_expert/train"}

# the reference project's published numbers (Lake-Wang, 477,664 params) and chance (a constant prober)
REFERENCE = {"probe_normal": 3.159, "probe_wall": 6.307, "wall_other": 7.060, "expert": 15.251}
CHANCE = {"probe_normal": "~258-266", "probe_wall": "~186-191", "wall_other": "-", "expert": "-"}
EMBEDDING_PRECISIONS = ("fp32", "bf16", "fp16")
"""Precisions the rollout embeddings can be computed in (fp32 is the original evaluator's)."""


def normalize(loc: torch.Tensor) -> torch.Tensor:
    """(..., 2) pixel locations -> normalised units."""
    mean = torch.tensor(LOCATION_MEAN, dtype=loc.dtype, device=loc.device)
    std = torch.tensor(LOCATION_STD, dtype=loc.dtype, device=loc.device)
    return (loc - mean) / (std + 1e-6)


def unnormalize(loc: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(LOCATION_MEAN, dtype=loc.dtype, device=loc.device)
    std = torch.tensor(LOCATION_STD, dtype=loc.dtype, device=loc.device)
    return loc * (std + 1e-6) + mean


def unnormalize_mse(mse: torch.Tensor) -> torch.Tensor:
    """(..., 2) per-axis MSE in normalised units -> pixel^2 (x std^2 per axis)."""
    std = torch.tensor(LOCATION_STD, dtype=mse.dtype, device=mse.device)
    return mse * std**2


def make_prober(D: int, cfg: ProbeConfig) -> nn.Module:
    """Linear(D, hidden) - ReLU - Linear(hidden, 2), initialised from cfg.seed (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return nn.Sequential(nn.Linear(D, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 2))


def schedule_lr(k: int, total: int, cfg: ProbeConfig) -> float:
    """The lr the original evaluator's Cosine scheduler sets after optimizer step k (used by step k+1)."""
    peak = cfg.lr * cfg.batch_size / 256
    warmup = int(cfg.warmup_fraction * total)
    if k < warmup:
        return peak * k / warmup
    q = 0.5 * (1 + math.cos(math.pi * (k - warmup) / max(1, total - warmup)))
    end = peak * cfg.end_lr_ratio
    return peak * q + end * (1 - q)


def step_lrs(total: int, cfg: ProbeConfig) -> list[float]:
    """The lr each optimizer step actually runs at: cfg.lr for the first, schedule(k-1) after."""
    return [cfg.lr] + [schedule_lr(k - 1, total, cfg) for k in range(1, total)]


# ---------------------------------------------------------------------------------------------
# embeddings


class SplitEmbeddings:
    """Rollout embeddings of a split, either cached (computed once) or recomputed per request."""

    def __init__(self, model: nn.Module, data: SplitData, device: torch.device, precision: str,
                 cfg: ProbeConfig, cache: bool):
        self.model, self.data, self.device, self.cfg = model, data, device, cfg
        self.precision = precision
        if data.locations is None:
            raise JepaFastError(f"{data.path}: has no locations array; probing needs locations")
        self.locations = torch.from_numpy(np.asarray(data.locations, dtype=np.float32))  # (N, T, 2)
        self.n, self.T = data.n, data.T
        self.cache = None
        if cache:
            idx = np.arange(self.n)
            self.cache = torch.cat([self._compute(idx[a:a + cfg.embed_batch])
                                    for a in range(0, self.n, cfg.embed_batch)])  # (N, T, D) float32

    @torch.no_grad()
    def _compute(self, idx: np.ndarray) -> torch.Tensor:
        """Rollout embeddings (len(idx), T, D) float32 on CPU (computed in fp32 unless asked otherwise)."""
        d = self.data
        x = torch.from_numpy(d.first_frames(idx)).to(self.device)  # (B, 1, C, H, W) raw units: the evaluator's input
        actions = torch.from_numpy(np.asarray(d.actions[idx], dtype=np.float32)).to(self.device)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.precision in ("bf16", "fp16")):  # fp32 default
            out = self.model(x, actions)  # (B, T, D)
        return out.float().cpu()

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[idx]
        return self._compute(idx.numpy())

    @property
    def dim(self) -> int:
        return int(self(torch.arange(1)).shape[-1]) if self.cache is None else self.cache.shape[-1]


# ---------------------------------------------------------------------------------------------
# prober training and evaluation


def train_prober(emb: Callable[[torch.Tensor], torch.Tensor], locations: torch.Tensor, D: int,
                 cfg: ProbeConfig) -> tuple[nn.Module, list[float]]:
    """Train a prober on (embeddings, locations) of one split; returns it and its per-step losses."""
    n, T = locations.shape[:2]
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise JepaFastError(f"probe split has {n} trajectories, fewer than one batch of {cfg.batch_size}")
    total = cfg.epochs * steps_per_epoch
    lrs = step_lrs(total, cfg)
    prober = make_prober(D, cfg)
    opt = torch.optim.Adam(prober.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    target_all = normalize(locations)
    losses, k = [], 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            enc = emb(idx)  # (B, T, D)
            target = target_all[idx]  # (B, T, 2)
            if cfg.sample_timesteps < T:
                # per sample, sample_timesteps distinct timesteps (a random permutation's head)
                pick = torch.rand(len(idx), T, generator=g).argsort(dim=1)[:, :cfg.sample_timesteps]
                enc = torch.gather(enc, 1, pick[..., None].expand(-1, -1, enc.shape[-1]))
                target = torch.gather(target, 1, pick[..., None].expand(-1, -1, 2))
            for group in opt.param_groups:
                group["lr"] = lrs[k]
            loss = (prober(enc) - target).pow(2).mean(dim=0).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            k += 1
    return prober, torch.stack(losses).tolist()


@torch.no_grad()
def evaluate(prober: nn.Module, emb: Callable[[torch.Tensor], torch.Tensor], locations: torch.Tensor,
             cfg: ProbeConfig) -> tuple[float, np.ndarray, torch.Tensor]:
    """(average loss in pixel^2, per-timestep loss (T,), predicted locations of the first batch in pixels)."""
    n = locations.shape[0]
    per_batch, first = [], None
    for b in range(n // cfg.batch_size):
        idx = torch.arange(b * cfg.batch_size, (b + 1) * cfg.batch_size)
        pred = prober(emb(idx))  # (B, T, 2) normalised
        if first is None:
            first = unnormalize(pred)
        per_batch.append((pred - normalize(locations[idx])).pow(2).mean(dim=0))  # (T, 2)
    if not per_batch:
        raise JepaFastError(f"probe val split has {n} trajectories, fewer than one batch of {cfg.batch_size}")
    per_t = unnormalize_mse(torch.stack(per_batch).mean(dim=0)).mean(dim=-1)  # (T,)
    return float(per_t.mean()), per_t.numpy(), first


# ---------------------------------------------------------------------------------------------
# the whole evaluation


def _split_store(root: Path, split: str) -> Path:
    p = Path(root) / f"{split}.zarr"
    if not (p / "zarr.json").exists():
        raise JepaFastError(f"{p}: missing; probing needs all probe splits packed under {root} "
                            "(jepa-fast generate --out RAW && jepa-fast pack RAW " + str(root) + ")")
    return p


def probe_model(model: nn.Module, data_root: Path, cfg: ProbeConfig | None = None, device: torch.device | None = None,
                precision: str = "fp32") -> dict:
    """Run the protocol on any model with the evaluator interface; returns losses and per-timestep curves."""
    cfg = cfg or ProbeConfig()
    if precision not in EMBEDDING_PRECISIONS:
        raise JepaFastError(f"embedding precision {precision!r}: use {', '.join(EMBEDDING_PRECISIONS)}")
    device = device or next(model.parameters()).device
    for split in list(TRAIN_SETS.values()) + [s for _, s in VAL_SETS.values()]:
        _split_store(data_root, split)
    model.eval()
    t0 = time.perf_counter()
    results: dict = {"losses": {}, "per_timestep": {}, "samples": {}, "embedding_precision": precision}
    for group, train_split in TRAIN_SETS.items():
        tr = SplitEmbeddings(model, SplitData(_split_store(data_root, train_split)), device, precision, cfg,
                             cfg.cache)
        D = tr.dim
        prober, train_losses = train_prober(tr, tr.locations, D, cfg)
        results.setdefault("prober_train_loss", {})[group] = train_losses[-1]
        for name, (g, split) in VAL_SETS.items():
            if g != group:
                continue
            va = SplitEmbeddings(model, SplitData(_split_store(data_root, split)), device, precision, cfg, cfg.cache)
            avg, per_t, first = evaluate(prober, va, va.locations, cfg)
            results["losses"][name] = avg
            results["per_timestep"][name] = per_t.tolist()
            results["samples"][name] = {"pred": first[:4].numpy(), "store": str(va.data.path)}
    results["seconds"] = time.perf_counter() - t0
    return results


def load_checkpoint_model(checkpoint: Path, device: torch.device) -> tuple[nn.Module, dict]:
    from jepa_fast.checkpoint import load_model_weights
    from jepa_fast.config import run_config_from_dict
    from jepa_fast.model import JEPA

    weights, config = load_model_weights(checkpoint)
    run = run_config_from_dict(config)
    model = JEPA(run.model)
    model.load_state_dict(weights)
    return model.to(device).eval(), config


def write_outputs(results: dict, out: Path, params: int, command: str) -> None:
    """metrics.txt (the original format), metrics.json and the pictures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L = results["losses"]
    text = "".join(f"{name} val loss: {L[name]}\n" for name in VAL_SETS)
    text += f"# number of trainable parameters of your model: {params:,}\n"
    text += ("# training command to replicate your submitted model (may differ due to random seed, "
             "but performance should be close):\n" + command + "\n")
    atomic.atomic_write_text(out / "metrics.txt", text)
    blob = {"losses": L, "per_timestep": results["per_timestep"], "params": params, "command": command,
            "seconds": results["seconds"], "embedding_precision": results.get("embedding_precision", "fp32"),
            "reference": REFERENCE}
    atomic.atomic_write_text(out / "metrics.json", json.dumps(blob, indent=2))
    _plots(results, out)


def _plots(results: dict, out: Path) -> None:
    from jepa_fast.viz import line_plot, trajectory_grid

    series = {name: (np.arange(len(v)), np.asarray(v)) for name, v in results["per_timestep"].items()}
    line_plot(series, out / "probe_error_per_timestep.png", "timestep", "probe MSE (pixel^2)",
              title="probe error per timestep (rollout from the first frame)")
    for name in ("probe_normal", "probe_wall"):
        s = results["samples"].get(name)
        if not s:
            continue
        data = SplitData(Path(s["store"]), in_ram=False)
        k = len(s["pred"])
        states = np.stack([data.reader.decode(i) for i in range(k)])
        trajectory_grid(states, data.locations[:k], out / f"probe_paths_{name}.png", n_frames=6,
                        title=f"{name}: true path (cyan) vs probed prediction (magenta)", predicted=s["pred"])


def format_table(losses: dict) -> str:
    rows = ["| set | ours (px^2) | reference (px^2) | chance |", "|---|---|---|---|"]
    for name in VAL_SETS:
        rows.append(f"| {name} | {losses[name]:.3f} | {REFERENCE[name]:.3f} | {CHANCE[name]} |")
    return "\n".join(rows)


def run_probe(checkpoint: Path, data_root: Path, out: Path | None = None, cfg: ProbeConfig | None = None,
              device: str | None = None, precision: str = "fp32", overwrite: bool = False) -> dict:
    """``jepa-fast probe``: load a checkpoint (or run folder), probe it, write outputs next to it.

    ``precision``: of the embeddings, 'fp32' (the original evaluator's, default), 'bf16' or 'fp16'. The
    output folder (default <run>/probe) is written whole or not at all, and an existing one is
    replaced only with ``overwrite``.
    """
    from jepa_fast.model import count_parameters

    if precision not in EMBEDDING_PRECISIONS:
        raise JepaFastError(f"--precision {precision}: use {', '.join(EMBEDDING_PRECISIONS)}")
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise JepaFastError(f"--device {device}: use cpu, cuda or cuda:N")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise JepaFastError(f"--device {device}: no CUDA device here; use --device cpu")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise JepaFastError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    ckpt_path = Path(checkpoint)
    out = Path(out) if out else (ckpt_path if ckpt_path.is_dir() and not (ckpt_path / "state.pt").exists()
                                 else ckpt_path.parent.parent) / "probe"
    from jepa_fast.checkpoint import ckpt_dir

    weights = ckpt_path if (ckpt_path / "state.pt").exists() else ckpt_dir(ckpt_path)  # what the probe reads
    atomic.check_apart(out, {"data": data_root, "checkpoints": weights}, "probe folder")
    with lock.exclusive(out, "probe folder"):  # taken first: a second prober is refused before any work
        atomic.check_destination(out, overwrite, "probe folder")
        model, config = load_checkpoint_model(checkpoint, dev)
        results = probe_model(model, data_root, cfg, dev, precision)
        command = f"jepa-fast train <packed data> --preset {config.get('preset', 'custom')}"
        with atomic.atomic_dir(out, overwrite, "probe folder", locked=True) as tmp:
            write_outputs(results, tmp, count_parameters(model), command)
    results["out"] = str(out)
    return results
