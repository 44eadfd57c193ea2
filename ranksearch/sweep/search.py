"""How a sweep searches: the searcher, the scheduler and the compute-budget stopper, built from a space.

One place, used by ``ranksearch sweep`` (``sweep.tuner``) and by the replay (``ranksearch.replay``), so a
replayed sweep runs exactly the production search path:

- ``build_searcher``: ``PruneAwareOptunaSearch`` over the space's define-by-run function, with the sampler as
  ``ranksearch.space.optuna_space.build_sampler`` builds it, the space's default configuration enqueued first
  (``sampler.enqueue_defaults``), outcome constraints and an optional warm start;
- ``build_scheduler``: Ray's ``ASHAScheduler`` (async successive halving; ``brackets`` > 1 is asynchronous
  Hyperband) on the first objective, or ``MultiObjectiveASHA`` (rungs rank trials by non-dominated sorting)
  when the space has several objectives and ``early_stopping.rank_by`` is ``pareto``;
- ``build_stopper``: the space's ``budget`` in CPU- or GPU-hours as a Tune ``Stopper``.

Time is counted in reports (``training_iteration``): one per validation evaluation and seed replicate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ranksearch.space.space import SearchSpace

log = logging.getLogger(__name__)


def objective_args(space: SearchSpace) -> tuple[str | list[str], str | list[str]]:
    """(metric, mode) as Ray's OptunaSearch takes them: plain strings for one objective, lists for several."""
    objs = space.spec.objectives
    if len(objs) == 1:
        return objs[0].metric, objs[0].mode
    return [o.metric for o in objs], [o.mode for o in objs]


def with_sampler_seed(space: SearchSpace, seed: int | None) -> SearchSpace:
    """The same space with another sampler seed (the replay runs one sweep per seed)."""
    spec = space.spec
    sampler = spec.sampler.model_copy(update={"seed": seed})
    return SearchSpace(spec.model_copy(update={"sampler": sampler}), space.source, space.text)


def default_points(space: SearchSpace) -> list[dict[str, Any]]:
    """The space's default configuration, one per family (default family first), as Optuna parameter values."""
    families = [space.default_family] + [f for f in space.families if f != space.default_family]
    return [space.default_params(f) for f in families]


def build_searcher(
    space: SearchSpace,
    *,
    storage: Any = None,
    study_name: str = "ranksearch",
    tune_dir: str | None = None,
    warm_start: Path | None = None,
) -> Any:
    """The sweep's searcher: ``PruneAwareOptunaSearch`` with the space's sampler, prior and constraints.

    Args:
        space: a validated search space.
        storage: an Optuna storage object (a sweep uses its folder's journal); None: in memory.
        study_name: the Optuna study in ``storage``; an existing study is continued (``--extend``), and then
            the defaults are not enqueued again.
        tune_dir: the Tune experiment folder (for the reasons of errored trials).
        warm_start: an earlier sweep folder or journal whose COMPLETE trials seed the sampler.

    Raises:
        ConfigError: a sampler the objectives do not allow, or a bad warm-start path.
    """
    from ranksearch.space.optuna_space import DefineByRun, build_sampler
    from ranksearch.sweep.searcher import PruneAwareOptunaSearch
    from ranksearch.sweep.searcher import warm_start as add_warm_start

    metric, mode = objective_args(space)
    points = default_points(space) if space.spec.sampler.enqueue_defaults else []
    if points and storage is not None and _has_trials(storage, study_name):
        points = []  # continuing a study: its defaults ran already
    searcher = PruneAwareOptunaSearch(
        space=DefineByRun(space), metric=metric, mode=mode, sampler=build_sampler(space),
        study_name=study_name, storage=storage, tune_dir=tune_dir, points_to_evaluate=points or None,
        constraints=list(space.spec.constraints),
    )  # fmt: skip
    if warm_start is not None:
        n = add_warm_start(searcher._ot_study, space, Path(warm_start))
        log.info("warm start: %d completed trials from %s", n, warm_start)
    return searcher


def _has_trials(storage: Any, study_name: str) -> bool:
    import optuna

    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return False
    except optuna.exceptions.OptunaError:
        return False
    return bool(storage.get_all_trials(study_id, deepcopy=False))


def max_reports(space: SearchSpace) -> int:
    """Reports of a trial that runs to the end: evaluations × seed replicates."""
    return space.trial_config().eval.evals * len(space.spec.seeds or [None])


def build_scheduler(space: SearchSpace, max_t: int | None = None) -> Any:
    """The space's early-stopping scheduler, or None (``early_stopping.type: none``).

    Args:
        space: a validated search space.
        max_t: reports of a full trial; default ``max_reports(space)`` (the replay passes its table's).
    """
    es = space.spec.early_stopping
    if es.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = max_t or max_reports(space)
    grace = min(es.grace_period, max_t)
    # Ray gives bracket s the first rung grace * rf^s: more brackets than rungs would leave brackets with none
    brackets = max(1, min(es.brackets, _rungs(grace, max_t, es.reduction_factor)))
    objs = space.spec.objectives
    if len(objs) > 1 and es.rank_by == "pareto":
        from ranksearch.sweep.mo_asha import MultiObjectiveASHA

        return MultiObjectiveASHA(
            metrics=[o.metric for o in objs], modes=[o.mode for o in objs], max_t=max_t, grace_period=grace,
            reduction_factor=es.reduction_factor, brackets=brackets,
        )  # fmt: skip
    return ASHAScheduler(
        time_attr="training_iteration", metric=objs[0].metric, mode=objs[0].mode, max_t=max_t,
        grace_period=grace, reduction_factor=es.reduction_factor, brackets=brackets,
    )  # fmt: skip


def _rungs(grace: int, max_t: int, rf: float) -> int:
    """How many rungs Ray's bracket 0 has for these settings (its own formula)."""
    import math

    return max(1, int(math.log(max_t / grace) / math.log(rf) + 1))


def build_stopper(space: SearchSpace) -> Any:
    """A Tune ``Stopper`` for the space's CPU/GPU-hour budget, or None (no budget, or a trial-count budget)."""
    b = space.spec.budget
    if b is None or (b.cpu_hours is None and b.gpu_hours is None):
        return None
    from ranksearch.sweep.compute_budget import ComputeBudget

    return ComputeBudget.from_space(space)
