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

Other data (a store whose spec is not two-rooms): the same prober, schedule and evaluation regress the
store's K targets on windows of ``seq_len`` frames, normalised with the probe-train split's mean and
std; each target's error is reported in its own units, and the headline relative to a constant prober
(each target's MSE over that of predicting the probe-train mean, averaged over targets: 1 is chance, 0
perfect), since targets in pixels and radians do not average.

Fast: the model is frozen, so each split's embeddings are computed once (batched) and the prober
trains on the cache. ``ProbeConfig(cache=False)`` re-runs the model on every prober batch instead, as
the original does; a test shows both give the same numbers.

Precision: embeddings are computed in fp32, as the original evaluator does, whatever precision the
model trained in. A 16-step GRU rollout under bf16 autocast moves the embeddings ~9% (relative L2)
and the course project's published model's probe_wall MSE from 6.2 to 7.7; a lower precision is
used only on request (``--precision bf16``) and recorded in metrics.json.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from jepa_fast.config import ProbeConfig
from jepa_fast.data.split import SplitData
from jepa_fast.errors import JepaFastError
from jepa_fast.spec import TWO_ROOMS, DataSpec

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


@dataclasses.dataclass(frozen=True)
class TargetNorm:
    """How the prober's targets are normalised: (t - mean) / (std + 1e-6) per target; an MSE in
    normalised units times std^2 is in the targets' own units (the original evaluator's Normalizer)."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _t(self, values, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def normalize(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self._t(self.mean, t)) / (self._t(self.std, t) + 1e-6)

    def unnormalize(self, t: torch.Tensor) -> torch.Tensor:
        return t * (self._t(self.std, t) + 1e-6) + self._t(self.mean, t)

    def unnormalize_mse(self, mse: torch.Tensor) -> torch.Tensor:
        """(..., K) per-target MSE in normalised units -> the targets' units (x std^2 per target)."""
        return mse * self._t(self.std, mse) ** 2

    @staticmethod
    def of(targets: np.ndarray, names: tuple[str, ...]) -> TargetNorm:
        """The statistics of (N, T, K) targets (the probe-train split's), over every frame."""
        flat = targets.reshape(-1, targets.shape[-1]).astype(np.float64)
        return TargetNorm(tuple(names), tuple(flat.mean(0).tolist()), tuple(flat.std(0).tolist()))


TWO_ROOMS_TARGETS = TargetNorm(("agent_x", "agent_y"), LOCATION_MEAN, LOCATION_STD)
"""The original protocol's constants for the agent's (x, y)."""


def make_prober(D: int, cfg: ProbeConfig, K: int = 2) -> nn.Module:
    """Linear(D, hidden) - ReLU - Linear(hidden, K), initialised from cfg.seed (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return nn.Sequential(nn.Linear(D, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, K))


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
    """Rollout embeddings of a split's windows, either cached (computed once) or recomputed per request."""

    def __init__(self, model: nn.Module, data: SplitData, device: torch.device, precision: str,
                 cfg: ProbeConfig, cache: bool):
        self.model, self.data, self.device, self.cfg = model, data, device, cfg
        self.precision = precision
        if not data.has_targets:
            raise JepaFastError(f"{data.path}: has no probe targets; pack it with targets (.npy: locations.npy or "
                                "targets.npy; HDF5: --targets KEY)")
        self.n, self.T = data.n, data.T
        self.targets = torch.from_numpy(data.window_targets(np.arange(self.n)))  # (N, T, K) float32
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
        actions = torch.from_numpy(d.window_actions(idx)).to(self.device)  # (B, T-1, A)
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


def train_prober(emb: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor, D: int, cfg: ProbeConfig,
                 norm: TargetNorm = TWO_ROOMS_TARGETS) -> tuple[nn.Module, list[float]]:
    """Train a prober on (embeddings, targets (N, T, K)) of one split; returns it and its per-step losses."""
    n, T, K = targets.shape
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise JepaFastError(f"probe split has {n} windows, fewer than one batch of {cfg.batch_size}")
    total = cfg.epochs * steps_per_epoch
    lrs = step_lrs(total, cfg)
    prober = make_prober(D, cfg, K)
    opt = torch.optim.Adam(prober.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    target_all = norm.normalize(targets)
    losses, k = [], 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            enc = emb(idx)  # (B, T, D)
            target = target_all[idx]  # (B, T, K)
            if cfg.sample_timesteps < T:
                # per sample, sample_timesteps distinct timesteps (a random permutation's head)
                pick = torch.rand(len(idx), T, generator=g).argsort(dim=1)[:, :cfg.sample_timesteps]
                enc = torch.gather(enc, 1, pick[..., None].expand(-1, -1, enc.shape[-1]))
                target = torch.gather(target, 1, pick[..., None].expand(-1, -1, K))
            for group in opt.param_groups:
                group["lr"] = lrs[k]
            loss = (prober(enc) - target).pow(2).mean(dim=0).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            k += 1
    return prober, torch.stack(losses).tolist()


@dataclasses.dataclass
class Scores:
    """A prober's error on one val split."""

    loss: float
    """Two-rooms: MSE in pixel^2, averaged over x and y (the original number); other data: each target's
    MSE over a constant prober's (the probe-train mean), averaged over targets: 1 is chance, 0 perfect."""
    per_timestep: np.ndarray  # (T,) the same, per timestep
    per_target: dict[str, float]  # each target's MSE in its own units, averaged over timesteps
    chance: dict[str, float]  # the same for a constant prober predicting the probe-train mean
    first: torch.Tensor  # predicted targets of the first batch, in the targets' units


@torch.no_grad()
def evaluate(prober: nn.Module, emb: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
             cfg: ProbeConfig, norm: TargetNorm = TWO_ROOMS_TARGETS, drop_last: bool = True) -> Scores:
    """The original evaluation: per-timestep MSE in normalised units, averaged over batches (the last
    incomplete one dropped; with ``drop_last`` False it counts by its size), x std^2 per target."""
    n = targets.shape[0]
    stops = list(range(cfg.batch_size, n + 1, cfg.batch_size))
    if not drop_last and (not stops or stops[-1] < n):
        stops.append(n)
    if not stops:
        raise JepaFastError(f"probe val split has {n} windows, fewer than one batch of {cfg.batch_size}")
    per_batch, sizes, first, a = [], [], None, 0
    for b in stops:
        idx = torch.arange(a, b)
        pred = prober(emb(idx))  # (B, T, K) normalised
        if first is None:
            first = norm.unnormalize(pred)
        per_batch.append((pred - norm.normalize(targets[idx])).pow(2).mean(dim=0))  # (T, K)
        sizes.append(b - a)
        a = b
    stacked = torch.stack(per_batch)
    if len(set(sizes)) == 1:
        mse = stacked.mean(dim=0)  # (T, K): the original's mean of batch means
    else:
        w = torch.tensor(sizes, dtype=stacked.dtype) / sum(sizes)
        mse = (stacked * w.view(-1, 1, 1)).sum(dim=0)
    units = norm.unnormalize_mse(mse)  # (T, K)
    seen = targets[:a].double()
    const = (seen - torch.tensor(norm.mean, dtype=torch.float64)).pow(2).mean(dim=(0, 1))  # (K,) a constant prober's
    if norm is TWO_ROOMS_TARGETS:
        per_t = units.mean(dim=-1)  # pixel^2, averaged over x and y
    else:
        per_t = (units.double() / const.clamp_min(1e-12)).mean(dim=-1).float()  # relative to the constant prober
    return Scores(float(per_t.mean()), per_t.numpy(), dict(zip(norm.names, units.mean(dim=0).tolist())),
                  dict(zip(norm.names, const.tolist())), first)


# ---------------------------------------------------------------------------------------------
# the whole evaluation


@dataclasses.dataclass(frozen=True)
class ProbeGroup:
    """One prober: trained on ``train``, evaluated on each of ``vals`` (name -> store)."""

    name: str
    train: Path
    vals: dict[str, Path]


def _store(p: Path, root: Path) -> Path:
    if not (p / "zarr.json").exists():
        raise JepaFastError(f"{p}: missing; probing needs all probe splits packed under {root} "
                            "(jepa-fast generate --out RAW && jepa-fast pack RAW " + str(root) + ")")
    return p


def probe_groups(root: Path, spec: DataSpec) -> list[ProbeGroup]:
    """What to probe under a packed dataset root.

    Two-rooms data: the original protocol's sets (a prober on probe_normal/train evaluated on probe_normal,
    probe_wall and wall_other; one on probe_expert/train evaluated on expert). Other data: every folder
    under the root holding ``train.zarr`` and ``val.zarr`` is a group (its prober trains on train, is
    evaluated on val, reported under the folder's name); with none, the root's own train.zarr and val.zarr."""
    root = Path(root)
    if spec.protocol == "two-rooms":
        groups = []
        for g, train_split in TRAIN_SETS.items():
            vals = {name: _store(root / f"{split}.zarr", root) for name, (gg, split) in VAL_SETS.items() if gg == g}
            groups.append(ProbeGroup(g, _store(root / f"{train_split}.zarr", root), vals))
        return groups
    if not root.is_dir():
        raise JepaFastError(f"{root}: no such packed dataset folder")
    found = [ProbeGroup(d.name, d / "train.zarr", {d.name: d / "val.zarr"}) for d in sorted(root.iterdir())
             if (d / "train.zarr" / "zarr.json").exists() and (d / "val.zarr" / "zarr.json").exists()]
    if not found and (root / "train.zarr" / "zarr.json").exists() and (root / "val.zarr" / "zarr.json").exists():
        found = [ProbeGroup("val", root / "train.zarr", {"val": root / "val.zarr"})]
    if not found:
        raise JepaFastError(f"{root}: no probe splits: probing needs a folder (e.g. {root / 'probe'}) holding "
                            "train.zarr (the prober's training episodes) and val.zarr (held-out ones), packed with "
                            "targets")
    return found


def _open(store: Path, spec: DataSpec, seq_len: int) -> SplitData:
    data = SplitData(store, seq_len if spec.protocol != "two-rooms" else 0)
    got = data.spec
    for f in ("channels", "height", "width", "action_size"):
        if getattr(got, f) != getattr(spec, f):
            raise JepaFastError(f"{store}: {f} {getattr(got, f)}, the model was trained on {getattr(spec, f)}; probe "
                                "it on data like its training data")
    return data


def probe_model(model: nn.Module, data_root: Path, cfg: ProbeConfig | None = None, device: torch.device | None = None,
                precision: str = "fp32", seq_len: int = 0) -> dict:
    """Run the protocol on any model with the evaluator interface; returns losses and per-timestep curves.

    The model's ``spec`` (two-rooms when it has none) says what data it takes; ``seq_len`` is the window
    length for data other than two-rooms (0: ``cfg.seq_len``, then the episodes' own length)."""
    cfg = cfg or ProbeConfig()
    if precision not in EMBEDDING_PRECISIONS:
        raise JepaFastError(f"embedding precision {precision!r}: use {', '.join(EMBEDDING_PRECISIONS)}")
    device = device or next(model.parameters()).device
    spec = getattr(model, "spec", TWO_ROOMS)
    groups = probe_groups(data_root, spec)
    seq_len = cfg.seq_len or seq_len
    model.eval()
    t0 = time.perf_counter()
    results: dict = {"losses": {}, "per_timestep": {}, "per_target": {}, "chance": {}, "samples": {},
                     "embedding_precision": precision, "protocol": spec.protocol, "normalisation": {}}
    two_rooms = spec.protocol == "two-rooms"
    for group in groups:
        train_data = _open(group.train, spec, seq_len)
        if train_data.has_targets and train_data.n < cfg.batch_size:
            raise JepaFastError(f"{group.train}: {train_data.n} windows of {train_data.T} frames, fewer than the "
                                f"prober's batch of {cfg.batch_size}: pack more episodes into it, or probe shorter "
                                "windows with --seq-len")
        tr = SplitEmbeddings(model, train_data, device, precision, cfg, cfg.cache)
        names = tr.data.spec.target_names or tuple(f"target_{k}" for k in range(tr.targets.shape[-1]))
        norm = TWO_ROOMS_TARGETS if two_rooms else TargetNorm.of(tr.targets.numpy(), names)
        results["normalisation"][group.name] = {"names": list(norm.names), "mean": list(norm.mean),
                                                "std": list(norm.std)}
        prober, train_losses = train_prober(tr, tr.targets, tr.dim, cfg, norm)
        results.setdefault("prober_train_loss", {})[group.name] = train_losses[-1]
        for name, store in group.vals.items():
            va = SplitEmbeddings(model, _open(store, spec, seq_len), device, precision, cfg, cfg.cache)
            sc = evaluate(prober, va, va.targets, cfg, norm, drop_last=two_rooms)
            results["losses"][name] = sc.loss
            results["per_timestep"][name] = sc.per_timestep.tolist()
            results["per_target"][name] = sc.per_target
            results["chance"][name] = sc.chance
            results["samples"][name] = {"pred": sc.first[:4].numpy(), "store": str(store), "seq_len": va.T}
    results["seconds"] = time.perf_counter() - t0
    return results


def load_checkpoint_model(checkpoint: Path, device: torch.device) -> tuple[nn.Module, dict]:
    from jepa_fast.checkpoint import load_model_weights
    from jepa_fast.config import run_config_from_dict
    from jepa_fast.model import JEPA

    weights, config, spec = load_model_weights(checkpoint)
    run = run_config_from_dict(config)
    model = JEPA(run.model, spec)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise JepaFastError(f"{checkpoint}: the weights do not fit the model its config describes "
                            f"({str(e).splitlines()[0][:160]})") from None
    return model.to(device).eval(), config
