"""Planning with the world model: closed-loop goal reaching in the two-rooms simulator.

    jepa-fast plan RUN [--compare RUN ...] [--planner cem|mppi] [--episodes 40] [--out DIR]

Protocol (every number is a ``PlanConfig`` field; the defaults are the first prototype's setting):

* **Episodes.** Two seeded sets of ``episodes`` each, on the training split's layouts (``layouts``):
  *cross-room* (start and goal in opposite rooms, so the agent must find the door) and *same-room*
  (start and goal in one room, at least ``min_distance`` apart). Starts and goals keep 2 px from every
  wall face and border. Cross-room episodes are stratified by their **detour**: the door-aware path length
  minus the straight distance (``detour_edges`` 4 and 12 px: small, medium, large).
* **Planning.** Model-predictive control in latent space: the current frame and the goal frame are rendered by
  the simulator and encoded (the goal once per episode, the current frame once per re-plan); action sequences
  of ``horizon`` steps are sampled, rolled out by the model's predictor from the current latent, and scored
  by their squared latent distance to the goal's latent, reduced over the horizon (``cost``: the minimum over
  steps 1..H, or the last step). CEM refits a Gaussian to the best ``elite_fraction``; MPPI takes the mean
  weighted by exp(-c / temperature) of each episode's costs rescaled to [0, 1]. ``iterations`` rounds per
  re-plan; the previous plan's mean is always among the samples, so an iteration never loses the best plan
  it had. Every action is clipped to the data's longest step (``max_step``: the simulator's 1.8 px). The
  first ``replan_every`` actions run in the simulator (its collision rule: a blocked step stays in place),
  then the plan is shifted by that much and padded with zeros (warm start), the sampling std reset.
* **Outcome.** After ``max_steps`` simulator steps: success = final distance to the goal below
  ``success_radius`` (4 px), with a Wilson 95% interval; the final distance; reached-ever (within the radius
  at any step); steps to the first arrival.
* **Baselines on the same episodes.** *random*: the dataset's own exploratory policy (the floor);
  *oracle-greedy*: the same planner on the simulator's true dynamics with the Euclidean distance as cost
  (the ceiling of greedy planning: it stalls against the wall at the point nearest the goal);
  *oracle-door*: true dynamics with the door-aware (geodesic) distance (the ceiling of the task).
* **The latent cost field** (``field.py``), per model: on the same-room episodes, the median squared latent
  distance to the goal of positions drawn in the goal's room, by their true distance; its *reach* (how far
  it keeps growing) bounds where a plain latent cost can lead the agent from, with any dynamics.
* **Batched.** All episodes of a batch (``batch``; 0 = all) x samples are one rollout per iteration. Each
  episode's sampling noise comes from its own generator (seed, episode), so batching does not change what
  an episode samples: planning the episodes one at a time gives the same paths (tests/test_plan.py), which is
  what ``bench/bench_plan.py`` times side by side.
"""

from jepa_fast.plan.episodes import SETS, Episodes, geodesic, make_episodes, strata, stratum_names
from jepa_fast.plan.field import cost_field, format_field
from jepa_fast.plan.mpc import ModelAgent, OracleAgent, Outcome, RandomAgent, clip_norm, optimise, run_episodes
from jepa_fast.plan.report import (
    evaluate,
    format_report,
    load_planning_model,
    model_name,
    run_plan,
    summarise,
    wilson,
)

__all__ = ["SETS", "Episodes", "ModelAgent", "OracleAgent", "Outcome", "RandomAgent", "clip_norm", "cost_field",
           "evaluate", "format_field", "format_report", "geodesic", "load_planning_model", "make_episodes",
           "model_name", "optimise", "run_episodes", "run_plan", "strata", "stratum_names", "summarise", "wilson"]
