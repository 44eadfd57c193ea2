"""Allocation search by evaluation alone: Optuna proposes per-site ranks, the supernet scores them, no training.

An allocation is one rank per candidate site (from ``search.ranks``). Its trainable parameters are
``Σ_i r_i · params_per_rank_i`` (what an ordinary trial with that ``adapter.rank_pattern`` trains). The space's
``search.budget`` (total rank or total parameters) and its ``constraints`` on ``trainable_params`` bound it:
a proposal above them is *repaired* (``AllocationSpace.repair``: the highest rank is lowered one candidate at a
time) before it is scored, so no scored allocation ever exceeds the budget. Optuna learns both: the proposal is
told its repaired score with a positive constraint violation (infeasible), the repaired allocation is added as
a feasible trial of its own.

Two objectives (the space's first objective, e.g. ``val/hm``, and ``trainable_params``, minimised) give the
Pareto front of accuracy against parameters; ``constraints`` on other metrics drop allocations from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ranksearch.errors import ConfigError

PARAMS = "trainable_params"


@dataclass
class AllocationSpace:
    """Candidate sites and ranks, the parameters one rank costs per site, the budget and the constraints.

    Attributes:
        sites: site keys (``vision.0.q``), in the supernet's layer order.
        ranks: candidate ranks, ascending.
        params_per_rank: trainable parameters of one rank-1 component, per site.
        total_rank / total_params: the budget (at most one), None = unbounded.
        constraints: ``ranksearch.space.spec.Constraint`` objects; those on ``trainable_params`` bound the
            allocation before scoring (max: repaired into, min: infeasible), others apply to the scores.
    """

    sites: list[str]
    ranks: list[int]
    params_per_rank: list[int]
    total_rank: int | None = None
    total_params: int | None = None
    constraints: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.sites) != len(self.params_per_rank):
            raise ValueError("one params_per_rank per site")
        self.max_params = min(
            [c.max for c in self.constraints if c.metric == PARAMS and c.max is not None], default=None
        )
        floor = self.minimum()
        if not self.fits(floor):
            what = (
                f"total_rank {self.total_rank}"
                if self.total_rank is not None and self.rank_total(floor) > self.total_rank
                else f"{self.params(floor)} parameters"
            )
            raise ConfigError(
                [
                    (
                        "search.budget",
                        f"even the smallest allocation (every site at rank {self.ranks[0]}) exceeds the budget: "
                        f"{what} over {len(self.sites)} sites; raise the budget or add a smaller rank",
                    )
                ]
            )

    # ------------------------------------------------------------------------------------------ measures
    def params(self, alloc: Sequence[int]) -> int:
        return sum(int(r) * c for r, c in zip(alloc, self.params_per_rank, strict=True))

    def rank_total(self, alloc: Sequence[int]) -> int:
        return sum(int(r) for r in alloc)

    def minimum(self) -> list[int]:
        return [self.ranks[0]] * len(self.sites)

    def maximum(self) -> list[int]:
        return [self.ranks[-1]] * len(self.sites)

    def fits(self, alloc: Sequence[int]) -> bool:
        """Within ``search.budget`` and every ``trainable_params`` maximum."""
        if self.total_rank is not None and self.rank_total(alloc) > self.total_rank:
            return False
        p = self.params(alloc)
        if self.total_params is not None and p > self.total_params:
            return False
        return self.max_params is None or p <= self.max_params

    def violation(self, alloc: Sequence[int]) -> float:
        """How far above the budget (> 0) or 0; in parameters, or rank units for a rank budget."""
        over = 0.0
        if self.total_rank is not None:
            over = max(over, self.rank_total(alloc) - self.total_rank)
        p = self.params(alloc)
        for cap in (self.total_params, self.max_params):
            if cap is not None:
                over = max(over, p - cap)
        return float(over)

    def repair(self, alloc: Sequence[int]) -> list[int]:
        """The allocation itself if it fits, else the highest rank lowered one candidate at a time until it does.

        Ties go to the site whose component costs most (then the later site): the cut that frees the most
        budget first. Terminates at ``minimum()`` at the latest, which fits (checked in ``__post_init__``).
        """
        out = [int(r) for r in alloc]
        index = {r: i for i, r in enumerate(self.ranks)}
        while not self.fits(out):
            i = max(
                (i for i, r in enumerate(out) if index[r] > 0),
                key=lambda i: (out[i], self.params_per_rank[i], i),
            )
            out[i] = self.ranks[index[out[i]] - 1]
        return out

    def as_dict(self, alloc: Sequence[int]) -> dict[str, int]:
        return {s: int(r) for s, r in zip(self.sites, alloc, strict=True)}


@dataclass
class Evaluation:
    """One scored allocation: its ranks, metrics (``val/...``, ``trainable_params``) and where it came from."""

    number: int
    ranks: list[int]
    metrics: dict[str, float]
    proposed: list[int]
    feasible: bool = True
    front: bool = False

    @property
    def repaired(self) -> bool:
        return self.ranks != self.proposed


def feasible(metrics: dict[str, float], constraints: Sequence[Any]) -> bool:
    """Whether every constraint holds (a missing or NaN metric fails its constraint)."""
    for c in constraints:
        v = metrics.get(c.metric)
        if v is None or not math.isfinite(v) or c.violation(v) > 0:
            return False
    return True


def pareto_front(evals: Sequence[Evaluation], metric: str, mode: str) -> list[Evaluation]:
    """Feasible evaluations not dominated in (metric, trainable_params↓); best metric first, duplicates once."""
    sign = 1.0 if mode == "max" else -1.0
    pts = {}
    for e in evals:
        if e.feasible and math.isfinite(e.metrics.get(metric, math.nan)):
            pts.setdefault(tuple(e.ranks), e)
    cand = list(pts.values())
    front = []
    for e in cand:
        a, p = sign * e.metrics[metric], e.metrics[PARAMS]
        dominated = any(
            (sign * o.metrics[metric] >= a and o.metrics[PARAMS] <= p)
            and (sign * o.metrics[metric] > a or o.metrics[PARAMS] < p)
            for o in cand
        )
        if not dominated:
            front.append(e)
    return sorted(front, key=lambda e: (-sign * e.metrics[metric], e.metrics[PARAMS]))


def build_sampler(kind: str, seed: int) -> Any:
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # multivariate: per-site ranks interact through the budget; 10 random start-up points as Optuna's default
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def search_allocations(
    space: AllocationSpace,
    score: Callable[[list[list[int]]], list[dict[str, float]]],
    *,
    evaluations: int,
    metric: str,
    mode: str = "max",
    sampler: str = "tpe",
    seed: int = 0,
    batch: int = 1,
    storage: Any = None,
    study_name: str = "oneshot",
    enqueue: Sequence[Sequence[int]] = (),
    on_result: Callable[[Evaluation], None] | None = None,
) -> list[Evaluation]:
    """Propose, repair and score ``evaluations`` allocations; returns every scored one, front marked.

    Args:
        space: the allocation space.
        score: scores a batch of allocations (each a rank list), returning one metrics dict each (must hold
            ``metric``); the pipeline passes Ray tasks, tests a local function.
        evaluations: proposals to make (an allocation proposed twice is scored once).
        metric, mode: the accuracy objective; the other is ``trainable_params`` (minimised).
        sampler: tpe, nsga2 or random; seed: its seed.
        batch: proposals asked for at once (scored in parallel by ``score``).
        storage: an Optuna storage (journal) so the study survives; a study already holding trials continues.
        enqueue: allocations scored first (e.g. the max and min: the front's ends).
        on_result: called with every new evaluation (tracking).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize" if mode == "max" else "minimize", "minimize"]
    study = optuna.create_study(
        directions=directions, sampler=build_sampler(sampler, seed), storage=storage, study_name=study_name,
        load_if_exists=True,
    )  # fmt: skip
    done = _replayed(study, space, metric)
    if not done:
        for alloc in enqueue:
            study.enqueue_trial(space.as_dict(alloc))
    seen = {tuple(e.ranks): e.metrics for e in done}
    proposals = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("proposal"))
    evals = list(done)
    while proposals < evaluations:
        n = min(batch, evaluations - proposals)
        trials = [study.ask() for _ in range(n)]
        proposed = [[int(t.suggest_categorical(s, space.ranks)) for s in space.sites] for t in trials]
        repaired = [space.repair(p) for p in proposed]
        todo = [r for r in dict.fromkeys(tuple(r) for r in repaired) if r not in seen]
        for r, m in zip(todo, score([list(r) for r in todo]) if todo else [], strict=True):
            seen[r] = {**m, PARAMS: float(space.params(r))}
        for t, p, r in zip(trials, proposed, repaired, strict=True):
            m = seen[tuple(r)]
            ok = feasible(m, space.constraints)
            values = [m[metric], m[PARAMS]]
            t.set_user_attr("proposal", True)
            t.set_user_attr("ranks", r)
            t.set_user_attr("metrics", m)
            over = space.violation(p)
            t.set_constraint("budget", over if over > 0 else (0.0 if ok else 1.0))
            study.tell(t, values)
            if over > 0:  # the scored point itself, feasible, so the samplers see where the budget's edge is
                study.add_trial(
                    optuna.trial.create_trial(
                        params=space.as_dict(r),
                        distributions={s: optuna.distributions.CategoricalDistribution(space.ranks) for s in space.sites},
                        values=values,
                        user_attrs={"ranks": r, "metrics": m, "repair_of": t.number},
                        system_attrs={"constraints:budget": 0.0 if ok else 1.0},
                    )
                )  # fmt: skip
            e = Evaluation(t.number, list(r), m, p, feasible=ok)
            evals.append(e)
            if on_result:
                on_result(e)
        proposals += n
    front = {id(e) for e in pareto_front(evals, metric, mode)}
    for e in evals:
        e.front = id(e) in front
    return evals


def _replayed(study: Any, space: AllocationSpace, metric: str) -> list[Evaluation]:
    """Evaluations already in a resumed study (its proposals), so a restarted search goes on where it was."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("proposal") and t.state.name == "COMPLETE":
            m = t.user_attrs["metrics"]
            proposed = [int(t.params[s]) for s in space.sites]
            out.append(
                Evaluation(t.number, list(t.user_attrs["ranks"]), m, proposed, feasible(m, space.constraints))
            )
    return out
