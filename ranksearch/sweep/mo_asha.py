"""Multi-objective ASHA: Ray's asynchronous successive halving with rungs ranked by non-dominated sorting.

Ray's ``ASHAScheduler`` takes one metric, so in an accuracy-vs-parameters sweep it stops the cheap trials that
would be on the Pareto front. ``MultiObjectiveASHA`` keeps Ray's machinery (milestones, brackets, the
asynchronous rule, ``max_t``) and changes one thing, the ranking at a rung (MO-ASHA, Schmucker et al. 2021,
with the NSGA-II ranking that Syne Tune's MOASHA also offers):

- the trials recorded at the rung, the new one included, are ranked by non-domination rank (Optuna's
  ``_fast_non_domination_rank``, the one its NSGA-II sampler uses), ties broken by crowding distance within
  the front (larger first: the front's ends and sparse regions survive);
- the new trial continues if it ranks in the top ``1/reduction_factor`` of them;
- with a single objective the rung decides exactly as Ray's (its interpolated-percentile cutoff, called as
  Ray calls it), so ``MultiObjectiveASHA`` with one metric is Ray's ASHA (tests/test_replay.py checks it on
  random result streams).

Objectives that do not change with training (``trainable_params``) simply enter the sort as they are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from ranksearch.pareto import non_domination_rank


def crowding_distance(losses: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each point of one front (n × k); the ends of each objective get inf."""
    n, k = losses.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(k):
        order = np.argsort(losses[:, j], kind="stable")
        col = losses[order, j]
        width = col[-1] - col[0]
        if width <= 0:
            continue
        dist[order[0]] = dist[order[-1]] = math.inf
        dist[order[1:-1]] += (col[2:] - col[:-2]) / width
    return dist


def rank_order(losses: np.ndarray) -> np.ndarray:
    """A sort key per point: (non-domination rank, -crowding distance); lower is better."""
    ranks = non_domination_rank(losses)
    crowd = np.zeros(len(losses))
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        crowd[idx] = crowding_distance(losses[idx])
    return np.stack([ranks.astype(float), -crowd], axis=1)


def keeps(recorded: list[np.ndarray], new: np.ndarray, reduction_factor: float) -> bool:
    """True if ``new`` (a loss vector) ranks in the top 1/rf of ``recorded`` + itself (see module docstring)."""
    if not recorded:
        return True
    losses = np.vstack([*recorded, new])
    key = rank_order(losses)
    mine = key[-1]
    ahead = sum(1 for other in key[:-1] if tuple(other) < tuple(mine))
    return ahead < len(losses) / reduction_factor


class _ParetoBracket(_Bracket):
    """Ray's bracket with vector rewards (higher is better per objective) and the Pareto ranking."""

    def on_result(self, trial: Any, cur_iter: int, cur_rew: Any) -> str:
        action = TrialScheduler.CONTINUE
        if cur_rew is None:
            return action
        if len(cur_rew) == 1:  # one objective: Ray's own rung rule on the scalar reward
            return super().on_result(trial, cur_iter, float(cur_rew[0]))
        for milestone, recorded in self._rungs:
            if cur_iter >= milestone and trial.trial_id in recorded and not self._stop_last_trials:
                break
            if cur_iter < milestone or trial.trial_id in recorded:
                continue
            losses = [-v for v in recorded.values()]
            if not keeps(losses, -cur_rew, self.rf):
                action = TrialScheduler.STOP
            recorded[trial.trial_id] = cur_rew
            break
        return action

    def debug_str(self) -> str:
        return "ParetoBracket: " + " | ".join(f"Iter {m:.3f}: {len(r)} trials" for m, r in self._rungs)


class MultiObjectiveASHA(AsyncHyperBandScheduler):
    """ASHA whose rungs rank trials by non-dominated sorting of several metrics (see module docstring).

    Args:
        metrics, modes: the objectives and their directions ("max"/"min"), as in the search space.
        time_attr, max_t, grace_period, reduction_factor, brackets, stop_last_trials: as Ray's ``ASHAScheduler``.
    """

    def __init__(
        self,
        metrics: list[str],
        modes: list[str],
        time_attr: str = "training_iteration",
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 4,
        brackets: int = 1,
        stop_last_trials: bool = True,
    ):
        if len(metrics) != len(modes) or not metrics:
            raise ValueError("give one mode per metric")
        super().__init__(
            time_attr=time_attr, metric=metrics[0], mode="max", max_t=max_t, grace_period=grace_period,
            reduction_factor=reduction_factor, brackets=brackets, stop_last_trials=stop_last_trials,
        )  # fmt: skip
        self._metrics = list(metrics)
        self._signs = np.array([1.0 if m == "max" else -1.0 for m in modes])
        self._brackets = [
            _ParetoBracket(grace_period, max_t, reduction_factor, s, stop_last_trials=stop_last_trials)
            for s in range(brackets)
        ]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the objectives come from the space, never from TuneConfig

    def _reward(self, result: dict[str, Any]) -> np.ndarray | None:
        values = []
        for m in self._metrics:
            v = result.get(m)
            if not isinstance(v, int | float) or not math.isfinite(v):
                return None
            values.append(float(v))
        return self._signs * np.array(values)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = TrialScheduler.CONTINUE
        if self._time_attr not in result:
            return action
        reward = self._reward(result)
        if result[self._time_attr] >= self._max_t and self._stop_last_trials:
            action = TrialScheduler.STOP
        elif reward is not None:
            action = self._trial_info[trial.trial_id].on_result(trial, result[self._time_attr], reward)
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        bracket = self._trial_info.pop(trial.trial_id, None)
        reward = self._reward(result or {})
        if bracket is not None and reward is not None and self._time_attr in result:
            bracket.on_result(trial, result[self._time_attr], reward)

    def debug_string(self) -> str:
        return f"Using MultiObjectiveASHA: num_stopped={self._num_stopped}\n" + "\n".join(
            b.debug_str() for b in self._brackets
        )
