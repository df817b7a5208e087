"""``jepa-fast probe``: a checkpoint probed (``probe.py``) and its report written whole: metrics.txt (the
original format), metrics.json, a table, plots.

    jepa-fast probe RUN --data PACKED_ROOT [--precision fp32] [--device cpu] [--out DIR]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jepa_fast import atomic, lock
from jepa_fast import probe as P
from jepa_fast.checkpoint import ckpt_dir
from jepa_fast.config import ProbeConfig
from jepa_fast.data.split import SplitData
from jepa_fast.errors import JepaFastError
from jepa_fast.hardware import keep_freed_memory, resolve_device
from jepa_fast.model import count_parameters


def write_outputs(results: dict, out: Path, params: int, command: str) -> None:
    """metrics.txt (the original format: one 'NAME val loss: X' line per val set), metrics.json, pictures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L = results["losses"]
    text = "".join(f"{name} val loss: {v}\n" for name, v in L.items())
    text += f"# number of trainable parameters of your model: {params:,}\n"
    text += ("# training command to replicate your submitted model (may differ due to random seed, "
             "but performance should be close):\n" + command + "\n")
    atomic.atomic_write_text(out / "metrics.txt", text)
    blob = {"losses": L, "per_target": results.get("per_target", {}), "chance": results.get("chance", {}),
            "per_timestep": results["per_timestep"], "params": params, "command": command,
            "seconds": results["seconds"], "embedding_precision": results.get("embedding_precision", "fp32"),
            "protocol": results.get("protocol", "two-rooms"), "normalisation": results.get("normalisation", {})}
    if blob["protocol"] == "two-rooms":
        blob["reference"] = P.REFERENCE
    atomic.atomic_write_text(out / "metrics.json", json.dumps(blob, indent=2))
    _plots(results, out)


def _plots(results: dict, out: Path) -> None:
    from jepa_fast.viz import line_plot, target_traces, trajectory_grid

    two_rooms = results.get("protocol", "two-rooms") == "two-rooms"
    series = {name: (np.arange(len(v)), np.asarray(v)) for name, v in results["per_timestep"].items()}
    unit = "pixel^2" if two_rooms else "relative to a constant prober"
    line_plot(series, out / "probe_error_per_timestep.png", "timestep", f"probe MSE ({unit})",
              title="probe error per timestep (rollout from the first frame)")
    for name, s in results["samples"].items():
        data = SplitData(Path(s["store"]), s["seq_len"] if not two_rooms else 0, in_ram=False)
        k = len(s["pred"])
        true = data.window_targets(np.arange(k))
        if two_rooms and name in ("probe_normal", "probe_wall"):
            states = np.stack([data.decode_window(i) for i in range(k)])
            trajectory_grid(states, true, out / f"probe_paths_{name}.png", n_frames=6,
                            title=f"{name}: true path (cyan) vs probed prediction (magenta)", predicted=s["pred"])
        elif not two_rooms:
            target_traces(true, s["pred"], list(data.spec.target_names), out / f"probe_targets_{name}.png",
                          title=f"{name}: true (solid) vs probed (dashed) targets, first {k} windows")


def format_table(results: dict) -> str:
    """The probe's numbers as a markdown table: two-rooms next to the published ones, else per target."""
    L = results["losses"]
    if results.get("protocol", "two-rooms") == "two-rooms":
        rows = ["| set | ours (px^2) | reference (px^2) | chance (constant prober) |", "|---|---|---|---|"]
        for name in L:
            chance = results.get("chance", {}).get(name)
            c = f"{sum(chance.values()) / len(chance):.1f}" if chance else P.CHANCE.get(name, "-")
            rows.append(f"| {name} | {L[name]:.3f} | {P.REFERENCE.get(name, float('nan')):.3f} | {c} |")
        return "\n".join(rows)
    rows = ["| set | target | probe MSE | chance MSE (constant prober) | ratio |", "|---|---|---|---|---|"]
    for name in L:
        for t, v in results["per_target"][name].items():
            c = results["chance"][name][t]
            rows.append(f"| {name} | {t} | {v:.4g} | {c:.4g} | {v / c if c > 0 else float('nan'):.3f} |")
        rows.append(f"| {name} | (all, relative) | {L[name]:.4f} | 1 | |")
    return "\n".join(rows)


def run_probe(checkpoint: Path, data_root: Path, out: Path | None = None, cfg: ProbeConfig | None = None,
              device: str | None = None, precision: str = "fp32", overwrite: bool = False) -> dict:
    """``jepa-fast probe``: load a checkpoint (or run folder), probe it, write outputs next to it.

    ``precision``: of the embeddings, 'fp32' (the original evaluator's, default), 'bf16' or 'fp16'. The
    output folder (default <run>/probe) is written whole or not at all, and an existing one is
    replaced only with ``overwrite``.
    """
    if precision not in P.EMBEDDING_PRECISIONS:
        raise JepaFastError(f"--precision {precision}: use {', '.join(P.EMBEDDING_PRECISIONS)}")
    dev = resolve_device(device)
    keep_freed_memory()  # large batches on a CPU: no page faults per step (jepa_fast.hardware)
    ckpt_path = Path(checkpoint)
    out = Path(out) if out else (ckpt_path if ckpt_path.is_dir() and not (ckpt_path / "state.pt").exists()
                                 else ckpt_path.parent.parent) / "probe"
    weights = ckpt_path if (ckpt_path / "state.pt").exists() else ckpt_dir(ckpt_path)  # what the probe reads
    atomic.check_apart(out, {"data": data_root, "checkpoints": weights}, "probe folder")
    with lock.exclusive(out, "probe folder"):  # taken first: a second prober is refused before any work
        atomic.check_destination(out, overwrite, "probe folder")
        model, config = P.load_checkpoint_model(checkpoint, dev)
        seq_len = (config.get("data") or {}).get("seq_len", 0)
        results = P.probe_model(model, data_root, cfg, dev, precision, seq_len)
        command = f"jepa-fast train <packed data> --preset {config.get('preset', 'custom')}"
        with atomic.atomic_dir(out, overwrite, "probe folder", locked=True) as tmp:
            write_outputs(results, tmp, count_parameters(model), command)
    results["out"] = str(out)
    return results
