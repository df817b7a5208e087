"""Subgoals from the training data: a latent roadmap of each layout, searched from the goal (``plan --graph``).

A greedy latent cost pulls the agent straight at the goal and stalls it against the wall. The training
trajectories know better: some of them pass the door. For the layout an episode is in (recognised by its
frame's static channels: the walls image, compared pixel for pixel with the first frame of every training
trajectory), the planner builds a graph whose nodes are the latents of those trajectories' frames:

* temporal edges join consecutive frames of a trajectory (weight 1: one step that was taken, so it is
  possible; blocked steps stay in place and cost 1 too);
* neighbour edges join each node to its ``graph_neighbours`` nearest nodes closer than ``graph_link``
  steps, where a step is the median latent distance of the temporal edges (the data's own unit: the
  mean action moves ~1 px), weighted by that distance in steps. Positions on the two sides of the 3-px
  wall are farther apart than that, so the wall is crossed only where trajectories crossed it: at the door.

Dijkstra from the goal's latent (joined like any node) gives every node its path length to the goal. At
each re-plan the current latent joins the graph the same way; the node that minimises (distance to it +
its path length) is followed towards the goal for ``graph_lookahead`` steps, and that node's latent is the
subgoal the MPC cost measures distance to. When the goal is within the lookahead, or the layout has no
trajectories, or the graph does not connect, the subgoal is the goal itself (the plain latent cost).

A stuck agent gets a closer subgoal: when its latent moved less than half a step since the last re-plan,
its lookahead halves (down to one step), and doubles back (up to ``graph_lookahead``) once it moves. The
model's rollouts are least exact at the door's edges, where a subgoal a few steps away can sit just behind
the wall's end: the straight line the planner then takes is blocked, and the same state would give the
same plan forever. A one-step subgoal is the next frame of a trajectory that did pass. (On 40 cross-room
episodes, ``ours`` at 2.5M frames: fixed lookahead 2-12 steps 30-78% success, adaptive from 8: 97.5%.)

Nothing here reads the simulator's geometry: the layout is recognised from pixels, the roadmap is made
of the data's frames and the model's latents. A layout the training data never showed (wall_other's
held-out walls) has no roadmap and falls back to the plain cost.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np
import torch

from jepa_fast.errors import JepaFastError


def layout_key(static: np.ndarray) -> bytes:
    """A layout's identity: which pixels of the static channels (C_s, H, W) are set."""
    return np.packbits(static > 0).tobytes()


class LayoutIndex:
    """The training trajectories of a packed two-rooms store, grouped by layout (one pass over the store)."""

    def __init__(self, store: Path, static_channels: tuple[bool, ...]):
        from jepa_fast.data.split import SplitData
        from jepa_fast.train import resolve_store

        self.data = SplitData(resolve_store(Path(store)), 0, in_ram=False)
        if self.data.spec.static_channels != tuple(static_channels):
            raise JepaFastError(f"{store}: its static channels {self.data.spec.static_channels} are not the model's "
                                f"{tuple(static_channels)}: give the run's training data (--graph PACKED)")
        if not self.data.aligned:
            raise JepaFastError(f"{store}: --graph needs fixed-length trajectories (a two-rooms store)")
        self.static = [c for c, s in enumerate(static_channels) if s]
        if not self.static:
            raise JepaFastError(f"{store}: no static channels to recognise a layout by")
        row = np.empty(self.data.frame_shape, np.uint8)
        self.groups: dict[bytes, list[int]] = {}
        for i in range(self.data.n):
            self.data.decode_window(i, row)
            self.groups.setdefault(layout_key(row[0, self.static]), []).append(i)

    def trajectories(self, static: np.ndarray, limit: int) -> np.ndarray:
        """Up to ``limit`` windows of the layout whose static channels are ``static`` (the first ones, seeded order)."""
        return np.asarray(self.groups.get(layout_key(static), [])[:limit], dtype=np.int64)


class Roadmap:
    """One layout's graph: node latents (N, D), adjacency lists, the latent size of one step."""

    def __init__(self, latents: torch.Tensor, T: int, link: float, neighbours: int):
        self.z = latents  # (N, D), N = trajectories x T
        N = len(latents)
        step = (latents.view(-1, T, latents.shape[1])[:, 1:] - latents.view(-1, T, latents.shape[1])[:, :-1])
        self.step = float(step.norm(dim=-1).median().clamp_min(1e-6))
        self.link, self.k = link, neighbours
        self.adj: list[list[tuple[int, float]]] = [[] for _ in range(N)]
        for i in range(N):
            if i % T:
                self._join(i - 1, i, 1.0)
        for lo in range(0, N, 1024):  # neighbour edges, in blocks of the distance matrix
            d = torch.cdist(latents[lo:lo + 1024], latents) / self.step
            d[torch.arange(len(d)), torch.arange(lo, lo + len(d))] = float("inf")
            val, idx = torch.topk(d, min(neighbours, N - 1), dim=1, largest=False)
            for r, (vs, js) in enumerate(zip(val.tolist(), idx.tolist())):
                for v, j in zip(vs, js):
                    if v < link:
                        self._join(lo + r, j, v)

    def _join(self, a: int, b: int, w: float) -> None:
        self.adj[a].append((b, w))
        self.adj[b].append((a, w))

    def attach(self, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The nodes a latent z (D,) joins: those within ``link`` steps, else its nearest 3; (nodes, steps)."""
        d = (self.z - z).norm(dim=1) / self.step
        near = torch.nonzero(d < self.link).flatten()
        if len(near) == 0:
            near = torch.topk(d, min(3, len(d)), largest=False).indices
        return near.numpy(), d[near].numpy()

    def search(self, goal: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Dijkstra from the goal: (path length in steps (N,), the next node towards the goal (N,), -1 at the goal)."""
        N = len(self.z)
        dist, nxt = np.full(N, np.inf), np.full(N, -1)
        heap = []
        for j, w in zip(*self.attach(goal)):
            dist[j] = w
            heap.append((w, int(j)))
        heapq.heapify(heap)
        while heap:
            d, i = heapq.heappop(heap)
            if d > dist[i]:
                continue
            for j, w in self.adj[i]:
                if d + w < dist[j]:
                    dist[j], nxt[j] = d + w, i
                    heapq.heappush(heap, (d + w, j))
        return dist, nxt


class Subgoals:
    """Per episode: its layout's roadmap searched from its goal; ``pick`` turns a current latent into a subgoal."""

    def __init__(self, roadmaps: list[Roadmap | None], goals: torch.Tensor, lookahead: float):
        self.maps, self.goals, self.lookahead = roadmaps, goals, lookahead
        self.searched = [m.search(g) if m is not None else None for m, g in zip(roadmaps, goals)]
        self.used = 0  # re-plans that followed a roadmap (the rest measured the goal itself)
        self.reach = [lookahead] * len(goals)  # each episode's current lookahead (shortened while it is stuck)
        self.last: torch.Tensor | None = None

    def pick(self, z: torch.Tensor) -> torch.Tensor:
        """Current latents (n, D) -> subgoal latents (n, D)."""
        out = self.goals.clone()
        moved = None if self.last is None else (z - self.last).norm(dim=1)
        self.last = z.clone()
        for e, (m, s) in enumerate(zip(self.maps, self.searched)):
            if m is None:
                continue
            if moved is not None:  # stuck (less than half a step since the last re-plan): aim closer; moving: farther
                stuck = float(moved[e]) < 0.5 * m.step
                self.reach[e] = max(1.0, self.reach[e] / 2) if stuck else min(self.lookahead, self.reach[e] * 2)
            dist, nxt = s
            nodes, d = m.attach(z[e])
            total = d + dist[nodes]
            if not np.isfinite(total).any():
                continue
            best = int(np.argmin(total))
            node, togo = int(nodes[best]), float(total[best])
            if togo <= self.reach[e]:
                continue  # the goal is within reach: aim at it
            walked = d[best]
            while walked < self.reach[e] and nxt[node] >= 0:
                nb = int(nxt[node])
                walked += next(w for j, w in m.adj[node] if j == nb)
                node = nb
            out[e] = m.z[node]
            self.used += 1
        return out
