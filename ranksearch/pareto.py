"""Pareto fronts, one way for the whole package: Optuna's non-dominated sort (the one its NSGA-II and TPE samplers
use), so the report, the live view, MO-ASHA and the replay agree with Optuna's own ``study.best_trials``.
"""

from __future__ import annotations

import numpy as np


def non_domination_rank(losses: np.ndarray) -> np.ndarray:
    """Rank 0 for the Pareto front of ``losses`` (n × k, lower is better), 1 for the next front, ..."""
    # Optuna has no public non-dominated sort; this is the function its samplers and study.best_trials call.
    from optuna.study._multi_objective import _fast_non_domination_rank

    return _fast_non_domination_rank(np.asarray(losses, dtype=float))


def pareto_mask(values: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """Rows of ``values`` (n × k) that no other row dominates; equal rows are all kept."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    losses = np.where(np.asarray(maximize), -values, values)  # all "lower is better"
    return non_domination_rank(losses) == 0
