"""Compare searchers on a table: many replayed sweeps per method, regret and hypervolume against compute.

Methods (each a variant of the given space, so only the named difference changes):

- ``random``: Optuna's RandomSampler, no early stopping;
- ``random+asha``: RandomSampler with Ray's ASHA on the first objective;
- ``tpe``: ranksearch's TPE (multivariate, group, constant liar), no early stopping;
- ``tpe+asha``: that TPE with Ray's ASHA on the first objective, one bracket (ranksearch before MO-ASHA);
- ``default``: the space exactly as ``ranksearch sweep`` runs it (its sampler, prior, early stopping);
- ``ray-stock``: Ray Tune's own ``OptunaSearch`` (its default TPESampler; a scheduler-stopped trial is told
  COMPLETE with its last value) with Ray's ``ASHAScheduler``;
- ``nsga2`` (several objectives only): Optuna's NSGA-II, no early stopping;
- ``tpe+asha-complete`` (by name only): ``tpe+asha`` with Ray's own ``OptunaSearch`` around ranksearch's sampler,
  so a stopped trial is told COMPLETE with its truncated value: ``tpe+asha`` against it is the worth of the
  PRUNED handling alone.

Every ASHA variant gets the same grace period and reduction factor as ``default`` (the baselines at the same
settings); ``compare(grace="auto")`` sets that grace period from the table: the first fidelity whose values rank
runs like their true final values (``analysis.choose_grace_period``). ``compare`` runs ``seeds`` sweeps per method at the same compute budget and workers, and
``Comparison.summary`` reports medians over sweep seeds with 95 % bootstrap intervals.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ranksearch.errors import ConfigError
from ranksearch.replay import analysis
from ranksearch.replay.engine import SweepTrace, replay_sweep
from ranksearch.replay.table import Table
from ranksearch.space.space import SearchSpace

SINGLE = ("random", "random+asha", "tpe", "tpe+asha", "default", "ray-stock")
MULTI = ("random", "random+asha", "tpe", "tpe+asha", "default", "ray-stock", "nsga2")
KNOWN = (*MULTI, "tpe+asha-complete")


def variant(
    space: SearchSpace, *, sampler: dict | None = None, early_stopping: dict | None = None
) -> SearchSpace:
    """The space with some sampler / early-stopping fields replaced."""
    spec = space.spec
    update: dict[str, Any] = {}
    if sampler is not None:
        update["sampler"] = spec.sampler.model_copy(update=sampler)
    if early_stopping is not None:
        update["early_stopping"] = spec.early_stopping.model_copy(update=early_stopping)
    return SearchSpace(spec.model_copy(update=update), space.source, space.text)


@dataclass
class Method:
    """A named searcher: the space it runs, and optionally Ray's own searcher/scheduler instead of ours."""

    name: str
    space: SearchSpace
    searcher: Callable[[SearchSpace, int], Any] | None = None  # (space, seed) -> Ray Searcher
    scheduler: Callable[[SearchSpace, int], Any] | None = None  # (space, max_t) -> Ray TrialScheduler


def methods(space: SearchSpace, names: tuple[str, ...] | list[str] | None = None) -> dict[str, Method]:
    """The comparison's methods for this space (see the module docstring)."""
    multi = len(space.spec.objectives) > 1
    names = list(names or (MULTI if multi else SINGLE))
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ConfigError([("--methods", f"unknown method(s) {unknown}; known: {', '.join(KNOWN)}")])
    if "nsga2" in names and not multi:
        raise ConfigError([("--methods", "nsga2 is for several objectives")])
    es = space.spec.early_stopping
    asha = {"type": "asha", "brackets": 1, "rank_by": "first"}
    none = {"type": "none"}
    tpe_opts = dict(space.spec.sampler.options) if space.spec.sampler.type == "tpe" else {}
    tpe = {"type": "tpe", "options": tpe_opts, "enqueue_defaults": False}
    rand = {"type": "random", "options": {}, "enqueue_defaults": False}
    table = {
        "random": Method("random", variant(space, sampler=rand, early_stopping=none)),
        "random+asha": Method("random+asha", variant(space, sampler=rand, early_stopping=asha)),
        "tpe": Method("tpe", variant(space, sampler=tpe, early_stopping=none)),
        "tpe+asha": Method("tpe+asha", variant(space, sampler=tpe, early_stopping=asha)),
        "default": Method("default", space),
        "ray-stock": Method(
            "ray-stock", variant(space, early_stopping=asha if es.type == "asha" else none),
            searcher=_ray_stock_searcher, scheduler=_ray_stock_scheduler if es.type == "asha" else None,
        ),
        "nsga2": Method("nsga2", variant(space, sampler={"type": "nsga2", "options": {}}, early_stopping=none)),
        "tpe+asha-complete": Method(
            "tpe+asha-complete", variant(space, sampler=tpe, early_stopping=asha), searcher=_ray_searcher_our_sampler,
            scheduler=lambda s, max_t: _space_scheduler(s, max_t),
        ),
    }  # fmt: skip
    return {n: table[n] for n in names}


def _ray_stock_searcher(space: SearchSpace, seed: int) -> Any:
    from ray.tune.search.optuna import OptunaSearch

    from ranksearch.space.optuna_space import DefineByRun
    from ranksearch.sweep.search import objective_args

    metric, mode = objective_args(space)
    return OptunaSearch(space=DefineByRun(space), metric=metric, mode=mode, seed=seed)


def _ray_searcher_our_sampler(space: SearchSpace, seed: int) -> Any:
    """Ray's own OptunaSearch (stopped trials told COMPLETE) around the sampler ranksearch builds."""
    from ray.tune.search.optuna import OptunaSearch

    from ranksearch.space.optuna_space import DefineByRun, build_sampler
    from ranksearch.sweep.search import objective_args

    metric, mode = objective_args(space)
    return OptunaSearch(space=DefineByRun(space), metric=metric, mode=mode, sampler=build_sampler(space))


def _space_scheduler(space: SearchSpace, max_t: int) -> Any:
    from ranksearch.sweep.search import build_scheduler

    return build_scheduler(space, max_t=max_t)


def _ray_stock_scheduler(space: SearchSpace, max_t: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    es, first = space.spec.early_stopping, space.spec.objectives[0]
    return ASHAScheduler(
        time_attr="training_iteration", metric=first.metric, mode=first.mode, max_t=max_t,
        grace_period=min(es.grace_period, max_t), reduction_factor=es.reduction_factor,
    )  # fmt: skip


def run_method(
    table: Table,
    method: Method,
    seed: int,
    *,
    workers: int,
    budget_s: float | None,
    max_trials: int | None = None,
) -> SweepTrace:
    """One replayed sweep of one method."""
    from ranksearch.sweep.search import with_sampler_seed

    seeded = with_sampler_seed(method.space, seed)
    searcher = method.searcher(seeded, seed) if method.searcher else None
    scheduler: Any = method.scheduler(seeded, table.fidelities) if method.scheduler else "space"
    if method.searcher is not None and method.scheduler is None:
        scheduler = None
    return replay_sweep(
        table, seeded, seed=seed, workers=workers, budget_s=budget_s, max_trials=max_trials,
        searcher=searcher, scheduler=scheduler,
    )  # fmt: skip


@dataclass
class Comparison:
    """Replayed sweeps per method, with the grid of compute at which curves are read."""

    table: Table
    space: SearchSpace
    traces: dict[str, list[SweepTrace]]
    budget_s: float
    grid: np.ndarray
    noise: analysis.NoiseReport
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def multi(self) -> bool:
        return len(self.space.spec.objectives) > 1

    def grace_period(self) -> int:
        """The ASHA methods' grace period (capped at the table's fidelities, as the scheduler caps it)."""
        return min(self.space.spec.early_stopping.grace_period, self.table.fidelities)

    def regret(self, name: str) -> np.ndarray:
        """``[seeds, grid]`` regret curves of a method."""
        return np.array(
            [analysis.regret_curve(t, self.table, self.space, self.grid) for t in self.traces[name]]
        )

    def hypervolume(self, name: str) -> np.ndarray:
        """``[seeds, grid]`` hypervolume-ratio curves of a method (several objectives)."""
        scale = analysis.ParetoScale(self.table, self.space)
        return np.array(
            [analysis.hypervolume_curve(t, scale, self.space, self.grid) for t in self.traces[name]]
        )

    def reach_costs(self, name: str, tolerance: float) -> np.ndarray:
        return np.array(
            [analysis.cost_to_reach(t, self.table, self.space, tolerance) for t in self.traces[name]]
        )

    def summary(self) -> dict[str, Any]:
        """Per method: final regret, compute to reach random's final regret and to get within one seed SD,
        hypervolume at the full budget (several objectives); medians over seeds with 95 % bootstrap CIs."""
        out: dict[str, Any] = {
            "budget_s": self.budget_s, "seeds": len(next(iter(self.traces.values()))),
            "noise": self.noise.__dict__, "best_true": analysis.best_true(self.table, self.space),
            "tolerance": self.noise.top_seed_sd, "grace_period": self.grace_period(),
            "grace_period_auto": analysis.choose_grace_period(self.noise), "notes": self.notes, "methods": {},
        }  # fmt: skip
        sd = self.noise.top_seed_sd
        ref = self.regret("random") if "random" in self.traces else None
        rand_reach = self.reach_costs("random", sd) if "random" in self.traces else None
        stock_reach = self.reach_costs("ray-stock", sd) if "ray-stock" in self.traces else None
        hv_rand = self.hypervolume("random")[:, -1] if self.multi and "random" in self.traces else None
        hv_nsga = self.hypervolume("nsga2")[:, -1] if self.multi and "nsga2" in self.traces else None
        for name in self.traces:
            curves = self.regret(name)
            reach = self.reach_costs(name, sd)
            m: dict[str, Any] = {
                "final_regret": analysis.bootstrap_median(curves[:, -1]),
                "reach_1sd_s": analysis.bootstrap_median(reach),
                "reached_1sd": int(np.isfinite(reach).sum()),
                "trials": float(np.median([len(t.records) for t in self.traces[name]])),
                "pruned": float(
                    np.median([sum(r.state == "PRUNED" for r in t.records) for t in self.traces[name]])
                ),
                "exact_matches": float(
                    np.mean([np.mean([r.exact for r in t.records]) for t in self.traces[name]])
                ),
            }
            if ref is not None:
                m["reach_random_final"] = analysis.bootstrap_reach_fraction(curves, ref, self.grid)
            if rand_reach is not None:
                m["reach_1sd_vs_random"] = analysis.bootstrap_ratio(reach, rand_reach)
            if stock_reach is not None:
                m["reach_1sd_vs_ray_stock"] = analysis.bootstrap_ratio(reach, stock_reach)
            if self.multi:
                hv = self.hypervolume(name)[:, -1]
                m["hypervolume"] = analysis.bootstrap_median(hv)
                if hv_rand is not None:
                    m["hypervolume_vs_random"] = analysis.bootstrap_ratio(hv, hv_rand)
                if hv_nsga is not None:
                    m["hypervolume_vs_nsga2"] = analysis.bootstrap_ratio(hv, hv_nsga)
            out["methods"][name] = m
        return out


def parse_budget(text: str | None, table: Table) -> float | None:
    """Compute budget in trial-seconds: ``3600``/``3600s``, ``90m``, ``2h``, or ``50x`` (50 × the median
    configuration's full-run cost). None: no budget given.

    Raises:
        ConfigError: anything else.
    """
    if text is None:
        return None
    t = str(text).strip().lower()
    units = {"x": float(np.nanmedian(table.full_cost())), "h": 3600.0, "m": 60.0, "s": 1.0}
    factor = 1.0
    if t and t[-1] in units:
        factor, t = units[t[-1]], t[:-1]
    try:
        value = float(t) * factor
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError([("--budget", f"{text!r}: give seconds (3600, 3600s), 90m, 2h or 50x (full runs)")])
    return value


def compare(
    table: Table,
    space: SearchSpace,
    *,
    seeds: int = 50,
    workers: int = 4,
    budget_s: float | None = None,
    names: list[str] | None = None,
    grace: int | str | None = None,
    first_seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Comparison:
    """Replay ``seeds`` sweeps of each method (sweep seeds first_seed..first_seed+seeds-1) at one compute budget.

    Args:
        table, space: as for ``replay_sweep``.
        seeds: sweeps per method.
        workers: trials at once.
        budget_s: compute per sweep in trial-seconds (default: 50 full runs of the median configuration, or the
            space's CPU/GPU-hour budget).
        names: methods (default: all that apply).
        grace: ASHA's grace period for every ASHA method: evaluations, ``"auto"`` (chosen from the table's
            early/final rank correlation) or None (the space's ``early_stopping.grace_period``).
        first_seed: the first sweep seed (another range of seeds: an A/A check of the spread).
        progress: called as ``progress(method, done, total)`` after each sweep.
    """
    import optuna

    t0 = time.perf_counter()
    first = space.spec.objectives[0]
    noise = analysis.noise_report(table, first.metric, first.mode)
    notes = []
    if grace is not None:
        g = analysis.choose_grace_period(noise) if grace == "auto" else int(grace)
        if not 1 <= g <= table.fidelities:
            raise ConfigError(
                [("--grace", f"{grace}: give 1..{table.fidelities} (the table's fidelities) or auto")]
            )
        space = variant(space, early_stopping={"grace_period": g})
        notes.append(
            f"grace period {g}" + (" (auto: first fidelity with Spearman >= 0.5)" if grace == "auto" else "")
        )
    ms = methods(space, names)
    if budget_s is None and space.spec.budget is not None and space.spec.budget.trials is None:
        b = space.spec.budget
        per = space.spec.resources.gpu if b.gpu_hours is not None else space.spec.resources.cpu
        budget_s = (b.gpu_hours or b.cpu_hours or 0.0) * 3600.0 / per
    if budget_s is None:
        budget_s = 50 * float(np.nanmedian(table.full_cost()))
    traces: dict[str, list[SweepTrace]] = {}
    total = len(ms) * seeds
    done = 0
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per replayed sweep
    with warnings.catch_warnings():
        # Ray's OptunaSearch times the define-by-run call, sampling included, and warns about training there
        warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument")
        try:
            for name, method in ms.items():
                traces[name] = []
                for s in range(first_seed, first_seed + seeds):
                    traces[name].append(run_method(table, method, s, workers=workers, budget_s=budget_s))
                    done += 1
                    if progress is not None:
                        progress(name, done, total)
        finally:
            optuna.logging.set_verbosity(verbosity)
    grid = np.linspace(0.0, budget_s, 101)
    return Comparison(table, space, traces, budget_s, grid, noise, time.perf_counter() - t0, notes)
