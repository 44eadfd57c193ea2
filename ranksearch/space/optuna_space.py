"""Compile a search space for Optuna: one pure define-by-run function, the sampler, and distributions.

The define-by-run function only calls ``trial.suggest_*`` (no I/O, no training) so Ray's OptunaSearch can call
it in the driver for every new trial. Conditional subspaces follow from the control flow: a family's
parameters are suggested only in trials that chose that family (TPE with ``group=True`` models each branch).
Optuna's ``suggest_int`` bounds are inclusive, as are ours, so no bound conversion is needed here.
"""

from __future__ import annotations

import warnings
from typing import Any

from ranksearch.errors import ConfigError
from ranksearch.space.space import FAMILY_PATH, SearchSpace
from ranksearch.space.spec import CategoricalParam, FloatParam, IntParam, Param, grid_size

MAX_GRID_POINTS = 100_000  # every point is one trial: far beyond any sweep


class DefineByRun:
    """``space(trial)``: suggest every parameter of one trial. Picklable (Tune saves it with the searcher)."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial: Any) -> None:
        fp = self.space.family_param
        family = trial.suggest_categorical(FAMILY_PATH, fp.encoded()) if fp is not None else None
        for a in self.space.active_params(family or self.space.fixed_family):
            suggest(trial, a.name, a.spec)
        return None


def suggest(trial: Any, name: str, p: Param) -> Any:
    """One ``trial.suggest_*`` call for a parameter."""
    if isinstance(p, FloatParam):
        return trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, IntParam):
        return trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
    return trial.suggest_categorical(name, p.encoded())


def distribution(p: Param) -> Any:
    """The Optuna distribution of a parameter (for warm starts and ``optuna.create_trial``)."""
    import optuna

    if isinstance(p, FloatParam):
        return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, IntParam):
        return optuna.distributions.IntDistribution(p.low, p.high, log=p.log, step=p.step)
    return optuna.distributions.CategoricalDistribution(p.encoded())


def distributions(space: SearchSpace, family: str) -> dict[str, Any]:
    """Name -> distribution for every parameter a trial of ``family`` suggests."""
    out = {}
    if space.family_param is not None:
        out[FAMILY_PATH] = distribution(space.family_param)
    for a in space.active_params(family):
        out[a.name] = distribution(a.spec)
    return out


def directions(space: SearchSpace) -> list[str]:
    return ["maximize" if o.mode == "max" else "minimize" for o in space.spec.objectives]


def _grid(space: SearchSpace) -> dict[str, list[Any]]:
    """GridSampler's search space: every parameter must be categorical or on a finite step grid."""
    if (
        space.family_param is not None
        and len(space.families) > 1
        and any(space.spec.families.get(f) and space.spec.families[f].params for f in space.families)
    ):
        raise ConfigError(
            [("sampler.type", "grid cannot search conditional family subspaces; one family per space")]
        )
    grid: dict[str, list[Any]] = {}
    problems = []
    params = [(FAMILY_PATH, space.family_param)] if space.family_param is not None else []
    params += [(a.name, a.spec) for a in space.active_params(space.default_family)]
    points = 1
    for name, p in params:
        if isinstance(p, CategoricalParam):
            n = len(p.choices)
        else:
            n = grid_size(p) if p.step or isinstance(p, IntParam) else 0  # 0: not griddable, reported below
        points *= max(n, 1)
        if points > MAX_GRID_POINTS:
            msg = f"the grid has more than {MAX_GRID_POINTS:,} points; use a coarser step or another sampler"
            raise ConfigError([(f"params[{name}]", msg)])
    for name, p in params:
        if isinstance(p, CategoricalParam):
            grid[name] = p.encoded()
        elif isinstance(p, IntParam) and not p.log:
            grid[name] = list(range(p.low, p.high + 1, p.step))
        elif isinstance(p, FloatParam) and p.step:
            n = int(round((p.high - p.low) / p.step))
            grid[name] = [p.low + i * p.step for i in range(n + 1)]
        else:
            problems.append(
                (f"params[{name}]", "grid sampling needs categorical, int or stepped float parameters")
            )
    if problems:
        raise ConfigError(problems)
    return grid


def build_sampler(space: SearchSpace) -> Any:
    """The Optuna sampler the space asks for.

    Raises:
        ConfigError: a sampler that cannot handle the objectives, a missing optional package, bad options.
    """
    import optuna

    s = space.spec.sampler
    multi = len(space.spec.objectives) > 1
    kw = dict(s.options)
    samplers = optuna.samplers
    try:
        if s.type == "tpe":
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            # group=True: conditional (family) branches get their own density models; constant_liar: parallel
            # trials that are still running count as bad guesses instead of drawing the same point again.
            # 5 random start-up trials (Optuna: 10) and 64 EI candidates (Optuna: 24): replayed on HPOLib-FCNet
            # and NAS-Bench-201 (docs/benchmarks.md, Results: the search rows), they reach random search's final regret with
            # about a third less compute than Optuna's defaults at a 100-trial budget.
            opts = {"multivariate": True, "group": True, "constant_liar": True, "n_startup_trials": 5,
                    "n_ei_candidates": 64, **kw}  # fmt: skip
            # bounded cost per trial: the best and the most recent trials are modelled (space.tpe_window)
            from ranksearch.space.tpe_window import DEFAULT_WINDOW, WindowedTPESampler

            window = opts.pop("max_modelled_trials", None)
            return WindowedTPESampler(
                seed=s.seed, window=DEFAULT_WINDOW if window is None else window, **opts
            )
        if s.type == "gp":
            return samplers.GPSampler(seed=s.seed, **kw)
        if s.type == "cmaes":
            if multi:
                raise ConfigError(
                    [("sampler.type", "cmaes is single-objective; use nsga2 or tpe for Pareto search")]
                )
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise ConfigError(
                    [("sampler.type", "cmaes needs the 'cmaes' package: pip install 'ranksearch[cmaes]'")]
                ) from None
            return samplers.CmaEsSampler(seed=s.seed, **kw)
        if s.type == "nsga2":
            return samplers.NSGAIISampler(seed=s.seed, **kw)
        if s.type == "random":
            return samplers.RandomSampler(seed=s.seed, **kw)
        if s.type == "qmc":
            return samplers.QMCSampler(seed=s.seed, **kw)
        return samplers.GridSampler(_grid(space), seed=s.seed, **kw)
    except (TypeError, ValueError) as e:  # what the option models above do not know about
        raise ConfigError([("sampler.options", f"not accepted by the {s.type} sampler: {e}")]) from None
