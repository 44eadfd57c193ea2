"""Replay backend: simulate sweeps against a recorded grid of trials, in seconds and without training.

A recorded grid (``bench/record_grid.py``, ``bench/data/grid.json``) holds every configuration's validation HM
after each evaluation. ``replay_sweep`` runs an Optuna study over exactly the grid's categorical choices;
a trial is "run" by reading its recorded curve one evaluation at a time, in simulated time on a fixed number
of workers, so the searcher and the scheduler see what they would in a real sweep:

- every evaluation consumed costs one unit of compute (the metric of the search-efficiency benchmark);
- with ``asha=True`` each result goes through asynchronous successive halving written as Ray's
  ``ASHAScheduler`` does it (milestones ``grace · rf^k`` below the last evaluation, stop a trial whose value is
  below the ``1 - 1/rf`` quantile of what earlier trials recorded at that milestone);
- a stopped trial consumes only the evaluations it ran, its intermediate values are reported to Optuna and it
  is told PRUNED, as ``ranksearch.sweep.searcher.PruneAwareOptunaSearch`` does in the real sweep;
- a finished trial is told COMPLETE with its last value (and its trainable parameter count when the study is
  multi-objective).

No Ray here: the event loop is a few lines and deterministic, which is also why the search logic can be tested
quickly with it (``tests/test_replay.py``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_GRID = Path(__file__).parent / "data" / "grid.json"
METHODS = ("random", "tpe", "tpe+asha")


def _label(value: Any) -> Any:
    """Optuna categorical choices must be primitives: a list of matrices becomes ``"q,k,v"``."""
    return ",".join(value) if isinstance(value, list) else value


@dataclass
class Grid:
    """The recorded table: choices per parameter and, per configuration, its HM curve and trainable params."""

    choices: dict[str, list[Any]]
    curves: dict[tuple, list[float]]
    params: dict[tuple, int]

    @classmethod
    def load(cls, path: str | Path = DEFAULT_GRID) -> Grid:
        data = json.loads(Path(path).read_text())
        choices = {k: [_label(v) for v in vs] for k, vs in data["grid"].items()}
        curves, params = {}, {}
        for t in data["trials"]:
            if t["status"] != "completed":  # a failed recorded trial is absent: replaying it would be a guess
                continue
            key = tuple(_label(t["params"][k]) for k in choices)
            curves[key] = [float(v) for v in t["val_hm"]]
            params[key] = int(t["trainable_params"])
        return cls(choices, curves, params)

    @property
    def evals(self) -> int:
        return max(len(c) for c in self.curves.values())

    def final(self, key: tuple) -> float:
        """A configuration's objective: its last evaluation, as the real sweep's COMPLETE value."""
        return self.curves[key][-1]

    def best(self) -> float:
        return max(self.final(k) for k in self.curves)

    def front(self) -> list[tuple[float, int]]:
        """The grid's Pareto front over (max HM, min trainable params)."""
        return pareto_front([(self.final(k), self.params[k]) for k in self.curves])


class Asha:
    """Asynchronous successive halving, as Ray's ``ASHAScheduler`` (one bracket, mode max)."""

    def __init__(self, max_t: int, grace_period: int = 1, reduction_factor: float = 2.0):
        self.rf = reduction_factor
        milestones, m = [], grace_period
        while m <= max_t:
            milestones.append(m)
            m = int(m * reduction_factor)
        self.rungs: list[tuple[int, dict[int, float]]] = [(m, {}) for m in reversed(milestones)]

    def on_result(self, trial: int, iteration: int, value: float) -> bool:
        """Record ``value`` at the highest milestone reached; True when the trial should stop."""
        for milestone, recorded in self.rungs:
            if iteration < milestone or trial in recorded:
                continue
            # Ray computes the cutoff from what earlier trials recorded, before adding this one.
            stop = bool(recorded) and value < np.nanpercentile(
                list(recorded.values()), (1 - 1 / self.rf) * 100
            )
            recorded[trial] = value
            return stop
        return False


@dataclass
class SweepResult:
    """One replayed sweep: per finished trial (in finishing order) the units consumed so far and its value."""

    units: int = 0
    finished: list[dict[str, Any]] = field(default_factory=list)
    study: Any = None

    def units_to_reach(self, target: float) -> float:
        """Units consumed when a COMPLETE trial first reached ``target`` HM (inf if none did)."""
        for f in self.finished:
            if f["state"] == "COMPLETE" and f["values"][0] >= target:
                return f["units"]
        return math.inf


def make_sampler(method: str, seed: int, multi_objective: bool = False, n_startup: int = 8):
    import optuna

    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if method in ("tpe", "tpe+asha"):
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=n_startup)
    if method == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    raise ValueError(f"unknown method {method!r}")


def replay_sweep(
    grid: Grid,
    method: str,
    seed: int,
    budget: int,
    workers: int = 4,
    multi_objective: bool = False,
    grace_period: int = 1,
    reduction_factor: float = 2.0,
) -> SweepResult:
    """Simulate one sweep of ``method`` until ``budget`` evaluations were consumed (running trials finish).

    Every evaluation takes one tick of simulated time; at each tick every running trial reads its next recorded
    evaluation, the scheduler decides, finished workers are handed new trials by ``study.ask()``. Workers are
    served in a fixed order, so a seed gives the same sweep every time.
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if multi_objective else ["maximize"]
    study = optuna.create_study(directions=directions, sampler=make_sampler(method, seed, multi_objective))
    dists = {k: optuna.distributions.CategoricalDistribution(v) for k, v in grid.choices.items()}
    asha = Asha(grid.evals, grace_period, reduction_factor) if method.endswith("+asha") else None
    result = SweepResult(study=study)
    running: list[tuple[Any, tuple, int] | None] = [None] * workers  # (optuna trial, grid key, evals done)
    while True:
        for w in range(workers):  # hand idle workers a new trial while there is budget left to start one
            if running[w] is None and result.units < budget:
                trial = study.ask(dists)
                running[w] = (trial, tuple(trial.params[k] for k in grid.choices), 0)
        if all(r is None for r in running):
            break
        for w, slot in enumerate(running):
            if slot is None:
                continue
            trial, key, done = slot
            curve = grid.curves[key]
            value, done = curve[done], done + 1
            result.units += 1
            if not multi_objective:  # Ray's OptunaSearch reports intermediate values (single objective only)
                trial.report(value, done)
            stop = asha is not None and done < len(curve) and asha.on_result(trial.number, done, value)
            if done == len(curve):
                values = [value, grid.params[key]] if multi_objective else [value]
                study.tell(trial, values)
                state = "COMPLETE"
            elif stop:
                study.tell(trial, state=TrialState.PRUNED)
                state, values = "PRUNED", [value]
            else:
                running[w] = (trial, key, done)
                continue
            result.finished.append(
                {"number": trial.number, "key": key, "state": state, "values": values, "evals": done,
                 "units": result.units}
            )  # fmt: skip
            running[w] = None
    return result


# --- multi-objective: 2-D Pareto front and hypervolume --------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points of (HM to maximise, params to minimise), sorted by params."""
    front: list[tuple[float, float]] = []
    for hm, p in sorted(set(points), key=lambda x: (x[1], -x[0])):
        if not front or hm > front[-1][0]:
            front.append((hm, p))
    return front


def hypervolume(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (HM, log10 params) up to ``ref`` = (lowest HM, highest log10 params).

    Params enter on a log scale because the grid's counts span orders of magnitude: on a linear scale the
    front's cheap end would carry almost all the area.
    """
    area, prev_hm = 0.0, ref[0]
    for hm, p in pareto_front([(hm, math.log10(p)) for hm, p in points]):
        if hm > prev_hm and p < ref[1]:
            area += (hm - prev_hm) * (ref[1] - p)
            prev_hm = hm
    return area


def hv_reference(grid: Grid) -> tuple[float, float]:
    """Reference point: the grid's worst HM minus 1 point, its largest log10 params plus 0.1 decade."""
    hms = [grid.final(k) for k in grid.curves]
    return min(hms) - 1.0, math.log10(max(grid.params.values())) + 0.1


def hypervolume_ratio(grid: Grid, result: SweepResult) -> float:
    """Hypervolume of the sweep's COMPLETE trials over that of the whole grid."""
    ref = hv_reference(grid)
    found = [(f["values"][0], f["values"][1]) for f in result.finished if f["state"] == "COMPLETE"]
    return hypervolume(found, ref) / hypervolume([(grid.final(k), grid.params[k]) for k in grid.curves], ref)


# --- the benchmark's summary --------------------------------------------------------------------------------
def efficiency(
    grid: Grid, seeds: Sequence[int], budget: int, workers: int = 4, tolerance: float = 1.0
) -> dict[str, dict[str, Any]]:
    """Per method: units to reach within ``tolerance`` HM of the grid's best, per seed and their median."""
    target = grid.best() - tolerance
    out = {}
    for method in METHODS:
        units = [replay_sweep(grid, method, s, budget, workers).units_to_reach(target) for s in seeds]
        out[method] = {"units": units, "median": statistics.median(units),
                       "reached": sum(math.isfinite(u) for u in units)}  # fmt: skip
    return out


def multi_objective(
    grid: Grid,
    seeds: Sequence[int],
    budget: int,
    workers: int = 4,
    methods: Sequence[str] = ("random", "nsga2", "tpe"),
) -> dict[str, dict[str, Any]]:
    """Per method: hypervolume ratio (found front / grid front) after ``budget`` units, per seed and median."""
    out = {}
    for method in methods:
        ratios = [hypervolume_ratio(grid, replay_sweep(grid, method, s, budget, workers, multi_objective=True))
                  for s in seeds]  # fmt: skip
        out[method] = {"ratios": ratios, "median": statistics.median(ratios)}
    return out
