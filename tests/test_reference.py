"""The course project's checkpoint format: import/export round trips, its rollout, bad files, --init, and
probe numbers held against a straightforward re-implementation of the original evaluator (fp32, .npy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from jepa_fast import cli
from jepa_fast import probe as P
from jepa_fast.config import ProbeConfig, apply_overrides, run_preset
from jepa_fast.data import pack
from jepa_fast.errors import JepaFastError
from jepa_fast.reference import export_reference, import_reference
from jepa_fast.train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# ---------------------------------------------------------------------------------------------
# the course project's module, written from the table in docs/REFERENCE_CHECKPOINT.md


def _branch() -> nn.Sequential:
    layers, c = [], 1
    for w in (8, 16, 32, 64):  # indices 0/3/6/9 conv, 1/4/7/10 BatchNorm, 2/5/8/11 ReLU
        layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(1024, 64))  # 12, 13, 14


class RefEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder1, self.encoder2 = _branch(), _branch()  # channel 0 (agent), channel 1 (walls)

    def forward(self, x):
        return torch.cat([self.encoder1(x[:, 0:1]), self.encoder2(x[:, 1:2])], dim=1)


class RefJEPA(nn.Module):
    def __init__(self):
        super().__init__()
        self.repr_dim = 128
        self.encoder = RefEncoder()
        self.action_mlp = nn.Linear(2, 128)
        self.predictor_proj = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
        self.target_proj = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
        self.rnn = nn.GRU(256, 128, num_layers=2, batch_first=True, dropout=0.1)
        self.out = nn.Linear(128, 128)

    def forward(self, states, actions):
        """states (B, 1, 2, H, W) raw units, actions (B, T-1, 2) -> (pred_encs (B, T, 128),)."""
        s = self.encoder(states[:, 0])
        preds, h = [s], None
        for t in range(actions.shape[1]):
            _, h = self.rnn(torch.cat([s, self.action_mlp(actions[:, t])], dim=-1)[:, None], h)
            s = self.out(h[-1])
            preds.append(s)
        return (torch.stack(preds, dim=1),)


def _random_reference(seed: int = 0) -> RefJEPA:
    torch.manual_seed(seed)
    m = RefJEPA()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):  # non-trivial running statistics
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(1234)
            elif isinstance(mod, nn.Conv2d) and mod.in_channels == 1:
                mod.weight.mul_(10.0)  # raw inputs are ~0.09: keep the activations in a lively range
    return m.eval()


def _inputs(B=6, T=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    states = torch.rand(B, 1, 2, 65, 65, generator=g) * 0.0942
    return states, torch.randn(B, T - 1, 2, generator=g)


@pytest.fixture()
def ref_file(tmp_path):
    m = _random_reference()
    f = tmp_path / "model_weights.pth"
    torch.save(m.state_dict(), f)
    return f, m


def test_the_table_is_the_published_parameter_count():
    m = RefJEPA()
    trainable = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("target_proj"))
    assert trainable == 477_664 and len(m.state_dict()) == 80


def test_import_then_export_is_bit_exact_and_the_rollout_is_the_files(ref_file, tmp_path):
    f, ref = ref_file
    ckpt_dir = import_reference(f, tmp_path / "run")
    ours, config = P.load_checkpoint_model(ckpt_dir, torch.device("cpu"))
    assert config["model"]["input_scale"] == 1.0  # raw units, exactly as the file computes
    states, actions = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(states, actions), ref(states, actions)[0], rtol=1e-5, atol=1e-5)
    out = export_reference(tmp_path / "run", tmp_path / "back.pth")
    back = RefJEPA()
    back.load_state_dict(torch.load(out, weights_only=True), strict=True)
    original = ref.state_dict()
    for k, v in back.state_dict().items():
        assert v.dtype == original[k].dtype and torch.equal(v, original[k]), k


def test_export_of_a_trained_model_loads_strict_and_rolls_out_the_same(tiny_run, tmp_path):
    ours, _ = P.load_checkpoint_model(tiny_run, torch.device("cpu"))
    assert ours.cfg.input_scale != 1.0  # trained with our input scale: export folds it in
    f = export_reference(tiny_run, tmp_path / "model_weights.pth")
    ref = RefJEPA()
    ref.load_state_dict(torch.load(f, weights_only=True), strict=True)
    states, actions = _inputs(T=17)
    with torch.no_grad():
        torch.testing.assert_close(ref.eval()(states, actions)[0], ours(states, actions), rtol=1e-5, atol=1e-5)


def test_ours_is_refused_unless_the_different_rollout_is_acknowledged(tiny_run_ours, tmp_path, capsys):
    assert cli.main(["export-reference", str(tiny_run_ours), "--out", str(tmp_path / "w.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "residual predictor" in err and "--rollout-differs" in err
    assert not (tmp_path / "w.pth").exists()
    assert cli.main(["export-reference", str(tiny_run_ours), "--out", str(tmp_path / "w.pth"),
                     "--rollout-differs"]) == 0
    RefJEPA().load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True), strict=True)


def _renamed(sd):
    sd = dict(sd)
    sd["rnn.weight_hh_l1_renamed"] = sd.pop("rnn.weight_hh_l1")
    return sd


def _reshaped(sd):
    return {**sd, "out.weight": torch.zeros(128, 64)}


@pytest.mark.parametrize("damage,needle", [
    ("truncate", "model_weights.pth: unreadable weights file"),
    ("rename", "key 'rnn.weight_hh_l1' is missing (expected shape (384, 128))"),
    ("reshape", "key 'out.weight' has shape (128, 64), expected (128, 128)"),
    ("wrapped", None),  # {'model': state_dict} is accepted
])
def test_bad_files_get_one_line_and_write_nothing(ref_file, tmp_path, capsys, damage, needle):
    f, ref = ref_file
    if damage == "truncate":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif damage == "rename":
        torch.save(_renamed(ref.state_dict()), f)
    elif damage == "reshape":
        torch.save(_reshaped(ref.state_dict()), f)
    else:
        torch.save({"model": ref.state_dict(), "epoch": 3}, f)
    before = set(tmp_path.iterdir())
    rc = cli.main(["import-reference", str(f), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    if needle is None:
        assert rc == 0 and (tmp_path / "run" / "config.json").exists()
        return
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert set(tmp_path.iterdir()) == before  # no run folder, no temp folder


def test_train_init_fine_tunes_from_imported_weights(ref_file, tiny_packed, tmp_path):
    f, _ = ref_file
    (tmp_path / "p").symlink_to(tiny_packed)
    import_reference(f, tmp_path / "imported")
    with pytest.raises(JepaFastError, match="model weights only"):
        train(run_preset("tiny"), tmp_path / "p", tmp_path / "imported", resume=True, progress=False)
    with pytest.raises(JepaFastError, match="pass only one"):
        train(run_preset("tiny"), tmp_path / "p", tmp_path / "x", resume=True, init=tmp_path / "imported",
              progress=False)
    start, _ = P.load_checkpoint_model(tmp_path / "imported", torch.device("cpu"))
    for source in (f, tmp_path / "imported"):  # the .pth itself, or the imported run folder
        out = tmp_path / f"ft-{source.name}"
        r = train(apply_overrides(run_preset("tiny"), ["train.max_steps=2", "train.lr=1e-9"]), tmp_path / "p", out,
                  progress=False, init=source)
        assert r["step"] == 2  # a new run: its own step count and schedule
        w0 = start.encoder.branches[0].convs[3].weight
        assert (r["model"].encoder.branches[0].convs[3].weight - w0).abs().max() < 1e-6  # started from the file
        assert r["model"].cfg.input_scale == 1.0  # the model config came with the weights


# ---------------------------------------------------------------------------------------------
# probe numbers against a straightforward evaluator: the model re-run on every batch, fp32, from the .npy files


LOC_MEAN, LOC_STD = torch.tensor([31.5863, 32.0618]), torch.tensor([16.1025, 16.1353])


def _straightforward_probe(model, root, cfg: ProbeConfig) -> dict[str, float]:
    def load(split):
        d = {k: torch.from_numpy(np.load(root / split / f"{k}.npy")) for k in ("states", "actions", "locations")}
        return d["states"].float(), d["actions"], (d["locations"] - LOC_MEAN) / (LOC_STD + 1e-6)

    def embed(states, actions):
        with torch.no_grad():
            return model(states[:, :1], actions)  # fp32, no autocast

    def lr_after(k, total):  # the evaluator's Cosine schedule: warm-up over 10%, cosine to 0.001 x peak
        peak, warm = cfg.lr * cfg.batch_size / 256, int(0.1 * total)
        if k < warm:
            return peak * k / warm
        q = 0.5 * (1 + math.cos(math.pi * (k - warm) / max(1, total - warm)))
        return peak * q + peak * 0.001 * (1 - q)

    out = {}
    for train_split, vals in (("probe_normal/train", {"probe_normal": "probe_normal/val", "probe_wall":
                                                      "probe_wall/val", "wall_other": "probe_wall_other/val"}),
                              ("probe_expert/train", {"expert": "probe_expert/val"})):
        states, actions, target = load(train_split)
        torch.manual_seed(cfg.seed)
        prober = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 2))
        opt = torch.optim.Adam(prober.parameters(), lr=cfg.lr)
        g = torch.Generator().manual_seed(cfg.seed)
        n, T = target.shape[:2]
        steps = n // cfg.batch_size
        total, k = cfg.epochs * steps, 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=g)
            for b in range(steps):
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                enc, tgt = embed(states[idx], actions[idx]), target[idx]
                if T > cfg.sample_timesteps:
                    pick = torch.rand(len(idx), T, generator=g).argsort(dim=1)[:, :cfg.sample_timesteps]
                    enc = torch.gather(enc, 1, pick[..., None].expand(-1, -1, enc.shape[-1]))
                    tgt = torch.gather(tgt, 1, pick[..., None].expand(-1, -1, 2))
                loss = (prober(enc) - tgt).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                k += 1
                for group in opt.param_groups:
                    group["lr"] = lr_after(k - 1, total)
        for name, split in vals.items():
            vs, va, vt = load(split)
            per_batch = []
            for b in range(len(vs) // cfg.batch_size):
                sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
                with torch.no_grad():
                    per_batch.append((prober(embed(vs[sl], va[sl])) - vt[sl]).pow(2).mean(dim=0))  # (T, 2)
            out[name] = float((torch.stack(per_batch).mean(0) * LOC_STD**2).mean())
    return out


@pytest.mark.slow
def test_probe_matches_the_straightforward_evaluator_across_prober_seeds(tmp_path):
    from jepa_fast.config import SimConfig, dataset_preset
    from jepa_fast.data.split import SplitData
    from jepa_fast.hardware import cpu_has_native_bf16
    from jepa_fast.sim.generate import generate_dataset

    # uint8 source data: the store holds it exactly, so any difference left is the probe's own
    raw, root = tmp_path / "raw", tmp_path / "packed"
    generate_dataset(raw, dataset_preset("tiny"), SimConfig(value_scale="uint8"), seed=0, dtype="uint8",
                     progress=False)
    pack.pack_path(raw, root, progress=False)
    # trained in bf16 where the CPU computes it natively (emulated bf16 costs ~20 s here on an AVX2-only CPU);
    # either way the probe must compute its embeddings in fp32, as the original does: checked directly below
    precision = "bf16" if cpu_has_native_bf16() else "no"
    run = apply_overrides(run_preset("tiny"), ["train.max_steps=30", f"train.precision={precision}", "train.lr=3e-3",
                                               "model.input_scale=0.0039"])
    train(run, root, tmp_path / "r", progress=False)
    model, _ = P.load_checkpoint_model(tmp_path / "r", torch.device("cpu"))
    for split in ("probe_wall/val", "probe_expert/val"):
        states = torch.from_numpy(np.load(raw / split / "states.npy")).float()
        actions = torch.from_numpy(np.load(raw / split / "actions.npy"))
        with torch.no_grad():
            want = model(states[:, :1], actions)
        data = SplitData(root / f"{split}.zarr")
        drift = {prec: float((P.SplitEmbeddings(model, data, torch.device("cpu"), prec, ProbeConfig(), True).cache
                              - want).norm() / want.norm()) for prec in ("fp32", "bf16")}
        assert drift["fp32"] < 1e-5 and drift["bf16"] > 1e-3, (split, drift)  # bf16 would be caught
    for seed in (0, 1, 2):
        cfg = ProbeConfig(seed=seed, epochs=10, batch_size=16, lr=2e-2)  # a prober that learns on tiny splits
        ours = P.probe_model(model, root, cfg, torch.device("cpu"))["losses"]
        theirs = _straightforward_probe(model, raw, cfg)
        for name in P.VAL_SETS:
            assert ours[name] == pytest.approx(theirs[name], rel=1e-4), (seed, name, ours[name], theirs[name])


def test_probing_an_imported_checkpoint_end_to_end(ref_file, tiny_root, tmp_path, capsys):
    import json

    f, _ = ref_file
    pack.pack_path(tiny_root, tmp_path / "packed", progress=False)
    assert cli.main(["import-reference", str(f), "--out", str(tmp_path / "theirs")]) == 0
    assert cli.main(["probe", str(tmp_path / "theirs"), "--data", str(tmp_path / "packed")]) == 0
    metrics = json.loads((tmp_path / "theirs" / "probe" / "metrics.json").read_text())
    assert metrics["embedding_precision"] == "fp32" and metrics["params"] == 477_664
    assert set(metrics["losses"]) == set(P.VAL_SETS) and all(math.isfinite(v) for v in metrics["losses"].values())
    assert "| probe_wall |" in capsys.readouterr().out
