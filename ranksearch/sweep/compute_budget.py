"""The space's compute budget (``budget: {cpu_hours | gpu_hours}``) as a Ray Tune ``Stopper``.

Every result's ``time_this_iter_s`` (the seconds the trial spent since its previous report) is charged at the
trial's resources: CPU-hours = seconds × ``resources.cpu`` / 3600, GPU-hours likewise (packed trials share a
pack's resources: each is charged ``resources.cpu / resources.pack``). Once the total reaches
the budget the whole experiment stops, running trials included (Tune ends them as it does at
``time_budget_s``); those trials end as ``pruned`` in Optuna, which learns from their intermediate values.
The spent amount is kept in the stopper (Tune pickles it with the experiment, so ``--resume`` continues the
count). The replay charges the same way (``ranksearch.replay``).
"""

from __future__ import annotations

from typing import Any

from ray.tune.stopper import Stopper


class ComputeBudget(Stopper):
    """Stop the experiment once ``limit`` resource-hours were spent (see the module docstring)."""

    def __init__(self, limit_hours: float, per_second: float, unit: str = "cpu_hours"):
        self.limit_hours, self.per_second, self.unit = float(limit_hours), float(per_second), unit
        self.spent_hours = 0.0

    @classmethod
    def from_space(cls, space: Any) -> ComputeBudget:
        b, res = space.spec.budget, space.spec.resources
        if b.gpu_hours is not None:
            return cls(b.gpu_hours, res.gpu / res.pack, "gpu_hours")
        return cls(b.cpu_hours, res.cpu / res.pack, "cpu_hours")

    def charge(self, seconds: float) -> None:
        """Add one report's seconds (the replay calls this too)."""
        self.spent_hours += max(0.0, float(seconds)) * self.per_second / 3600.0

    @property
    def spent(self) -> bool:
        return self.spent_hours >= self.limit_hours

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.charge(result.get("time_this_iter_s", 0.0) or 0.0)
        return self.spent

    def stop_all(self) -> bool:
        return self.spent


def spent_hours(space: Any, trials: list) -> float:
    """Resource-hours the space's budget counts for these Tune trials (their seconds at their resources)."""
    budget = ComputeBudget.from_space(space)
    for t in trials:
        budget.charge((t.last_result or {}).get("time_total_s", 0.0) or 0.0)
    return budget.spent_hours


def budget_spent(space: Any, trials: list) -> bool:
    """True when the space has a CPU/GPU-hour budget and these trials used it up (the sweep ended on it)."""
    b = space.spec.budget
    if b is None or (b.cpu_hours is None and b.gpu_hours is None):
        return False
    return spent_hours(space, trials) >= ComputeBudget.from_space(space).limit_hours
