"""The search-space YAML format: pydantic models, one per block of the file.

A space file holds fixed values (``base``, a partial trial config), parameters (``params``, keyed by the
dotted path of the trial-config field they set), conditional subspaces per adapter family (``families``),
the objective(s), the sampler, early stopping, and how the sweep runs (trials, concurrency, resources, seed
replicates). Every model forbids unknown keys; cross-field checks (paths, families, defaults) live in
``ranksearch.space.load`` so they can all be reported at once.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ranksearch.config.base import MAX_SEED, Seed, StrictModel, check_name
from ranksearch.oneshot.spec import OneShotSpec

MAX_INT = 2**53  # integer bounds stay exact as floats (Optuna, JSON, parquet)
MAX_CHOICES = 10_000
_FLOATISH = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _numberize(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; treat numeric-looking strings as floats, as the CLI does."""
    if isinstance(value, str) and _FLOATISH.match(value.strip()):
        return float(value)
    return value


_Model = StrictModel


class FloatParam(_Model):
    """A float in [low, high], optionally log-uniform or on a grid of ``step``."""

    type: Literal["float"] = "float"
    low: float = Field(description="lower bound (inclusive)")
    high: float = Field(description="upper bound (inclusive)")
    log: bool = Field(False, description="sample log-uniformly (needs low > 0)")
    step: float | None = Field(
        None, gt=0, description="discretisation step (not with log); high - low must be a multiple of it"
    )
    default: float | None = Field(
        None, description="value for debug mode (`ranksearch trial`); default: midpoint (geometric if log)"
    )

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        if self.default is not None and not self.low <= self.default <= self.high:
            raise ValueError(f"default {self.default} lies outside [{self.low}, {self.high}]")
        return self

    def default_value(self) -> float:
        if self.default is not None:
            return self.default
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.step:
            mid = self.low + round((mid - self.low) / self.step) * self.step
        return mid

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high
        )


class IntParam(_Model):
    """An integer in [low, high] (both inclusive), optionally log-uniform or on a grid of ``step``."""

    type: Literal["int"] = "int"
    low: int = Field(ge=-MAX_INT, le=MAX_INT, description="lower bound (inclusive)")
    high: int = Field(ge=-MAX_INT, le=MAX_INT, description="upper bound (inclusive)")
    log: bool = Field(False, description="sample log-uniformly (needs low >= 1)")
    step: int = Field(1, ge=1, le=MAX_INT, description="grid step (must be 1 with log); divides high - low")
    default: int | None = Field(None, description="value for debug mode; default: midpoint on the grid")

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step if self.step != 1 else None)
        if self.default is not None and not self.low <= self.default <= self.high:
            raise ValueError(f"default {self.default} lies outside [{self.low}, {self.high}]")
        return self

    def default_value(self) -> int:
        if self.default is not None:
            return self.default
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return self.low + round((mid - self.low) / self.step) * self.step

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


Choice = Any  # a scalar, null, or a list of scalars (encoded for Optuna as "a,b,c")


class CategoricalParam(_Model):
    """One of ``choices``. A choice may be a list (e.g. matrices ``[q, k, v]``); Optuna sees it as "q,k,v"."""

    type: Literal["categorical"] = "categorical"
    choices: list[Choice] = Field(
        min_length=1, max_length=MAX_CHOICES, description="the options; lists are allowed as options"
    )
    default: Choice = Field(None, description="value for debug mode; default: the first choice")

    @field_validator("choices", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [[_numberize(x) for x in c] if isinstance(c, list) else _numberize(c) for c in v]
        return v

    @field_validator("default", mode="before")
    @classmethod
    def _number_default(cls, v: Any) -> Any:
        return [_numberize(x) for x in v] if isinstance(v, list) else _numberize(v)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        seen: dict[Any, Any] = {}
        for c in self.choices:
            if isinstance(c, dict) or (isinstance(c, list) and any(isinstance(x, list | dict) for x in c)):
                raise ValueError(f"a choice must be a scalar or a flat list, got {c!r}")
            for x in c if isinstance(c, list) else [c]:
                if isinstance(x, float) and not math.isfinite(x):
                    raise ValueError(f"choice {c!r}: numbers must be finite")
            key = encode_choice(c)
            if key in seen:
                raise ValueError(f"choices {seen[key]!r} and {c!r} collide (both encode as {key!r})")
            seen[key] = c
        if self.default is not None and encode_choice(self.default) not in seen:
            raise ValueError(f"default {self.default!r} is not one of the choices")
        return self

    def encoded(self) -> list[Any]:
        """The choices as Optuna needs them: primitives (None, bool, int, float, str)."""
        return [encode_choice(c) for c in self.choices]

    def decode(self, value: Any) -> Any:
        """An Optuna value (or the original choice) back to the choice; ``KeyError`` if it is none of them."""
        lookup = {encode_choice(c): c for c in self.choices}
        return lookup[encode_choice(value)]

    def default_value(self) -> Any:
        return self.default if self.default is not None else self.choices[0]

    def contains(self, value: Any) -> bool:
        try:
            self.decode(value)
        except (KeyError, TypeError):
            return False
        return True


def encode_choice(choice: Any) -> Any:
    """Lists become comma-joined strings (Optuna categorical choices must be primitives)."""
    if isinstance(choice, list | tuple):
        return ",".join(str(x) for x in choice)
    return choice


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("low and high must be finite")
    if low > high:
        raise ValueError(f"inverted range: low {low} > high {high}")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got {low}")
    if log and step is not None:
        raise ValueError("step and log cannot be combined (Optuna)")
    if step is not None:
        if step > high - low and high > low:
            raise ValueError(f"step {step} is larger than the range [{low}, {high}]")
        # exact decimal arithmetic: 0.1 divides 1.0 although 1.0 % 0.1 != 0 in binary floating point
        span, unit = Decimal(str(high)) - Decimal(str(low)), Decimal(str(step))
        if span % unit != 0:
            raise ValueError(
                f"high - low = {span} is not a multiple of step {step} (Optuna would silently lower high)"
            )


def grid_size(p: FloatParam | IntParam) -> int:
    """Number of values of a stepped (or integer) parameter: what a grid over it enumerates."""
    step = p.step or 1
    return int((Decimal(str(p.high)) - Decimal(str(p.low))) / Decimal(str(step))) + 1


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _shorthand(params: Any) -> Any:
    """``path: [a, b, c]`` is shorthand for a categorical parameter."""
    if isinstance(params, dict):
        return {
            k: {"type": "categorical", "choices": v} if isinstance(v, list) else v for k, v in params.items()
        }
    return params


class FamilySpace(_Model):
    """The subspace of one adapter family: applies only in trials where that family is chosen."""

    base: dict[str, Any] = Field(default_factory=dict, description="fixed values (partial trial config)")
    params: dict[str, Param] = Field(default_factory=dict, description="parameters, keyed by field path")

    _expand = field_validator("params", mode="before")(classmethod(lambda cls, v: _shorthand(v)))


class Objective(_Model):
    """A metric to optimise. Select on the validation split (``val/...``), never on test."""

    metric: str = Field(description="metric name, e.g. val/hm, val/acc, trainable_params", max_length=250)
    mode: Literal["max", "min"] = "max"

    @field_validator("metric")
    @classmethod
    def _not_test(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("metric must not be empty")
        if v != v.strip() or any(ch.isspace() for ch in v):
            raise ValueError(f"{v!r}: metric names hold no whitespace")
        if is_test_metric(v):
            raise ValueError(
                f"{v!r} is measured on the test split: select on the validation split (val/...); the test "
                "split is for the report"
            )
        return v


def is_test_metric(name: str) -> bool:
    """Whether a metric is computed on a test split, under any of its names.

    ``test/...``, the zero-shot copy ``zs/test/...``, the continual metrics ``cl/...`` (transfer, average, last
    and the accuracy matrix are all test-split accuracies), and any spelling that normalises to one of them
    (``./test/acc``, ``val/../test/acc``, ``TEST/acc``).
    """
    parts: list[str] = []
    for part in name.lower().replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    if parts[:1] == ["zs"]:
        parts = parts[1:]
    return bool(parts) and (parts[0] in ("test", "cl") or "test" in parts)


SamplerType = Literal["tpe", "gp", "cmaes", "nsga2", "random", "grid", "qmc"]


class _Options(BaseModel):
    """Keyword arguments of one Optuna sampler: exact types (no "yes" for true), ranges, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


_Startup = Field(None, ge=0, le=100_000, description="trials sampled at random before the model is used")


class TpeOptions(_Options):
    n_startup_trials: int | None = Field(
        None, ge=0, le=100_000, description="random trials before TPE models the space; ranksearch default: 5"
    )
    n_ei_candidates: int | None = Field(None, ge=1, le=10_000, description="ranksearch default: 64")
    multivariate: bool | None = Field(None, description="ranksearch default: true")
    group: bool | None = Field(None, description="ranksearch default: true (needs multivariate)")
    constant_liar: bool | None = Field(None, description="ranksearch default: true")
    consider_endpoints: bool | None = None
    consider_magic_clip: bool | None = None
    prior_weight: float | None = Field(None, gt=0, le=1e6)
    warn_independent_sampling: bool | None = None
    max_modelled_trials: int | None = Field(
        None, ge=0, le=1_000_000,
        description="ranksearch: TPE models the 25 best and the most recent finished trials, this many in all (a "
        "bounded cost per trial); 0: every trial; default 500",
    )  # fmt: skip


class GpOptions(_Options):
    n_startup_trials: int | None = _Startup
    deterministic_objective: bool | None = None
    warn_independent_sampling: bool | None = None


class CmaesOptions(_Options):
    n_startup_trials: int | None = _Startup
    sigma0: float | None = Field(None, gt=0, le=1e6)
    popsize: int | None = Field(None, ge=2, le=100_000)
    use_separable_cma: bool | None = None
    with_margin: bool | None = None
    lr_adapt: bool | None = None
    consider_pruned_trials: bool | None = None
    warn_independent_sampling: bool | None = None


class Nsga2Options(_Options):
    population_size: int | None = Field(None, ge=2, le=100_000, description="at least 2 (Optuna)")
    mutation_prob: float | None = Field(None, ge=0, le=1)
    crossover_prob: float | None = Field(None, ge=0, le=1)
    swapping_prob: float | None = Field(None, ge=0, le=1)


class QmcOptions(_Options):
    qmc_type: Literal["sobol", "halton"] | None = None
    scramble: bool | None = None
    warn_asynchronous_seeding: bool | None = None
    warn_independent_sampling: bool | None = None


class NoOptions(_Options):
    """random and grid take no options (only ``sampler.seed``)."""


SAMPLER_OPTIONS: dict[str, type[_Options]] = {
    "tpe": TpeOptions,
    "gp": GpOptions,
    "cmaes": CmaesOptions,
    "nsga2": Nsga2Options,
    "random": NoOptions,
    "grid": NoOptions,
    "qmc": QmcOptions,
}


class SamplerSpec(_Model):
    """Optuna sampler. tpe is built with multivariate=True, group=True (conditional spaces), constant_liar=True."""

    type: SamplerType = "tpe"
    seed: Seed | None = Field(0, description=f"sampler seed in [0, {MAX_SEED}] (null: random)")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments of the Optuna sampler, checked per sampler type: "
        + "; ".join(f"{t}: {', '.join(m.model_fields) or 'none'}" for t, m in SAMPLER_OPTIONS.items()),
    )
    enqueue_defaults: bool = Field(
        False,
        description="run the space's default configuration first (one per family): the defaults are a prior",
    )


class EarlyStopping(_Model):
    """Tune scheduler. Time is counted in reports (one per validation evaluation, per seed replicate)."""

    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(
        1, ge=1, le=100_000, description="evaluations every trial gets before it can be stopped"
    )
    reduction_factor: float = Field(
        2.0, gt=1, le=100, description="ASHA's eta: keep 1/eta of trials at each rung"
    )
    brackets: int = Field(
        1,
        ge=1,
        le=8,
        description="Hyperband brackets (Ray's ASHA `brackets`); bracket s starts at grace*eta^s",
    )
    rank_by: Literal["pareto", "first"] = Field(
        "pareto",
        description="with several objectives, rank trials at a rung by non-dominated sorting (MO-ASHA) or by "
        "the first objective only",
    )


class Budget(_Model):
    """A compute budget: the sweep stops (running trials too) once it is spent. Give exactly one."""

    gpu_hours: float | None = Field(
        None, gt=0, le=1e7, description="GPU-hours: trial seconds x resources.gpu / 3600"
    )
    cpu_hours: float | None = Field(
        None, gt=0, le=1e8, description="CPU-hours: trial seconds x resources.cpu / 3600"
    )
    trials: int | None = Field(None, ge=1, le=100_000, description="number of trials (as `trials`)")

    @model_validator(mode="after")
    def _one(self) -> Budget:
        given = [k for k in ("gpu_hours", "cpu_hours", "trials") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of gpu_hours, cpu_hours, trials (got {given or 'none'})")
        return self


class Constraint(_Model):
    """An outcome constraint on a final metric: feasible when ``min <= metric <= max``.

    Optuna gets ``metric - max`` / ``min - metric`` through ``trial.set_constraint`` (feasible when <= 0), so
    its samplers learn the feasible region; infeasible trials never join the Pareto front or win "best".
    """

    metric: str = Field(
        description="a final metric of the trial, e.g. trainable_params, val/acc", max_length=250
    )
    max: float | None = Field(None, description="upper bound (inclusive)")
    min: float | None = Field(None, description="lower bound (inclusive)")

    @model_validator(mode="after")
    def _bounds(self) -> Constraint:
        if not self.metric.strip() or any(ch.isspace() for ch in self.metric):
            raise ValueError(f"{self.metric!r}: give a metric name without whitespace")
        if is_test_metric(self.metric):
            raise ValueError(
                f"{self.metric!r}: constrain validation metrics, the test split is for the report"
            )
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both")
        for name in ("max", "min"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be finite")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def violation(self, value: float) -> float:
        """Optuna's constraint value: <= 0 when feasible, else how far outside the bounds."""
        parts = []
        if self.max is not None:
            parts.append(value - self.max)
        if self.min is not None:
            parts.append(self.min - value)
        return max(parts)


class Resources(_Model):
    """Per-trial resources. Fractional GPUs pack several trials on one GPU (e.g. 0.5: two per GPU)."""

    gpu: float = Field(
        0.0, ge=0, le=64, description="GPUs per trial (fractions allowed); per pack with pack > 1"
    )
    cpu: float = Field(
        1.0,
        gt=0,
        le=1024,
        description="CPUs per trial (per pack with pack > 1); torch threads follow model.threads (auto: 1 for "
        "small models, else these CPUs)",
    )
    pack: int = Field(
        1,
        ge=1,
        le=256,
        description="train this many trials in one process on one shared frozen model (packed trials); Tune, "
        "Optuna and MLflow still see ordinary trials, each stopped early on its own; cpu/gpu are then per pack",
    )
    pack_group: int | None = Field(
        None,
        ge=1,
        le=256,
        description="at most this many members of a pack share one forward/backward pass (memory grows with "
        "it); null = all",
    )

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("more than one GPU per trial must be a whole number")
        return v


class SearchSpaceSpec(_Model):
    """A sweep: what to vary, what to optimise, how to search and how to run it."""

    name: str | None = Field(
        None, description="default sweep name (folder and MLflow experiment): letters, digits, '.', '_', '-'"
    )
    description: str | None = None
    base: dict[str, Any] = Field(default_factory=dict, description="fixed values: a partial trial config")
    params: dict[str, Param] = Field(
        default_factory=dict,
        description="parameters keyed by trial-config field path (e.g. train.lr, adapter.family)",
    )
    families: dict[str, FamilySpace] = Field(
        default_factory=dict, description="per-family fixed values and parameters (conditional subspaces)"
    )
    objective: Objective | list[Objective] = Field(
        description="one objective, or a list for Pareto (multi-objective) search"
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    trials: int = Field(20, ge=1, le=100_000, description="number of trials")
    concurrency: int = Field(2, ge=1, le=10_000, description="trials running at once (at most)")
    resources: Resources = Field(default_factory=Resources)
    seeds: list[Seed] | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="seed replicates per configuration: the trial runs once per seed (one after another); "
        "the objective is the mean, its std is logged as <metric>_std",
    )
    experiment: str | None = Field(None, description="MLflow experiment (no '/'); default: the sweep name")
    budget: Budget | None = Field(
        None,
        description="compute budget: {gpu_hours: N} | {cpu_hours: N} | {trials: N}; the sweep ends when spent",
    )
    constraints: list[Constraint] = Field(
        default_factory=list, description="outcome constraints on final metrics (feasible-only Pareto front)"
    )
    search: OneShotSpec | None = Field(
        None,
        description="search mode: {mode: one-shot, ranks: [...], ...} trains one max-rank supernet and searches "
        "per-site rank allocations by evaluation alone (ranksearch.oneshot); default: every trial trained",
    )

    _expand = field_validator("params", mode="before")(classmethod(lambda cls, v: _shorthand(v)))

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str | None) -> str | None:
        return check_name(v, folder=True, limit=100)

    @field_validator("experiment")
    @classmethod
    def _experiment_name(cls, v: str | None) -> str | None:
        return check_name(v)

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"duplicate seeds in {v}")
        return v

    @field_validator("objective")
    @classmethod
    def _some(cls, v: Objective | list[Objective]) -> Objective | list[Objective]:
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one objective")
            names = [o.metric for o in v]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate objective metrics in {names}")
        return v

    @property
    def trial_count(self) -> int:
        """Trials to run: ``budget.trials`` or ``trials`` (a CPU/GPU-hour budget may end the sweep sooner)."""
        return (
            self.budget.trials if self.budget is not None and self.budget.trials is not None else self.trials
        )

    @property
    def objectives(self) -> list[Objective]:
        return self.objective if isinstance(self.objective, list) else [self.objective]

    @property
    def one_shot(self) -> bool:
        """Whether this space runs a one-shot rank search (``search.mode: one-shot``)."""
        return self.search is not None and self.search.mode == "one-shot"


def budget_problems(data: Any) -> list[tuple[str, str]]:
    """Cross-field checks of ``budget`` on the raw mapping, so they are reported with every other error."""
    if not isinstance(data, dict) or not isinstance(data.get("budget"), dict):
        return []
    b, problems = data["budget"], []
    if b.get("trials") is not None and "trials" in data:
        problems.append(("budget.trials", "give the trial count once: `trials` or `budget.trials`"))
    resources = data.get("resources") if isinstance(data.get("resources"), dict) else {}
    gpu = resources.get("gpu", 0)
    if b.get("gpu_hours") is not None and isinstance(gpu, int | float) and gpu <= 0:
        problems.append(("budget.gpu_hours", "needs resources.gpu > 0 (use cpu_hours for CPU trials)"))
    return problems
