"""A reusable global rank budget: how much rank (or how many parameters) the adapters may use in total.

Any family whose layers expose ``rank_mask()`` (a (max_rank,) 0/1 buffer) and ``component_scores()`` can be
budgeted: CLIP-LoRA (``lora_mask``), CoDyRA (``codyra_mask``), AdaLoRA (``ada_mask``, which zeroes E) and the
DRA-style adapter (``dra_rank_mask``, intersected with its per-group prefix masks). The pieces:

* ``BudgetConfig``: the optional ``budget:`` sub-section of a family config.
* ``allocate``: given per-component scores and per-module min/max rank, keep the best components without ever
  exceeding the budget. Feasible by construction; raises ``ConfigError`` if the min ranks alone exceed it.
* ``cubic_budget``: AdaLoRA's cubic schedule (docs/methods.md, AdaLoRA), shared by every budgeted family.
* ``RankBudget``: applies a ``BudgetConfig`` to a family's layers during training (``budget_after_step``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ranksearch.adapters.configs import BudgetConfig  # noqa: F401  (re-exported: its historical home)
from ranksearch.errors import ConfigError


def _per_module(value: int | Sequence[int] | None, n: int, default: Sequence[int]) -> list[int]:
    if value is None:
        return list(default)
    if isinstance(value, int):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"expected {n} per-module values, got {len(value)}")
    return [int(v) for v in value]


def allocate(
    scores: Sequence[torch.Tensor],
    budget: float | None,
    *,
    costs: Sequence[int] | None = None,
    min_rank: int | Sequence[int] = 0,
    max_rank: int | Sequence[int] | None = None,
    threshold: float | None = None,
    field: str = "adapter.budget",
) -> list[torch.Tensor]:
    """Choose which components of each module to keep under a global budget.

    Each module first keeps its ``min_rank`` best components; the remaining components (up to ``max_rank`` per
    module, scoring at least ``threshold``) are added greedily by descending score while they fit. Within a
    module the kept set is always a top-k by score, so the result is a valid rank pattern.

    Args:
        scores: one (R_m,) score tensor per module (NaN counts as lowest).
        budget: total cost allowed (rank units when ``costs`` is None); None = no limit (threshold only).
        costs: cost of one component per module (parameters per rank); default 1 (rank budget).
        min_rank: per-module minimum (int for all, or a sequence).
        max_rank: per-module maximum; default each module's R_m (capped at R_m anyway).
        threshold: drop components below this score (the min ranks are kept regardless).
        field: config path used in error messages.

    Returns:
        One bool (R_m,) keep mask per module, with ``Σ_m keep_m.sum()·cost_m ≤ budget`` and
        ``min_m ≤ keep_m.sum() ≤ max_m``.

    Raises:
        ConfigError: the min ranks alone exceed the budget, or a module cannot hold its min rank.
    """
    n = len(scores)
    sizes = [int(s.numel()) for s in scores]
    costs = [1] * n if costs is None else [int(c) for c in costs]
    mins = _per_module(min_rank, n, [0] * n)
    maxs = [min(m, r) for m, r in zip(_per_module(max_rank, n, sizes), sizes, strict=True)]
    for i in range(n):
        if mins[i] > maxs[i]:
            raise ConfigError(
                [(f"{field}.min_rank", f"module {i} allows at most rank {maxs[i]} but min_rank is {mins[i]}")]
            )
    base_cost = sum(m * c for m, c in zip(mins, costs, strict=True))
    if budget is not None and base_cost > budget:
        raise ConfigError(
            [
                (
                    f"{field}.min_rank",
                    f"min ranks {mins[:3]}... over {n} modules cost {base_cost} > budget {budget}",
                )
            ]
        )
    keep = [torch.zeros(r, dtype=torch.bool) for r in sizes]
    orders = []
    for i, s in enumerate(scores):
        s = torch.nan_to_num(s.detach().float().cpu(), nan=-math.inf)
        order = torch.argsort(s, descending=True, stable=True)  # best first; ties keep index order
        orders.append((order, s))
        keep[i][order[: mins[i]]] = True
    remaining = math.inf if budget is None else budget - base_cost
    # global greedy over the optional components, best score first; (module, position) breaks ties so that
    # inside one module components are visited in their own score order and the kept set stays a top-k.
    candidates = []
    for i, (order, s) in enumerate(orders):
        for pos in range(mins[i], maxs[i]):
            v = float(s[order[pos]])
            if threshold is not None and not v >= threshold:
                break  # the rest of this module scores lower still
            candidates.append((-v, i, pos))
    candidates.sort()
    blocked = set()
    for _, i, pos in candidates:
        if i in blocked:
            continue
        if costs[i] > remaining:
            blocked.add(i)  # later components of module i cost the same and may not skip ahead of this one
            continue
        keep[i][orders[i][0][pos]] = True
        remaining -= costs[i]
    return keep


def cubic_budget(step: int, b0: float, b_target: float, t_init: int, t_end: int) -> float:
    """AdaLoRA's budget schedule (docs/methods.md, AdaLoRA; PEFT ``RankAllocator.budget_schedule``).

    ``b0`` until ``t_init``; ``b_T + (b0 − b_T)(1 − (t − t_init)/(t_end − t_init))³`` (rounded down) up to
    ``t_end``; ``b_T`` afterwards. ``t_end = T − t_final``.
    """
    if step <= t_init:
        return b0
    if step > t_end:
        return b_target
    mul = 1 - (step - t_init) / (t_end - t_init)
    return int((b0 - b_target) * mul**3 + b_target)


class RankBudget:
    """Applies a ``BudgetConfig`` to a family's budgetable layers (those with a ``rank_mask``) during training."""

    def __init__(
        self, config: BudgetConfig, layers: Sequence, total_steps: int, field: str = "adapter.budget"
    ):
        self.config, self.field = config, field
        self.layers = [layer for layer in layers if layer.rank_mask() is not None]
        if not self.layers:
            raise ConfigError([(field, "this family's layers have no rank mask; a budget cannot apply")])
        by_params = config.total_params is not None
        self.costs = [layer.params_per_rank() if by_params else 1 for layer in self.layers]
        sizes = [layer.max_rank() for layer in self.layers]
        self.maxs = [min(config.max_rank or r, r) for r in sizes]
        self.full = sum(m * c for m, c in zip(self.maxs, self.costs, strict=True))
        self.target = config.target
        mins = sum(config.min_rank * c for c in self.costs)
        if self.target is not None and mins > self.target:
            raise ConfigError(
                [
                    (
                        f"{field}.{config.target_field}",
                        f"budget {self.target} is below what min_rank needs ({mins})",
                    )
                ]
            )
        self.t_start = round(config.start_frac * total_steps)
        self.t_end = max(self.t_start, round(config.end_frac * total_steps))
        self.history: list[dict] = []

    def budget_at(self, step: int) -> float | None:
        if self.target is None:
            return None
        if self.config.ramp == "step" or self.t_end == self.t_start:
            return self.target
        return cubic_budget(step, self.full, self.target, self.t_start, self.t_end)

    def due(self, step: int) -> bool:
        first = max(1, self.t_start)
        if step < first or step > self.t_end:
            return False  # after t_end the pattern is frozen (the mask buffers keep it)
        return step in (first, self.t_end) or (step - self.t_start) % self.config.interval == 0

    @torch.no_grad()
    def apply(self, step: int) -> list[int]:
        """Allocate now and write the rank masks; returns the per-layer ranks."""
        scores = []
        for layer in self.layers:
            s = layer.component_scores()
            scores.append(torch.zeros(layer.max_rank()) if s is None else s)
        keep = allocate(
            scores,
            self.budget_at(step),
            costs=self.costs,
            min_rank=self.config.min_rank,
            max_rank=self.maxs,
            threshold=self.config.threshold,
            field=self.field,
        )
        for layer, k in zip(self.layers, keep, strict=True):
            mask = layer.rank_mask()
            mask.copy_(k.to(mask.dtype))
        ranks = [int(k.sum()) for k in keep]
        self.history.append(
            {"step": step, "pattern": {ly.site.key: r for ly, r in zip(self.layers, ranks, strict=True)}}
        )
        return ranks

    def step(self, step: int) -> None:
        if self.due(step):
            self.apply(step)


def budget_after_step(family, step: int) -> None:
    """Run ``family.config.budget`` (if any) after an optimizer step; the ``RankBudget`` is built lazily."""
    cfg = getattr(family.config, "budget", None)
    if cfg is None:
        return
    budget = getattr(family, "rank_budget", None)
    if budget is None:
        budget = family.rank_budget = RankBudget(cfg, family.layers, family.total_steps)
    budget.step(step)
