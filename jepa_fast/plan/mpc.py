"""Model-predictive control: the agents that score sampled action sequences, CEM and MPPI, the episode loop."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch

from jepa_fast.config import PlanConfig, SimConfig
from jepa_fast.plan.episodes import Episodes, geodesic
from jepa_fast.sim.env import blocked_moves, random_actions, render, simulate

# ---------------------------------------------------------------------------------------------
# agents: what scores a batch of sampled action sequences


Cost = Callable[[torch.Tensor], torch.Tensor]
"""Sampled actions (n, S, H, 2) -> costs (n, S), lower is better."""


class ModelAgent:
    """A trained world model's latent cost: squared distance of the rolled-out latents to the goal's latent, or,
    with a ``graph`` (the training data's trajectories by layout, ``plan.graph``), to a subgoal on the way."""

    plans = True

    def __init__(self, name: str, model: torch.nn.Module, sim: SimConfig, cfg: PlanConfig, device: torch.device,
                 graph=None):
        self.name, self.model, self.sim, self.cfg, self.device, self.graph = name, model, sim, cfg, device, graph
        self.goal_latents: torch.Tensor | None = None
        self.subgoals = None
        self._roadmaps: dict[bytes, object] = {}  # layout -> Roadmap (built once per layout)
        self.rollouts = 0  # latent sequences rolled out (for rollouts/s)

    @torch.inference_mode()
    def encode(self, pos: np.ndarray, eps: Episodes) -> torch.Tensor:
        """Latents (n, D) of the frames the simulator renders at positions pos (n, 2)."""
        frames = render(self.sim, pos[:, None], eps.wall_x.astype(np.int64), eps.door_y.astype(np.int64))
        x = torch.from_numpy(frames).to(self.device)  # (n, 1, 2, H, W), raw units
        return self.model.encode_stored(x, torch.ones(x.shape[2], device=self.device))[:, 0].float()

    def begin(self, eps: Episodes) -> None:
        self.goal_latents = self.encode(eps.goal, eps)
        if self.graph is not None:
            from jepa_fast.plan.graph import Subgoals

            walls = render(self.sim, eps.start[:, None], eps.wall_x.astype(np.int64), eps.door_y.astype(np.int64))
            maps = [self._roadmap(w[0, self.graph.static]) for w in walls]
            self.subgoals = Subgoals(maps, self.goal_latents, self.cfg.graph_lookahead)

    @torch.inference_mode()
    def _roadmap(self, static: np.ndarray):
        """The roadmap of the layout whose static channels are ``static`` (None: no training trajectory has it)."""
        from jepa_fast.plan.graph import Roadmap, layout_key

        key = layout_key(static)
        if key not in self._roadmaps:
            idx = self.graph.trajectories(static, self.cfg.graph_trajectories)
            if len(idx) == 0:
                self._roadmaps[key] = None
            else:
                data = self.graph.data
                frames = data.decode_into(idx, np.empty((len(idx), *data.frame_shape), np.uint8))
                z = torch.cat([self.model.encode_stored(torch.from_numpy(frames[i:i + 64]).to(self.device),
                                                        data.scale.to(self.device)).flatten(0, 1).float().cpu()
                               for i in range(0, len(frames), 64)])
                self._roadmaps[key] = Roadmap(z, data.T, self.cfg.graph_link, self.cfg.graph_neighbours)
        return self._roadmaps[key]

    def cost(self, pos: np.ndarray, eps: Episodes) -> Cost:
        z0 = self.encode(pos, eps)  # the encoder runs once per re-plan
        zg = self.goal_latents if self.subgoals is None else self.subgoals.pick(z0.cpu()).to(self.device)

        @torch.inference_mode()
        def score(actions: torch.Tensor) -> torch.Tensor:
            n, S, H, A = actions.shape
            self.rollouts += n * S
            z = self.model.rollout(z0.repeat_interleave(S, 0), actions.reshape(n * S, H, A).to(self.device))
            d = (z[:, 1:] - zg.repeat_interleave(S, 0)[:, None]).pow(2).sum(-1)  # (n*S, H)
            return _reduce(d, self.cfg.cost).view(n, S).cpu()
        return score


class OracleAgent:
    """The simulator's true dynamics, scored by the Euclidean ('greedy') or the door-aware distance ('door')."""

    plans = True

    def __init__(self, name: str, sim: SimConfig, cfg: PlanConfig, door_aware: bool):
        self.name, self.sim, self.cfg, self.door_aware = name, sim, cfg, door_aware
        self.rollouts = 0

    def begin(self, eps: Episodes) -> None:
        pass

    def cost(self, pos: np.ndarray, eps: Episodes) -> Cost:
        def score(actions: torch.Tensor) -> torch.Tensor:
            n, S, H, _ = actions.shape
            self.rollouts += n * S
            rep = lambda v: np.repeat(v, S, axis=0)  # noqa: E731
            loc, _ = simulate(self.sim, rep(pos), actions.reshape(n * S, H, 2).double().numpy(),
                              rep(eps.wall_x), rep(eps.door_y))  # (n*S, H+1, 2)
            g = rep(eps.goal)[:, None]
            if self.door_aware:
                d = geodesic(loc[:, 1:], g, rep(eps.wall_x)[:, None], rep(eps.door_y)[:, None], self.sim)
            else:
                d = np.linalg.norm(loc[:, 1:] - g, axis=-1)
            return _reduce(torch.from_numpy(d), self.cfg.cost).view(n, S).float()
        return score


class RandomAgent:
    """The dataset's exploratory policy (a von Mises heading walk): no planning, the floor."""

    plans = False
    name = "random"
    rollouts = 0

    def begin(self, eps: Episodes) -> None:
        pass


def _reduce(d: torch.Tensor, how: str) -> torch.Tensor:
    """Per-step distances (N, H) -> one cost per sequence (N,)."""
    return d.amin(1) if how == "min" else d[:, -1]


# ---------------------------------------------------------------------------------------------
# the planner


def clip_norm(a: torch.Tensor, bound: float) -> torch.Tensor:
    """Scale every action (last dim) down to length <= bound."""
    norm = a.norm(dim=-1, keepdim=True)
    return a * torch.clamp(bound / norm.clamp_min(1e-12), max=1.0)


def optimise(cost: Cost, mean: torch.Tensor, gens: list[torch.Generator], cfg: PlanConfig, bound: float
             ) -> torch.Tensor:
    """CEM or MPPI from the warm-start mean (n, H, 2): the plan's new mean (n, H, 2), within the bound."""
    n, H, A = mean.shape
    S = cfg.samples
    std = torch.full_like(mean, cfg.init_std * bound)
    k = max(1, round(S * cfg.elite_fraction))
    for _ in range(cfg.iterations):
        noise = torch.stack([torch.randn(S, H, A, generator=g) for g in gens])  # per-episode streams
        a = mean[:, None] + std[:, None] * noise  # (n, S, H, A)
        a[:, 0] = mean  # the current plan competes too
        a = clip_norm(a, bound)
        c = cost(a)  # (n, S)
        if cfg.planner == "cem":
            idx = torch.topk(c, k, dim=1, largest=False).indices  # (n, k)
            elite = torch.gather(a, 1, idx[:, :, None, None].expand(n, k, H, A))
            mean = elite.mean(1)
            std = (elite.std(1, unbiased=False) if k > 1 else std).clamp_min(0.05 * bound)
        else:
            lo, hi = c.amin(1, keepdim=True), c.amax(1, keepdim=True)
            w = torch.softmax(-(c - lo) / ((hi - lo).clamp_min(1e-12) * cfg.temperature), dim=1)  # (n, S)
            mean = (w[:, :, None, None] * a).sum(1)
            var = (w[:, :, None, None] * (a - mean[:, None]).pow(2)).sum(1)
            std = var.sqrt().clamp_min(0.05 * bound)
    return clip_norm(mean, bound)


@dataclasses.dataclass
class Outcome:
    """What happened in each of N episodes: paths (N, max_steps + 1, 2) and a few episodes' planned paths."""

    paths: np.ndarray
    plans: dict[int, list[np.ndarray]]  # episode -> dead-reckoned planned positions (H + 1, 2) per re-plan
    seconds: float
    rollouts: int


def run_episodes(agent, eps: Episodes, cfg: PlanConfig, sim: SimConfig, keep_plans: int = 4,
                 first: int = 0) -> Outcome:
    """Play every episode of ``eps`` with ``agent``, ``cfg.batch`` episodes at a time (0: all together).

    ``first`` is the index of eps[0] in its set (the episodes' noise streams are keyed by it)."""
    bound = cfg.max_step or sim.action_upper_bd
    step = cfg.batch or len(eps)
    paths, plans, rollouts0, t0 = [], {}, agent.rollouts, time.perf_counter()
    for lo in range(0, len(eps), step):
        part = eps.take(slice(lo, lo + step))
        path, part_plans = _play(agent, part, cfg, sim, bound, first + lo, keep_plans - lo)
        paths.append(path)
        plans.update({lo + i: p for i, p in part_plans.items()})
    return Outcome(np.concatenate(paths), plans, time.perf_counter() - t0, agent.rollouts - rollouts0)


def _play(agent, eps: Episodes, cfg: PlanConfig, sim: SimConfig, bound: float, first: int, keep: int
          ) -> tuple[np.ndarray, dict[int, list[np.ndarray]]]:
    n, H = len(eps), cfg.horizon
    path = np.empty((n, cfg.max_steps + 1, 2))
    path[:, 0] = pos = eps.start.copy()
    plans: dict[int, list[np.ndarray]] = {i: [] for i in range(min(max(keep, 0), n))}
    if not agent.plans:  # the exploratory policy, seeded per episode
        acts = np.stack([random_actions(np.random.default_rng([cfg.seed, 99, first + i]), sim, 1, cfg.max_steps)[0]
                         for i in range(n)])
        path[:], _ = simulate(sim, pos, acts, eps.wall_x, eps.door_y)
        return path, plans
    gens = [torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, first + i]).generate_state(1)[0]))
            for i in range(n)]
    agent.begin(eps)
    mean = torch.zeros(n, H, 2)
    t = 0
    while t < cfg.max_steps:
        mean = optimise(agent.cost(pos, eps), mean, gens, cfg, bound)
        plan = mean.double().numpy()
        for i in plans:
            plans[i].append(np.concatenate([pos[i:i + 1], pos[i] + np.cumsum(plan[i], 0)]))
        k = min(cfg.replan_every, cfg.max_steps - t)
        for j in range(k):
            blocked = blocked_moves(sim, pos, plan[:, j], eps.wall_x, eps.door_y)
            pos = np.where(blocked[:, None], pos, pos + plan[:, j])
            path[:, t + j + 1] = pos
        t += k
        mean = torch.cat([mean[:, k:], torch.zeros(n, k, 2)], 1)  # warm start
    return path, plans
