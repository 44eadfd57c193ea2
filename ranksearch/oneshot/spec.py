"""The ``search:`` block of a search space (torch-free): ``{mode: one-shot, ...}`` selects one-shot rank search.

A one-shot space fixes everything but the ranks in ``base`` (family lora or codyra, placement = the candidate
sites, train = the supernet's schedule); ``ranks`` lists the candidate ranks of every site (the largest is the
supernet's rank). ``space_problems`` holds the cross-field checks, reported with every other problem of the file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ranksearch.config.base import StrictModel

ONE_SHOT_FAMILIES = ("lora", "codyra")
LIKELIHOOD = "val/loglik"  # what search.score: likelihood ranks by (every supernet score holds it)


_Model = StrictModel


class AllocationBudget(_Model):
    """The most an allocation may use: total rank over all sites, or total trainable parameters. Give one."""

    total_rank: int | None = Field(None, ge=0, le=10_000_000, description="sum of the per-site ranks")
    total_params: int | None = Field(
        None,
        ge=0,
        le=10**13,
        description="trainable parameters of the allocation (sum of rank x params/rank)",
    )

    @model_validator(mode="after")
    def _one(self) -> AllocationBudget:
        if (self.total_rank is None) == (self.total_params is None):
            raise ValueError("give exactly one of total_rank, total_params")
        return self


class OneShotSpec(_Model):
    """One-shot rank search: one supernet trial, allocations scored by masked evaluation, top-K retrained."""

    mode: Literal["one-shot", "full"] = Field(
        "one-shot",
        description="one-shot: train a max-rank supernet once and search allocations by evaluation; "
        "full: an ordinary sweep (every configuration trained)",
    )
    ranks: list[int] = Field(
        [0, 1, 2, 4, 8], min_length=2, max_length=64,
        description="candidate ranks of every site, ascending (0: the site is left out); the largest is the "
        "supernet's rank",
    )  # fmt: skip
    sandwich_random: int = Field(
        2,
        ge=0,
        le=64,
        description="random allocations per supernet step besides the max and the min (sandwich)",
    )
    distill: bool = Field(
        False,
        description="in-place distillation: the sub-allocations of a supernet step learn the max allocation's "
        "predictions (its logits, detached, as soft targets) instead of the labels, as once-for-all / BigNAS "
        "(off by default: on the adaptation world it ranked allocations worse, docs/oneshot.md)",
    )
    evaluations: int = Field(
        200, ge=1, le=100_000, description="allocations scored on validation (no training)"
    )
    score_images: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="validation images each allocation is scored on: a fixed class-stratified sample, the same "
        "for every allocation (null: the whole split); the retrained top-K are scored on the whole split",
    )
    score: Literal["objective", "likelihood"] = Field(
        "objective",
        description="what ranks the allocations: objective (the space's first objective, e.g. val/hm, on the "
        "scored images) or likelihood (val/loglik: the mean log-probability of the true class, per class group; "
        "it moves with every image's margin, so on a small score_images sample it ranks allocations with less "
        "noise: docs/oneshot.md)",
    )
    sampler: Literal["tpe", "nsga2", "random"] = Field(
        "tpe",
        description="Optuna sampler proposing allocations (two objectives: accuracy up, parameters down)",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the proposals and of the sandwich's draws")
    budget: AllocationBudget | None = Field(
        None, description="allocation budget; proposals above it are repaired (ranks lowered) before scoring"
    )
    top_k: int = Field(
        5, ge=0, le=1000, description="front members (best accuracy first) retrained from scratch"
    )

    @field_validator("ranks")
    @classmethod
    def _ascending(cls, v: list[int]) -> list[int]:
        if any(r < 0 or r > 1024 for r in v):
            raise ValueError(f"ranks must lie in [0, 1024], got {v}")
        if v != sorted(set(v)):
            raise ValueError(f"ranks must be distinct and ascending, got {v}")
        if v[-1] < 1:
            raise ValueError("at least one rank must be >= 1")
        return v

    @property
    def max_rank(self) -> int:
        return self.ranks[-1]


def space_problems(spec: Any) -> list[tuple[str, str]]:
    """Cross-field checks of a one-shot space (``spec``: a validated ``SearchSpaceSpec``)."""
    s = spec.search
    if s is None or s.mode != "one-shot":
        return []
    problems: list[tuple[str, str]] = []
    adapter = spec.base.get("adapter") if isinstance(spec.base.get("adapter"), dict) else {}
    family = adapter.get("family", "lora")
    if family not in ONE_SHOT_FAMILIES:
        problems.append(
            (
                "base.adapter.family",
                f"one-shot search nests {'/'.join(ONE_SHOT_FAMILIES)} ranks, not {family!r}",
            )
        )
    if spec.params or spec.families:
        where = "params" if spec.params else "families"
        problems.append(
            (where, "one-shot search varies the per-site ranks only: fix every other field in base")
        )
    for key in ("r", "budget", "rank_pattern"):
        if key in adapter:
            problems.append((f"base.adapter.{key}", "set by the one-shot search (search.ranks); remove it"))
    if spec.seeds and len(spec.seeds) > 1:
        problems.append(("seeds", "one-shot search trains one supernet: give at most one seed"))
    if spec.early_stopping.type != "none" and "early_stopping" in spec.model_fields_set:
        problems.append(
            ("early_stopping", "one-shot search stops nothing early: use {type: none} or leave it out")
        )
    if s.budget is not None and s.budget.total_rank is not None and s.ranks[0] > 0:
        pass  # the min allocation's cost depends on the sites: checked when the sites are known
    first = spec.objectives[0] if spec.objectives else None
    if s.score == "likelihood" and first is not None and first.mode != "max":
        problems.append(("search.score", f"likelihood ranks higher as better; the first objective "
                         f"{first.metric!r} is minimised: use score: objective"))  # fmt: skip
    if s.top_k > s.evaluations:
        problems.append(("search.top_k", f"retrains {s.top_k} of only {s.evaluations} evaluations"))
    return problems
