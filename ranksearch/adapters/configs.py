"""The config sections of the built-in adapter families, free of torch.

``ranksearch validate``, ``status``, ``best`` and ``schema`` build ``TrialConfig`` from these without importing
torch or open_clip (seconds of start-up); each family module (``ranksearch.adapters.lora`` ...) imports its
section from here and re-exports it. A new family registers its config section with ``register_config`` (before
``ranksearch.config.schema`` is imported, which builds the ``adapter:`` union from this table) and its
implementation with ``ranksearch.adapters.registry.register_family``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from ranksearch.config.base import Section

_CONFIGS: dict[str, type[Section]] = {}


def register_config(cls: type[Section]) -> type[Section]:
    """Class decorator: file a family's config section under its ``family`` literal; duplicates raise ``KeyError``."""
    name = cls.model_fields["family"].default
    if name in _CONFIGS and _CONFIGS[name] is not cls:
        raise KeyError(f"adapter family {name!r} already has a config section")
    _CONFIGS[name] = cls
    return cls


def family_configs() -> dict[str, type[Section]]:
    """Family name -> config section, for every family known to the config schema."""
    return dict(_CONFIGS)


def family_names() -> list[str]:
    """The adapter family names a config may name (sorted), without importing any adapter code."""
    return sorted(_CONFIGS)


class BudgetConfig(Section):
    """A global rank budget over all adapted modules of both towers.

    Give ``total_rank`` (sum of ranks) or ``total_params`` (sum of parameters of the active rank-1 components),
    and/or an importance ``threshold``. Components are kept by descending score.
    """

    total_rank: int | None = Field(
        None, ge=0, le=10_000_000, description="total rank over all modules (rank units)"
    )
    total_params: int | None = Field(
        None, ge=0, le=10**13, description="total parameters of active components"
    )
    min_rank: int = Field(0, ge=0, le=1024, description="every module keeps at least this rank")
    max_rank: int | None = Field(
        None, ge=1, le=1024, description="no module exceeds this rank; default its built rank"
    )
    threshold: float | None = Field(
        None, ge=0, le=1e12, description="components scoring below this are dropped"
    )
    start_frac: float = Field(0.5, ge=0, le=1, description="first allocation at this fraction of training")
    end_frac: float = Field(
        1.0, ge=0, le=1, description="budget reaches its target here; pattern frozen after"
    )
    interval: int = Field(10, ge=1, le=10_000_000, description="steps between re-allocations while ramping")
    ramp: Literal["cubic", "step"] = Field(
        "cubic",
        description="cubic: AdaLoRA-style decay from the full rank to the target; step: target at once",
    )

    @model_validator(mode="after")
    def _check(self) -> BudgetConfig:
        if self.total_rank is not None and self.total_params is not None:
            raise ValueError("give total_rank or total_params, not both")
        if self.total_rank is None and self.total_params is None and self.threshold is None:
            raise ValueError("a budget needs total_rank, total_params or threshold")
        if self.max_rank is not None and self.min_rank > self.max_rank:
            raise ValueError(f"min_rank {self.min_rank} exceeds max_rank {self.max_rank}")
        if self.start_frac > self.end_frac:
            raise ValueError(f"start_frac {self.start_frac} is after end_frac {self.end_frac}")
        return self

    @property
    def target(self) -> int | None:
        return self.total_rank if self.total_rank is not None else self.total_params

    @property
    def target_field(self) -> str:
        return "total_params" if self.total_params is not None else "total_rank"


_SITE_KEY = re.compile(r"^(vision|text)\.\d{1,4}\.(q|k|v|o|fc|proj)$")


def _check_rank_pattern(v: dict[str, int] | None) -> dict[str, int] | None:
    if v is None:
        return v
    if len(v) > 100_000:
        raise ValueError("a rank pattern holds at most 100,000 sites")
    for key, r in v.items():
        if not _SITE_KEY.match(key):
            raise ValueError(f"{key!r} is not a site key such as 'vision.3.q' (tower.layer.matrix)")
        if not 0 <= r <= 1024:
            raise ValueError(f"{key}: rank {r} is outside [0, 1024]")
    if not any(v.values()):
        raise ValueError("every rank is 0: nothing would be adapted")
    return v


# per-site ranks (site key -> rank); the sites still come from ``placement``, the pattern only sets their ranks
RankPattern = Annotated[dict[str, int] | None, AfterValidator(_check_rank_pattern)]


@register_config
class LoraConfig(Section):
    """CLIP-LoRA settings (defaults from the paper's code)."""

    family: Literal["lora"] = "lora"
    r: int = Field(2, ge=1, le=1024, description="rank")
    alpha: float = Field(1.0, gt=0, le=10_000, description="scale numerator")
    scaling: Literal["sqrt", "linear"] = Field(
        "sqrt", description="sqrt: s = alpha/sqrt(r) (CLIP-LoRA); linear: alpha/r"
    )
    dropout: float = Field(0.25, ge=0, lt=1, description="dropout on the LoRA input only")
    budget: BudgetConfig | None = Field(None, description="optional global rank budget (writes lora_mask)")
    rank_pattern: RankPattern = Field(
        None,
        description="per-site ranks {'vision.3.q': 4, ...} overriding r (0: the site is not adapted); a "
        "one-shot search's allocation retrained as an ordinary trial",
    )


@register_config
class DraConfig(Section):
    """DRA-style adapter (reconstructed from the abstract; docs/methods.md, DRA-style and Search spaces). Knobs are [inferred]."""

    family: Literal["dra"] = "dra"
    group_fractions: tuple[float, ...] = Field(
        (0.25, 0.5, 0.25), min_length=1, max_length=16, description="token share of each group, top first"
    )
    group_ranks: tuple[int, ...] = Field(
        (8, 4, 0),
        min_length=1,
        max_length=16,
        description="rank of each group, top first (non-increasing), each <= 1024",
    )
    scale: float = Field(1.0, gt=0, le=10_000, description="scale s of the bottleneck output")
    importance: Literal["cls_eot", "column_mean"] = Field(
        "cls_eot",
        description="token score: CLS (vision) / EOT (text) attention row, or attention column mean",
    )
    channel_response: bool = Field(True, description="per-instance sigmoid gate on output channels")
    channel_topk: float | None = Field(
        None, gt=0, le=1, description="adapt only this share of channels by |mean|"
    )
    l1_weight: float = Field(1e-4, ge=0, le=1_000, description="λ_L1")
    l1_target: Literal["gate", "adapter"] = Field(
        "gate",
        description="gate: L1 on the per-instance activations (mean |c| of the channel gate; without it, of the "
        "bottleneck); adapter: on the weights U, D",
    )
    budget: BudgetConfig | None = Field(
        None, description="optional global rank budget (writes dra_rank_mask)"
    )

    @model_validator(mode="after")
    def _check(self) -> DraConfig:
        if len(self.group_fractions) != len(self.group_ranks) or len(self.group_ranks) < 1:
            raise ValueError("group_fractions and group_ranks need the same, nonzero length")
        if any(f <= 0 for f in self.group_fractions) or abs(sum(self.group_fractions) - 1) > 1e-6:
            raise ValueError(f"group_fractions must be positive and sum to 1, got {self.group_fractions}")
        if any(r < 0 or r > 1024 for r in self.group_ranks) or max(self.group_ranks) < 1:
            raise ValueError(f"group_ranks must be >= 0 with at least one >= 1, got {self.group_ranks}")
        if list(self.group_ranks) != sorted(self.group_ranks, reverse=True):
            raise ValueError(
                f"group_ranks must be non-increasing (important tokens get more rank): {self.group_ranks}"
            )
        return self


@register_config
class CodyraConfig(Section):
    """CoDyRA settings (defaults: the authors' runner, docs/methods.md, CoDyRA and Search spaces)."""

    family: Literal["codyra"] = "codyra"
    r: int = Field(16, ge=1, le=1024, description="initial rank per matrix")
    kappa_max: float = Field(
        5e-3, ge=0, le=1_000, description="final proximal threshold κ_max (runner: 5e-3)"
    )
    lambda_num: int = Field(50, ge=2, le=10_000, description="number of evenly spaced κ values 0..κ_max")
    dense_frac: float = Field(0.5, ge=0, lt=1, description="fraction of training without thresholding")
    threshold: Literal["code", "paper"] = Field(
        "code",
        description="code: shrink |g|>κ by κ then zero |g|<κ (zeroes originals in (κ,2κ)); paper: soft threshold",
    )
    gate_init: Literal["randn", "ones"] = Field("randn", description="g ~ N(0,1) (code) or ones")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    budget: BudgetConfig | None = Field(None, description="optional global rank budget (writes codyra_mask)")
    rank_pattern: RankPattern = Field(
        None, description="per-site ranks {'vision.3.q': 4, ...} overriding r (0: the site is not adapted)"
    )


@register_config
class RlrrConfig(Section):
    """RLRR settings (defaults: the authors' code)."""

    family: Literal["rlrr"] = "rlrr"
    init: Literal["kaiming", "zero"] = Field(
        "kaiming", description="kaiming: the code (W' != W at init); zero: identity at init"
    )
    r: int = Field(1, ge=1, le=64, description="rank of the rescaling multiplier S_left S_right (1 = paper)")
    ssf: bool = Field(
        True,
        description="SSF scale/shift after ln_1/ln_2 of every adapted block, after the patch (token) embedding and "
        "after the final norm of every adapted tower",
    )
    sides: Literal["both", "left", "right"] = Field(
        "both", description="rescale rows (left: diag(s) W), columns (right: W diag(s)) or both (the paper)"
    )
    residual: bool = Field(
        True, description="keep the frozen W next to the rescaled one (W + W ⊙ M); off: W ⊙ M"
    )

    @model_validator(mode="after")
    def _check(self) -> RlrrConfig:
        if self.sides != "both" and self.r != 1:
            raise ValueError(f"one-sided rescaling ({self.sides}) is rank 1 by construction; got r={self.r}")
        return self


@register_config
class AdaloraConfig(Section):
    """AdaLoRA settings (defaults: PEFT ``AdaLoraConfig``; t_init/t_final as fractions of training)."""

    family: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1, le=1024, description="initial rank per module")
    target_r: int = Field(
        8, ge=0, le=1024, description="average final rank per module (budget b_T / #modules)"
    )
    alpha: float = Field(8.0, gt=0, le=10_000, description="lora_alpha; update scale alpha / init_r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    t_init_frac: float = Field(
        0.0, ge=0, lt=1, description="no masking before this fraction of training (tinit)"
    )
    t_final_frac: float = Field(
        0.0, ge=0, lt=1, description="final fraction with the pattern frozen (tfinal)"
    )
    delta_t: int = Field(
        1, ge=1, le=10_000_000, description="steps between masking while the budget decays (deltaT)"
    )
    beta1: float = Field(0.85, ge=0, lt=1, description="EMA of sensitivity")
    beta2: float = Field(0.85, ge=0, lt=1, description="EMA of uncertainty")
    orth_reg_weight: float = Field(0.5, ge=0, le=1_000, description="weight of the orthogonality regulariser")
    budget: BudgetConfig | None = Field(
        None,
        description="override b_T (total_rank/total_params) and add min_rank/max_rank/threshold; the schedule "
        "stays AdaLoRA's (t_init_frac, t_final_frac, delta_t)",
    )

    @model_validator(mode="after")
    def _check(self) -> AdaloraConfig:
        if self.target_r > self.init_r:
            raise ValueError(f"target_r {self.target_r} exceeds init_r {self.init_r}")
        if self.t_init_frac + self.t_final_frac >= 1:
            raise ValueError("t_init_frac + t_final_frac must be < 1 (PEFT: tinit < total_step - tfinal)")
        if self.budget is not None:
            sched = {"start_frac", "end_frac", "interval", "ramp"} & self.budget.model_fields_set
            if sched:
                raise ValueError(
                    f"budget.{sorted(sched)[0]} is not used by adalora; use t_init_frac/t_final_frac/delta_t"
                )
        return self
