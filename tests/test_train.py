"""The training loop: learning, bf16, exact resume, two processes, SIGTERM, NaN, one compiled graph."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from jepa_fast import checkpoint as ckpt
from jepa_fast.config import LossConfig, apply_overrides, run_preset
from jepa_fast.errors import JepaFastError
from jepa_fast.train import ForwardLoss, train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def packed(tiny_packed):
    return tiny_packed


def _run(**train_kw):
    base = run_preset("tiny")
    return dataclasses.replace(base, train=dataclasses.replace(base.train, **train_kw))


def _params(run_dir):
    state, _ = ckpt.load(ckpt.latest(run_dir), 0)
    return state["model"]


def test_loss_decreases(packed, tmp_path):
    run = _run(max_steps=40, log_every=5, lr=2e-3)
    train(run, packed, tmp_path / "r", progress=False)
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    first, last = recs[0]["loss"], recs[-1]["loss"]
    assert last < 0.9 * first, (first, last)
    assert (tmp_path / "r" / "loss.png").exists() and (tmp_path / "r" / "config.json").exists()
    state, _ = ckpt.load(ckpt.latest(tmp_path / "r"), 0)
    assert not any("_orig_mod" in k or k.startswith("module.") for k in state["model"])
    assert state["step"] == 40 and state["sampler"]["step"] >= 0 and state["config"]["preset"] == "tiny"
    assert "target_projector.0.weight" in state["model"]  # the EMA branch is saved too


def test_bf16_autocast_on_cpu(packed, tmp_path, monkeypatch):
    seen = {}
    import jepa_fast.model as model_mod

    real = model_mod.ConvBranch.forward

    def spy(self, x):
        out = real(self, x)
        seen["dtype"] = out.dtype
        return out

    monkeypatch.setattr(model_mod.ConvBranch, "forward", spy)
    out = train(_run(max_steps=3, precision="bf16"), packed, tmp_path / "r", progress=False)
    assert seen["dtype"] == torch.bfloat16
    assert math.isfinite(out["last"]["loss"])


def test_interrupted_and_resumed_equals_uninterrupted(packed, tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        run = apply_overrides(_run(max_steps=8, log_every=2), ["data.augment.flip_lr=0.5", "data.augment.noise_p=0.5"])
        train(run, packed, tmp_path / "full", progress=False)
        out = train(run, packed, tmp_path / "cut", stop_at_step=3, progress=False)
        assert out["step"] == 3
        train(run, packed, tmp_path / "cut", resume=True, progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    a, b = _params(tmp_path / "full"), _params(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_refuses_to_overwrite_a_run_and_resume_needs_one(packed, tiny_run, tmp_path):
    shutil.copytree(tiny_run, tmp_path / "r")
    with pytest.raises(JepaFastError, match="pass --resume"):
        train(_run(max_steps=2), packed, tmp_path / "r", progress=False)
    with pytest.raises(JepaFastError, match="no checkpoint"):
        train(_run(max_steps=2), packed, tmp_path / "empty", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(packed, tmp_path, monkeypatch):
    import jepa_fast.train as train_mod

    real = train_mod.jepa_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        if calls["n"] > 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(train_mod, "jepa_loss", poisoned)
    run = _run(max_steps=10, log_every=2, save_every=4)
    with pytest.raises(JepaFastError, match=r"NaN/Inf between steps 5 and 6.*step_0000004"):
        train(run, packed, tmp_path / "r", progress=False)
    assert ckpt.latest(tmp_path / "r").name == "step_0000004"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(packed, tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "jepa_fast", "train", str(packed), "--preset", "tiny", "--steps", "100000",
           "--out", str(out), "--no-progress", "--set", "train.log_every=1",
           "--set", "train.compile=off"]  # 100,000 steps would compile under auto on a CPU with native bf16
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, text
    assert "SIGTERM: checkpoint saved" in text
    saved = ckpt.latest(out)
    step = int(saved.name.split("_")[1])
    assert 0 < step < 100000
    # and the run continues from there
    r = train(apply_overrides(_run(max_steps=100000, compile="off"), []), packed, out, resume=True,
              stop_at_step=step + 2, progress=False)
    assert r["step"] == step + 2


@pytest.mark.parametrize("args,needle", [
    (["--set", "train.lr=-1"], "train.lr=-1.0: must be > 0"),
    (["--set", "train.bogus=1"], "unknown field 'bogus'"),
    (["--set", "data.batch_size=abc"], "data.batch_size=abc"),
    (["--preset", "huge"], "preset 'huge': unknown"),
    (["--batch-size", "999"], "batch size 999 is larger than the split"),
])
def test_train_cli_bad_config_is_one_line(packed, tmp_path, capsys, args, needle):
    from jepa_fast import cli

    assert cli.main(["train", str(packed), "--out", str(tmp_path / "r"), "--preset", "tiny", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_compiled_step_is_one_graph():
    """Dynamo traces the whole step (encoder, GRU, projectors, loss) with fullgraph=True: no break."""
    from jepa_fast.config import model_preset
    from jepa_fast.model import JEPA

    torch._dynamo.reset()
    torch._dynamo.config.allow_rnn = True
    model = JEPA(model_preset("reference"))
    B, T = 4, 5
    states = torch.randint(0, 255, (B, T, 2, 65, 65), dtype=torch.uint8)
    args = (states, torch.randn(B, T - 1, 2), torch.full((2,), 0.00037), torch.ones(B), torch.zeros(B))
    for impl, prediction in (("torch", "teacher"), ("triton", "teacher"), ("torch", "rollout")):
        fn = torch.compile(ForwardLoss(model, LossConfig(impl=impl), prediction), fullgraph=True, backend="eager")
        terms = fn(*args)
        terms["loss"].backward()
        assert torch.isfinite(terms["loss"])


_TWO_RANKS = textwrap.dedent("""
    import json, os, sys, torch
    import jepa_fast.train as T
    from jepa_fast.config import run_preset, apply_overrides
    real = T.build_loader
    seen = []
    class Recording:
        def __init__(self, inner):
            self.inner, self.sampler, self.mode = inner, inner.sampler, inner.mode
        def __len__(self):
            return len(self.inner)
        def __iter__(self):
            for b in self.inner:
                seen.extend(b.indices.tolist())
                yield b
    T.build_loader = lambda *a, **k: Recording(real(*a, **k))
    run = apply_overrides(run_preset("tiny"), ["train.max_steps=6", "data.batch_size=8"])
    out = T.train(run, sys.argv[1], sys.argv[2], progress=False)
    rank = int(os.environ["RANK"])
    # parameters (trainable + EMA target); BatchNorm running stats are per-rank buffers that DDP
    # re-broadcasts from rank 0 at every forward, and rank 0's are the ones checkpointed
    params = {k: v.tolist() for k, v in out["model"].named_parameters()}
    json.dump({"seen": seen, "params": params}, open(os.path.join(sys.argv[2], f"rank_{rank}.json"), "w"))
""")


@pytest.mark.slow
def test_two_processes_see_disjoint_data_and_end_identical(packed, tmp_path):
    script = tmp_path / "two.py"
    script.write_text(_TWO_RANKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29533", str(script), str(packed), str(tmp_path / "r")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0 = json.loads((tmp_path / "r" / "rank_0.json").read_text())
    r1 = json.loads((tmp_path / "r" / "rank_1.json").read_text())
    assert len(r0["seen"]) == len(r1["seen"]) == 6 * 8
    assert not set(r0["seen"]) & set(r1["seen"])  # disjoint shards
    assert r0["params"] == r1["params"]  # DDP kept the replicas identical, EMA target included
    assert ckpt.load(ckpt.latest(tmp_path / "r"), 0)[0]["world_size"] == 2
    assert (ckpt.latest(tmp_path / "r") / "rng_1.pt").exists()


def test_cli_precedence_is_defaults_preset_flags_then_set(tmp_path):
    """--augment (a flag) must not overwrite --set data.augment.* (applied last), whatever their order."""
    from jepa_fast import cli

    parser = cli.build_parser()
    args = parser.parse_args(["train", "d", "--preset", "tiny", "--set", "data.augment.flip_lr=0.25",
                              "--augment", "full", "--lr", "0.01", "--set", "train.lr=0.02", "--seed", "7"])
    run = cli.config_from_args(args)
    assert run.data.augment.flip_lr == 0.25  # --set wins over the --augment preset
    assert run.data.augment.flip_ud == 0.5 and run.data.augment.noise_p == 0.5  # the rest of --augment full
    assert run.train.lr == 0.02  # --set wins over --lr
    assert run.train.seed == 7 and run.data.seed == 7
    assert run.train.max_steps == 6  # the preset's value where nothing overrides it


def _eager_compile(monkeypatch):
    """torch.compile with Dynamo tracing (fullgraph checks included) and no Inductor codegen: seconds, not minutes."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, **{**kw, "backend": "eager"}))
    torch._dynamo.reset()


def test_compiled_accelerate_bf16_step_traces_as_one_graph(packed, tmp_path, monkeypatch):
    """The loop's own path: the Accelerate-prepared module (bf16 autocast wrapper) compiled with fullgraph=True."""
    _eager_compile(monkeypatch)
    out = train(_run(max_steps=3, precision="bf16", compile="on", log_every=1), packed, tmp_path / "r",
                progress=False)
    assert out["compile_s"] is not None and out["step"] == 3
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert "frames_per_s" not in recs[0] and "frames_per_s" in recs[1]  # step 1 = compilation: no throughput


def test_nan_at_the_compiled_first_step_is_caught(packed, tmp_path, monkeypatch):
    import jepa_fast.train as train_mod

    _eager_compile(monkeypatch)
    real = train_mod.jepa_loss

    def poisoned(*a, **k):
        out = real(*a, **k)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(train_mod, "jepa_loss", poisoned)
    with pytest.raises(JepaFastError, match=r"NaN/Inf between steps 1 and 2"):
        train(_run(max_steps=6, compile="on", log_every=2), packed, tmp_path / "r", progress=False)


def test_the_last_step_is_saved_once_when_save_every_divides_it(packed, tmp_path, monkeypatch):
    import jepa_fast.train as train_mod

    saved = []
    real = train_mod.ckpt.save
    monkeypatch.setattr(train_mod.ckpt, "save",
                        lambda run, step, *a, **k: saved.append(step) or real(run, step, *a, **k))
    train(_run(max_steps=4, save_every=2), packed, tmp_path / "r", progress=False)
    assert saved == [2, 4]  # (a cadence that misses the last step still ends with its save: test_loss_decreases)


def test_a_frames_budget_sets_the_steps_is_recorded_and_resumes(packed, tmp_path, capsys):
    """--frames N: ceil(N / (batch x frames per window)) steps; config.json keeps it, so --resume ends there too."""
    from jepa_fast import cli
    from jepa_fast.data.split import SplitData

    T = SplitData(packed / "train.zarr").T
    frames = 16 * T * 3 + 1  # a little over 3 steps of batch 16 -> 4 steps
    out = tmp_path / "r"
    run = apply_overrides(_run(max_steps=-1), [f"train.frames={frames}"])
    first = train(run, packed, out, stop_at_step=2, progress=False)
    assert first["step"] == 2 and first["frames"] == 2 * 16 * T
    assert json.loads((out / "config.json").read_text())["train"]["frames"] == frames
    assert cli.main(["train", str(packed), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "4 steps" in capsys.readouterr().out
    assert ckpt.load(ckpt.latest(out), 0)[0]["step"] == 4


@pytest.mark.parametrize("text,frames", [("3.75M", 3_750_000), ("300k", 300_000), ("2,500,000", 2_500_000),
                                         ("1e6", 1_000_000), ("0.3m", 300_000)])
def test_frame_counts_read_as_people_write_them(text, frames):
    from jepa_fast import cli

    args = cli.build_parser().parse_args(["train", "d", "--preset", "tiny", "--frames", text])
    run = cli.config_from_args(args)
    assert run.train.frames == frames and run.train.max_steps == -1  # the preset's max_steps gives way


@pytest.mark.parametrize("args,needle", [
    (["--frames", "lots"], "--frames 'lots': a number of frames"),
    (["--frames", "0"], "--frames '0': need at least 1 frame"),
    (["--frames", "1M", "--steps", "3"], "--steps 3 and --frames 1M: a run's length is one of them"),
    (["--set", "train.frames=100"], "train.frames=100 and train.max_steps=6: a run's length is set by one"),
])
def test_bad_frame_budgets_are_one_line(packed, tmp_path, capsys, args, needle):
    from jepa_fast import cli

    assert cli.main(["train", str(packed), "--out", str(tmp_path / "r"), "--preset", "tiny", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "r").exists()
