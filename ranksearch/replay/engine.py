"""Replay one sweep against a table: the production searcher and Ray's scheduler, in simulated time.

No Ray runtime and no training: ``replay_sweep`` plays Tune's part. It asks the searcher for a configuration
whenever one of ``workers`` simulated workers is free, answers each suggestion with the table's matching
configuration (``Matcher``), draws one of its recorded seeds (a real sweep sees one noisy run, not the mean),
and delivers that run's evaluations in order of simulated time (each arrives ``cost_s`` seconds after the
previous one). Every evaluation goes through the calls Tune's controller makes, in its order
(``ray.tune.execution.tune_controller``):

1. the stopper (the space's compute budget) — ``True`` stops the trial;
2. ``scheduler.on_trial_result`` (ASHA / MO-ASHA) — CONTINUE or STOP;
3. if not stopped, ``searcher.on_trial_result``;
4. when stopped, or after the run's last evaluation: ``scheduler.on_trial_complete`` and
   ``searcher.on_trial_complete`` with the last result (``is_final`` only on the last evaluation, so
   ``PruneAwareOptunaSearch`` tells Optuna PRUNED for a stopped trial).

When the budget stopper says ``stop_all``, every running trial is stopped the same way. A run whose objective
is NaN at some evaluation failed there: it reports ``status: failed`` (as the sweep's trainable does after a
diverged run) and the searcher tells Optuna FAIL.

Compute is the sum of every worker's busy seconds (a trial stopped between evaluations still spent the time
since its last one). Runs are deterministic for a seed: the searcher's sampler seed is the sweep seed, table
seeds are drawn from ``numpy.random.default_rng(seed)``, and NumPy's global generator (Ray's ASHA draws the
bracket of each new trial from it) is seeded and restored around the sweep.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ranksearch.replay.table import Table
from ranksearch.space.space import FAMILY_PATH, SearchSpace

log = logging.getLogger(__name__)

CONTINUE, STOP = "CONTINUE", "STOP"  # ray.tune.schedulers.TrialScheduler's decisions


@dataclass
class SimTrial:
    """What Ray's schedulers read of a Tune trial: its id (and, for debugging, its config and status)."""

    trial_id: str
    config: dict[str, Any]
    status: str = "RUNNING"


@dataclass
class TrialRecord:
    """One replayed trial, as it ended.

    ``state``: COMPLETE, PRUNED (stopped by the scheduler or the budget) or FAIL (NaN objective);
    ``fidelity``: evaluations it ran; ``values``: its last reported objective values (one seed);
    ``compute``: the sweep's total compute (seconds) when it ended; ``end_s``: simulated wall time then.
    """

    trial_id: str
    config: int
    seed: int
    state: str
    fidelity: int
    values: list[float]
    feasible: bool
    compute: float
    start_s: float
    end_s: float
    exact: bool
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepTrace:
    """A replayed sweep: its trials in the order they ended, total compute, and the searcher (for inspection)."""

    records: list[TrialRecord]
    compute: float
    wall_s: float
    stopped_by_budget: bool
    searcher: Any = None

    @property
    def study(self) -> Any:
        return getattr(self.searcher, "_ot_study", None)


class Matcher:
    """Answers a suggestion with a table configuration: the exact one, or the nearest.

    Categorical columns must match (each mismatch counts more than any numeric distance); numeric columns are
    compared on a [0, 1] scale over the table's range (log scale where the space samples the parameter
    log-uniformly). Space parameters are matched by their field path; a table parameter that the space fixes
    (in ``base`` or a family's ``base``) must equal the fixed value; other table columns are free.
    """

    def __init__(self, table: Table, space: SearchSpace):
        self.table, self.space = table, space
        log_paths = {
            a.path for f in space.families for a in space.active_params(f) if getattr(a.spec, "log", False)
        }
        self.numeric: dict[str, np.ndarray] = {}
        self.categorical: dict[str, np.ndarray] = {}
        self.scale: dict[str, tuple[bool, float, float]] = {}
        for p in table.params:
            col = table.configs[p]
            present = [v for v in col if v is not None]
            if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
                x = np.array([np.nan if v is None else float(v) for v in col])
                use_log = p in log_paths and np.nanmin(x) > 0
                z = np.log(x) if use_log else x
                lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
                self.scale[p] = (use_log, lo, (hi - lo) or 1.0)
                self.numeric[p] = (z - lo) / self.scale[p][2]
            else:
                self.categorical[p] = np.array([_cat(v) for v in col], dtype=object)
        self._cache: dict[tuple, tuple[int, bool]] = {}

    def query(self, params: dict[str, Any]) -> dict[str, Any]:
        """Table column -> wanted value, for the searcher's parameter values (Optuna names)."""
        family = params.get(FAMILY_PATH)
        family = family if family is not None else self.space.default_family
        out: dict[str, Any] = {}
        for path, value in _fixed(self.space, family).items():
            if path in self.table.params:
                out[path] = value
        if FAMILY_PATH in self.table.params and (FAMILY_PATH in params or self.space.family_param is None):
            out[FAMILY_PATH] = family
        for a in self.space.active_params(family):
            if a.name in params and a.path in self.table.params:
                out[a.path] = params[a.name]
        return out

    def match(self, params: dict[str, Any]) -> tuple[int, bool]:
        """(configuration index, exact?) for the searcher's parameter values."""
        q = self.query(params)
        key = tuple(sorted((k, _cat(v)) for k, v in q.items()))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        n = self.table.n_configs
        mismatches = np.zeros(n)
        dist = np.zeros(n)
        for p, v in q.items():
            if p in self.categorical:
                mismatches += self.categorical[p] != _cat(v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                use_log, lo, width = self.scale[p]
                z = (math.log(v) if use_log and v > 0 else float(v)) - lo
                d = np.abs(self.numeric[p] - z / width)
                dist += np.where(np.isnan(d), 1.0, d) ** 2
            else:
                mismatches += 1  # a categorical value for a numeric column: never an exact match
        total = mismatches * 1e6 + dist
        i = int(np.argmin(total))
        hit = (i, bool(total[i] < 1e-18))
        self._cache[key] = hit
        return hit


def _cat(v: Any) -> str:
    """Categorical comparison key: Optuna values and table cells as the space encodes them."""
    if v is None:
        return "<null>"
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _fixed(space: SearchSpace, family: str) -> dict[str, Any]:
    """Dotted path -> fixed value, from the space's ``base`` and the family's ``base``."""
    out: dict[str, Any] = {}
    _flatten(space.spec.base, "", out)
    sub = space.spec.families.get(family)
    if sub is not None:
        _flatten(sub.base, "", out)
    return out


def _flatten(data: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for k, v in data.items():
        if isinstance(v, dict):
            _flatten(v, f"{prefix}{k}.", out)
        else:
            out[f"{prefix}{k}"] = v


@dataclass
class _Run:
    trial: SimTrial
    config: int
    seed_idx: int
    start: float
    exact: bool
    params: dict[str, Any]
    done: int = 0  # evaluations delivered
    last_time: float = 0.0
    last_result: dict[str, Any] = field(default_factory=dict)


def replay_sweep(
    table: Table,
    space: SearchSpace,
    *,
    seed: int = 0,
    workers: int = 4,
    budget_s: float | None = None,
    max_trials: int | None = None,
    searcher: Any = None,
    scheduler: Any = "space",
    stopper: Any = "space",
    on_trial_end: Callable[[TrialRecord], None] | None = None,
    storage: Any = None,
) -> SweepTrace:
    """Replay one sweep of ``space`` against ``table`` (see the module docstring).

    Args:
        table: the recorded table; its parameter columns are matched to the space's parameters by path.
        space: the search space, as ``ranksearch sweep`` would run it.
        seed: the sweep seed: sampler seed, table-seed draws and Ray's bracket draws.
        workers: trials running at once (the space's ``concurrency`` in a real sweep).
        budget_s: compute budget in trial-seconds (the table's ``cost_s`` summed over trials); None: the
            space's ``budget`` (CPU/GPU-hours through the production stopper, or its trial count).
        max_trials: stop asking for trials after this many; default: the space's ``budget.trials`` if set.
        searcher: a Ray ``Searcher`` to use instead of the production one (a comparison baseline).
        scheduler: a Ray ``TrialScheduler``, None for none, or ``"space"``: the production one for the space.
        stopper: a Tune ``Stopper``, None, or ``"space"``: the space's budget (or ``budget_s``).
        on_trial_end: called with each ``TrialRecord`` as the trial ends (progress).
        storage: an Optuna storage holding the study of an earlier replay: this sweep continues it, as
            ``ranksearch sweep --extend`` continues a finished sweep's study (defaults are not enqueued again;
            trial ids continue after the study's trials).

    Returns:
        A ``SweepTrace``.
    """
    from ranksearch.sweep.compute_budget import ComputeBudget
    from ranksearch.sweep.search import build_scheduler, build_searcher, build_stopper, with_sampler_seed

    objectives = [o.metric for o in space.spec.objectives]
    E = table.fidelities
    seeded = with_sampler_seed(space, seed)
    if searcher is None:
        searcher = build_searcher(seeded, storage=storage)
    if scheduler == "space":
        scheduler = build_scheduler(seeded, max_t=E)
    if stopper == "space":
        stopper = ComputeBudget(budget_s / 3600.0, 1.0, "trial_hours") if budget_s else build_stopper(seeded)
    b = space.spec.budget
    if max_trials is None and b is not None and b.trials is not None:
        max_trials = b.trials
    if stopper is None and max_trials is None:
        raise ValueError("replay_sweep needs a budget: budget_s, max_trials or a budget in the space")

    matcher = Matcher(table, space)
    rng = np.random.default_rng(seed)
    saved = np.random.get_state()
    np.random.seed(seed % 2**32)
    records: list[TrialRecord] = []
    heap: list[tuple[float, int, _Run]] = []
    running: dict[str, _Run] = {}
    now, busy_done, asked, seq, stop_all, exhausted = 0.0, 0.0, 0, 0, False, False
    study = getattr(searcher, "_ot_study", None)
    # an extended study's trials come first (enqueued defaults are WAITING: they become this sweep's first trials)
    first_id = (
        sum(t.state.name != "WAITING" for t in study.get_trials(deepcopy=False)) if study is not None else 0
    )

    def compute_at(t: float) -> float:
        return busy_done + sum(t - r.start for r in running.values())

    def end(run: _Run, result: dict[str, Any], state_hint: str) -> None:
        nonlocal busy_done
        if scheduler is not None:
            scheduler.on_trial_complete(None, run.trial, result)
        searcher.on_trial_complete(run.trial.trial_id, result=result)
        run.trial.status = "TERMINATED"
        c = compute_at(now)
        del running[run.trial.trial_id]
        busy_done += now - run.start
        values = [float(result.get(m, math.nan)) for m in objectives]
        rec = TrialRecord(
            run.trial.trial_id, run.config, run.seed_idx, state_hint, run.done, values,
            _feasible(space, result) if state_hint == "COMPLETE" else False, c, run.start, now, run.exact,
            run.params,
        )  # fmt: skip
        records.append(rec)
        if on_trial_end is not None:
            on_trial_end(rec)

    try:
        while True:
            # hand free workers new trials, as Tune does between events
            while (
                not stop_all
                and not exhausted
                and len(running) < workers
                and (max_trials is None or asked < max_trials)
            ):
                trial_id = f"{first_id + asked:05d}"
                params = searcher.suggest(trial_id)
                if params is None or params == "FINISHED":
                    exhausted = True
                    break
                asked += 1
                config, exact = matcher.match(params)
                n_seeds = int(table.n_seeds[config])
                run = _Run(SimTrial(trial_id, params), config, int(rng.integers(n_seeds)), now, exact, params)
                run.last_time = now
                if scheduler is not None:
                    scheduler.on_trial_add(None, run.trial)
                running[trial_id] = run
                seq += 1
                heapq.heappush(heap, (now + _step_cost(table, run, 0), seq, run))
            if not heap:
                break
            now, _, run = heapq.heappop(heap)
            f = run.done
            run.done += 1
            result = _result(table, run, f, objectives, now)
            run.last_result = result
            failed = result.get("status") == "failed"
            decision = STOP if stopper is not None and stopper(run.trial.trial_id, result) else CONTINUE
            if decision == CONTINUE and scheduler is not None:
                decision = scheduler.on_trial_result(None, run.trial, result)
            if decision != STOP:
                searcher.on_trial_result(run.trial.trial_id, result)
            final = result.get("is_final", False)
            if decision == STOP or final:
                state = "FAIL" if failed else "COMPLETE" if final else "PRUNED"
                end(run, result, state)
            else:
                seq += 1
                heapq.heappush(heap, (now + _step_cost(table, run, run.done), seq, run))
            if stopper is not None and not stop_all and stopper.stop_all():
                stop_all = True
                for _, _, other in sorted(heap, key=lambda x: (x[0], x[1])):
                    if other.trial.trial_id in running:
                        end(other, other.last_result, "PRUNED")
                heap.clear()
    finally:
        np.random.set_state(saved)
    return SweepTrace(records, busy_done, now, stop_all, searcher)


def _step_cost(table: Table, run: _Run, f: int) -> float:
    """Seconds from evaluation f-1 to evaluation f (0-based) of this run."""
    c = table.cost[run.config, run.seed_idx]
    return float(c[f] - (c[f - 1] if f > 0 else 0.0))


def _result(table: Table, run: _Run, f: int, objectives: list[str], now: float) -> dict[str, Any]:
    """The result dict the sweep's trainable (plus Tune's own keys) would report at evaluation f (0-based)."""
    E = table.fidelities
    metrics = {m: float(table.values[m][run.config, run.seed_idx, f]) for m in table.metrics}
    failed = any(not math.isfinite(metrics.get(m, math.nan)) for m in objectives)
    cost = table.cost[run.config, run.seed_idx]
    result: dict[str, Any] = dict(metrics)
    if failed:  # the trainable's result after a diverged run: final, failed, NaN objectives
        result.update(
            {m: math.nan for m in objectives}, is_final=True, status="failed", error="NaN objective"
        )
    else:
        result.update(
            is_final=f == E - 1, eval_step=float(table.steps[run.config, run.seed_idx, f]), replicate=0.0
        )
        if f == E - 1:
            result["status"] = "completed"
    result.update(
        training_iteration=f + 1, time_this_iter_s=float(cost[f] - (cost[f - 1] if f else 0.0)),
        time_total_s=float(cost[f]), trial_id=run.trial.trial_id, done=bool(result["is_final"]),
    )  # fmt: skip
    return result


def _feasible(space: SearchSpace, result: dict[str, Any]) -> bool:
    from ranksearch.sweep.searcher import constraint_values

    return all(v <= 0 for v in constraint_values(list(space.spec.constraints), result).values())
