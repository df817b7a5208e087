"""The probing protocol, exactly: schedule quirks, sampling, unnormalisation, cache == direct, signal."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from jepa_fast import cli
from jepa_fast import probe as P
from jepa_fast.config import ProbeConfig, SimConfig, model_preset
from jepa_fast.model import JEPA
from jepa_fast.sim import env

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def packed_root(tiny_packed):
    return tiny_packed


def test_schedule_quirks():
    cfg = ProbeConfig()
    total = 20 * 156  # 10,000 trajectories / 64, 20 epochs (the real probe_normal/train)
    lrs = P.step_lrs(total, cfg)
    warmup = int(0.1 * total)
    assert lrs[0] == 2e-4  # the very first step runs at the constructor lr
    assert lrs[1] == 0.0  # then the scheduler's warm-up starts from 0
    assert lrs[warmup + 1] == pytest.approx(5e-5)  # peak = 2e-4 x 64 / 256
    assert lrs[warmup // 2 + 1] == pytest.approx(2.5e-5)
    assert lrs[-1] == pytest.approx(5e-8, rel=1e-2)  # cosine to 0.001 x peak
    assert all(a >= b for a, b in zip(lrs[warmup + 1:], lrs[warmup + 2:]))


def test_normalizer_and_unnormalised_mse():
    loc = torch.tensor([[31.5863, 32.0618], [47.6888, 48.1971]])
    norm = P.TWO_ROOMS_TARGETS
    n = norm.normalize(loc)
    torch.testing.assert_close(n[0], torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(n[1], torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.unnormalize(n), loc)
    mse = norm.unnormalize_mse(torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(mse, torch.tensor([16.1025**2, 16.1353**2]))


def test_evaluate_averages_like_the_original():
    """per-timestep MSE, averaged over batches, x std^2 per axis, mean over axes, then over timesteps."""
    cfg = ProbeConfig(batch_size=2)
    loc = torch.tensor([[[31.5863, 32.0618]] * 3] * 4)  # (4, T=3, 2): normalised target 0
    emb = torch.zeros(4, 3, 5)
    prober = nn.Linear(5, 2)
    with torch.no_grad():
        prober.weight.zero_()
        prober.bias.copy_(torch.tensor([1.0, 2.0]))  # constant prediction (1, 2) in normalised units
    sc = P.evaluate(prober, lambda idx: emb[idx], loc, cfg)
    expect = (1 * 16.1025**2 + 4 * 16.1353**2) / 2
    assert sc.loss == pytest.approx(expect, rel=1e-5)
    np.testing.assert_allclose(sc.per_timestep, [expect] * 3, rtol=1e-5)
    assert sc.per_target == pytest.approx({"agent_x": 16.1025**2, "agent_y": 4 * 16.1353**2}, rel=1e-5)
    assert sc.chance == pytest.approx({"agent_x": 0, "agent_y": 0}, abs=1e-6)  # the targets sit at the mean


@pytest.mark.parametrize("T,expect", [(65, 30), (17, 17)])
def test_thirty_distinct_timesteps_are_sampled_only_when_T_exceeds_thirty(T, expect):
    seen = []
    cfg = ProbeConfig(epochs=1, batch_size=4, sample_timesteps=30)
    emb = torch.arange(8 * T, dtype=torch.float32).view(8, T, 1).repeat(1, 1, 3)  # value encodes (i, t)
    loc = torch.rand(8, T, 2)

    class Record(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            seen.append(x[..., 0].clone())
            return self.lin(x)

    orig = P.make_prober
    P.make_prober = lambda D, c, K: Record()
    try:
        P.train_prober(lambda idx: emb[idx], loc, 3, cfg)
    finally:
        P.make_prober = orig
    batch = seen[0]  # (4, expect)
    assert batch.shape == (4, expect)
    for row in batch:
        t = (row % T).long()
        assert len(set(t.tolist())) == expect  # without replacement
        assert len(set((row // T).long().tolist())) == 1  # all from the same trajectory


def test_cached_path_equals_the_straightforward_protocol(packed_root):
    torch.manual_seed(0)
    model = JEPA(model_preset("reference")).eval()
    cfg = ProbeConfig(epochs=2, batch_size=16, embed_batch=48)
    fast = P.probe_model(model, packed_root, cfg, torch.device("cpu"))
    slow = P.probe_model(model, packed_root, ProbeConfig(**{**cfg.__dict__, "cache": False}), torch.device("cpu"))
    for name in P.VAL_SETS:
        assert fast["losses"][name] == pytest.approx(slow["losses"][name], rel=1e-4), name
        np.testing.assert_allclose(fast["per_timestep"][name], slow["per_timestep"][name], rtol=1e-4)


class PlantedModel(nn.Module):
    """Knows the agent's location: centre of mass of frame 0, then the simulator's physics on the actions."""

    repr_dim = 8

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, states, actions):
        cfg = SimConfig()
        f = states[:, 0].double().numpy()  # (B, C, H, W)
        agent, walls = f[:, 0], f[:, 1] > 0
        grid = np.arange(65.0)
        x0 = (agent.sum(1) * grid).sum(-1) / agent.sum((1, 2))
        y0 = (agent.sum(2) * grid).sum(-1) / agent.sum((1, 2))
        inner = walls[:, 6:59, 6:59]  # inside the border: the middle wall only
        wall_x = 6 + inner.sum(1).argmax(-1)
        gap = np.stack([~walls[i, :, wall_x[i]] for i in range(len(f))])  # (B, H): the door rows
        door_y = np.array([np.nonzero(g[6:59])[0].mean() + 6 for g in gap]).round().astype(int)
        loc, _ = env.simulate(cfg, np.stack([x0, y0], -1), actions.double().numpy(), wall_x, door_y)
        emb = np.zeros(loc.shape[:2] + (8,))
        emb[..., :2] = (loc - 32.0) / 16.0
        return torch.from_numpy(emb).float()


def test_planted_signal_scores_near_zero_and_a_random_model_near_chance(packed_root):
    cfg = ProbeConfig(epochs=40, batch_size=16, lr=2e-2)  # a faster prober: tiny splits, few steps
    planted = P.probe_model(PlantedModel(), packed_root, cfg, torch.device("cpu"))["losses"]
    torch.manual_seed(0)
    rand = P.probe_model(JEPA(model_preset("reference")).eval(), packed_root, cfg, torch.device("cpu"))["losses"]
    for name in ("probe_normal", "probe_wall", "wall_other"):
        assert planted[name] < 2.0, (name, planted[name])
        assert rand[name] > 50.0, (name, rand[name])  # chance ~190-260; a random net explains little
    assert planted["expert"] < 5.0


def test_cli_writes_metrics_txt_in_the_original_format(packed_root, tiny_run, tmp_path, capsys):
    out = tmp_path / "probe"
    assert cli.main(["probe", str(tiny_run), "--data", str(packed_root), "--out", str(out)]) == 0
    text = (out / "metrics.txt").read_text().splitlines()
    names = ["probe_normal", "probe_wall", "wall_other", "expert"]
    for line, name in zip(text[:4], names):
        assert re.fullmatch(rf"{name} val loss: \d+\.\d+", line), line
    assert text[4] == "# number of trainable parameters of your model: 477,664"
    assert text[5].startswith("# training command to replicate")
    assert text[6].startswith("jepa-fast train")
    for png in ("probe_error_per_timestep.png", "probe_paths_probe_normal.png", "probe_paths_probe_wall.png"):
        assert (out / png).exists()
    assert "| probe_normal |" in capsys.readouterr().out
    assert cli.main(["probe", str(tiny_run), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2


def test_embedding_precision_must_be_one_the_protocol_knows(packed_root):
    from jepa_fast.errors import JepaFastError

    with pytest.raises(JepaFastError, match="embedding precision 'auto': use fp32, bf16, fp16"):
        P.probe_model(JEPA(model_preset("reference")).eval(), packed_root, precision="auto")
