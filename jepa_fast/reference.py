"""The course project's checkpoint format (``model_weights.pth``): import into and export from ``reference``.

The layout (docs/REFERENCE_CHECKPOINT.md) is the ``state_dict()`` of its JEPA module: the
same tensors as our ``reference`` preset under other names, in **raw value units** (the model applies
no input scaling). The map between the two names every key; shapes come from our model built with
the reference preset, so a file either matches key for key and shape for shape, or is refused with
the first key that does not. (The document's prose counts 94 entries, its table lists the 80 this map
holds, which are also the 477,664 parameters plus buffers; a file with keys outside the table is
refused, naming the first, since weights we cannot place would silently change the rollout.)

Input units: our model multiplies raw frames by ``input_scale`` before the first convolutions. An
imported model gets ``input_scale = 1`` (raw units, exactly as the file computes); an exported model
has its scale folded into the first convolution of each branch (conv(s * x) = (s * w) * x + b), so
the file computes our rollout on raw frames, equal in float32 to within rounding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from pathlib import Path

import torch

from jepa_fast import atomic
from jepa_fast import checkpoint as ckpt
from jepa_fast.config import ModelConfig, run_preset, to_dict
from jepa_fast.errors import JepaFastError
from jepa_fast.model import JEPA, count_parameters
from jepa_fast.spec import TWO_ROOMS, DataSpec

# ours -> theirs, by prefix; the order only matters for error messages (the first mismatch is named)
_PREFIXES = [
    ("encoder.branches.0.convs.", "encoder.encoder1."),  # the agent channel's branch
    ("encoder.branches.0.fc.", "encoder.encoder1.14."),
    ("encoder.branches.1.convs.", "encoder.encoder2."),  # the walls channel's branch (static)
    ("encoder.branches.1.fc.", "encoder.encoder2.14."),
    ("action_embed.", "action_mlp."),
    ("projector.", "predictor_proj."),
    ("target_projector.", "target_proj."),
    ("predictor.", "rnn."),
    ("predictor_out.", "out."),
]
_FIRST_CONVS = ("encoder.branches.0.convs.0.weight", "encoder.branches.1.convs.0.weight")
_BUFFERS = ("input_scale", "input_shift")  # ours only: the file's model takes raw units
_ARCH_FIELDS = ("encoder_widths", "repr_dim", "action_dim", "hidden_dim", "gru_layers", "proj_dim")


def _their_name(ours: str) -> str:
    for a, b in _PREFIXES:
        if ours.startswith(a):
            return b + ours[len(a):]
    raise KeyError(ours)


def reference_model_config() -> ModelConfig:
    """Our ``reference`` preset in the file's units: raw frames in (input_scale 1)."""
    return dataclasses.replace(run_preset("reference").model, input_scale=1.0)


def layout() -> dict[str, tuple[str, torch.Size]]:
    """The file's keys -> (our key, shape), in the order of our state dict."""
    ours = JEPA(reference_model_config()).state_dict()
    return {_their_name(k): (k, v.shape) for k, v in ours.items() if k not in _BUFFERS}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``model_weights.pth``: a bare state dict, or a dict with a 'model'/'state_dict' entry."""
    path = Path(path)
    if not path.is_file():
        raise JepaFastError(f"{path}: no such file; expected the course project's model_weights.pth")
    obj = ckpt.load_file(path, "weights file")  # tensors and plain values only: never runs pickled code
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise JepaFastError(f"{path}: not a state dict of tensors (nor a dict with a 'model' or 'state_dict' "
                            "entry holding one)")
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items()}


def check_weights(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Every key of the layout present with its shape, nothing else, every value finite."""
    expect = layout()
    for key, (_, shape) in expect.items():
        if key not in sd:
            raise JepaFastError(f"{path}: key {key!r} is missing (expected shape {tuple(shape)}); not the course "
                                "project's model_weights.pth layout")
        if sd[key].shape != shape:
            raise JepaFastError(f"{path}: key {key!r} has shape {tuple(sd[key].shape)}, expected {tuple(shape)}")
        if sd[key].is_floating_point() and not torch.isfinite(sd[key]).all():
            raise JepaFastError(f"{path}: key {key!r} holds NaN or Inf")
    extra = [k for k in sd if k not in expect]
    if extra:
        raise JepaFastError(f"{path}: unexpected key {extra[0]!r} ({len(extra)} in all) is not in the course "
                            "project's layout; refusing to drop weights")


def to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's state dict -> ours (input_scale 1: raw units)."""
    out = {ours: sd[theirs].clone() for theirs, (ours, _) in layout().items()}
    out["input_scale"], out["input_shift"] = torch.ones(2), torch.zeros(2)
    return out


def to_theirs(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the file's, with our input scale folded into the first convolutions (float32)."""
    scale = ours.get("input_scale", torch.ones(2)).float()
    shift = ours.get("input_shift", torch.zeros(2)).float()
    if bool((shift != 0).any()):  # zero padding sees shifted inputs: a shift cannot be folded exactly
        raise JepaFastError("this model shifts its inputs (model.input_norm=store); the course project's model takes "
                            "raw frames with no shift, so it cannot be exported to that format")
    out = {}
    for theirs, (key, _) in layout().items():
        v = ours[key].detach().cpu()
        v = v.float() if v.is_floating_point() else v
        if key in _FIRST_CONVS:
            c = 0 if key.startswith("encoder.branches.0") else 1
            v = v * scale[c] if float(scale[c]) != 1.0 else v
        out[theirs] = v.contiguous().clone()
    return out


def import_reference(weights: Path, out: Path, overwrite: bool = False) -> Path:
    """``jepa-fast import-reference``: a checkpoint folder under ``out`` that probe and train --init read."""
    weights, out = Path(weights), Path(out)
    atomic.check_apart(out, {"weights file": weights}, "run folder")
    sd = read_weights(weights)
    check_weights(sd, weights)
    model = JEPA(reference_model_config())
    model.load_state_dict(to_ours(sd), strict=True)
    run = dataclasses.replace(run_preset("reference"), model=reference_model_config())
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    state = {"model": model.state_dict(), "config": to_dict(run), "step": 0, "params": count_parameters(model),
             "imported_from": {"path": str(weights.resolve()), "sha256": digest}}
    with atomic.atomic_dir(out, overwrite, "run folder") as tmp:
        atomic.atomic_write_text(tmp / "config.json", json.dumps(to_dict(run), indent=2))
        ckpt.save(tmp, 0, state, 0, 1, lambda: None, keep=1)
    return ckpt.latest(out)


def check_exportable(model_cfg: dict, spec: DataSpec, where: Path, rollout_differs: bool) -> None:
    if (spec.channels, spec.action_size, spec.static_channels) != (2, 2, (False, True)):
        raise JepaFastError(f"{where}: trained on {spec.channels}-channel frames with {spec.action_size}-d actions; "
                            "the course project's format holds the two-rooms model only (2 channels, the second "
                            "static, 2-d actions)")
    ref = reference_model_config()
    for name in _ARCH_FIELDS:
        got, want = model_cfg.get(name), getattr(ref, name)
        if (tuple(got) if isinstance(got, list) else got) != want:
            raise JepaFastError(f"{where}: model.{name}={got}, the course project's is {want}; only the reference "
                                "architecture can be exported to its format")
    if model_cfg.get("residual_predictor") and not rollout_differs:
        raise JepaFastError(f"{where}: trained with a residual predictor (model.residual_predictor, the 'ours' "
                            "preset); the course project's rollout is not residual, so its evaluator would compute a "
                            "different function. Pass --rollout-differs to export the weights anyway")


def export_reference(run: Path, out: Path, rollout_differs: bool = False, overwrite: bool = False) -> Path:
    """``jepa-fast export-reference``: our checkpoint (or run folder) -> the course project's model_weights.pth."""
    run, out = Path(run), Path(out)
    atomic.check_apart(out, {"checkpoints": run if (run / "state.pt").exists() else ckpt.ckpt_dir(run)}, "export")
    weights, config, spec = ckpt.load_model_weights(run)
    check_exportable(config["model"], spec, run, rollout_differs)
    if out.is_dir():
        raise JepaFastError(f"{out} is a folder; give the file to write, e.g. {out / 'model_weights.pth'}")
    if out.exists() and not overwrite:
        raise JepaFastError(f"{out} exists; pass --overwrite to replace it")
    buf = io.BytesIO()
    torch.save(to_theirs(weights), buf)
    atomic.atomic_write_bytes(out, buf.getvalue())  # temp file + rename: never a half-written file
    return out


def load_init(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig, DataSpec, str]:
    """Weights to start a fine-tune from (``train --init``): our checkpoint or run folder, or a reference .pth.

    Returns (our state dict, the model config those weights need, the data spec they were trained on, a
    description).
    """
    from jepa_fast.config import run_config_from_dict

    path = Path(path)
    if path.is_file():
        sd = read_weights(path)
        check_weights(sd, path)
        return to_ours(sd), reference_model_config(), TWO_ROOMS, f"the course project's weights {path}"
    weights, config, spec = ckpt.load_model_weights(path)
    return weights, run_config_from_dict(config).model, spec, f"checkpoint {path}"
