"""The global rank budget: allocation bounds (property test), config validation, wiring into LoRA/CoDyRA/DRA."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ranksearch.adapters import get_family
from ranksearch.adapters.budget import BudgetConfig, RankBudget, allocate, cubic_budget
from ranksearch.adapters.inject import attach_adapters
from ranksearch.adapters.placement import resolve_sites
from ranksearch.errors import ConfigError
from ranksearch.models.clip import build_model, tower_blocks


@st.composite
def problems(draw):
    n = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(1, 12), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(r, generator=g) for r in sizes]
    costs = draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    mins = [draw(st.integers(0, r)) for r in sizes]
    maxs = [draw(st.integers(m, r)) if r > 0 else 0 for m, r in zip(mins, sizes, strict=True)]
    base = sum(m * c for m, c in zip(mins, costs, strict=True))
    budget = base + draw(st.integers(0, 400))
    threshold = draw(st.one_of(st.none(), st.floats(0, 1)))
    return scores, costs, mins, maxs, budget, threshold


@settings(max_examples=50, deadline=None)
@given(problems())
def test_allocation_never_exceeds_budget_and_respects_bounds(problem):
    scores, costs, mins, maxs, budget, threshold = problem
    keep = allocate(scores, budget, costs=costs, min_rank=mins, max_rank=maxs, threshold=threshold)
    ranks = [int(k.sum()) for k in keep]
    assert sum(r * c for r, c in zip(ranks, costs, strict=True)) <= budget
    for r, lo, hi in zip(ranks, mins, maxs, strict=True):
        assert lo <= r <= hi
    for k, s, lo in zip(keep, scores, mins, strict=True):
        # within a module the kept components are a top-k by score
        if k.any() and (~k).any():
            assert s[k].min() >= s[~k].max()
        if threshold is not None:  # beyond the min rank only components at or above the threshold are kept
            assert int((k & (s < threshold)).sum()) <= lo


@settings(max_examples=50, deadline=None)
@given(problems())
def test_allocation_is_greedy_complete_for_rank_budgets(problem):
    scores, _, mins, maxs, budget, _ = problem
    keep = allocate(scores, budget, min_rank=mins, max_rank=maxs)
    total = sum(int(k.sum()) for k in keep)
    assert total == min(budget, sum(maxs))  # unit costs: the budget is filled as far as max ranks allow


def test_infeasible_min_rank_names_the_field():
    with pytest.raises(ConfigError, match="min_rank"):
        allocate([torch.rand(4), torch.rand(4)], 5, min_rank=3)
    with pytest.raises(ConfigError, match="min_rank"):
        allocate([torch.rand(2)], 10, min_rank=3)


def test_threshold_only_budget():
    keep = allocate(
        [torch.tensor([0.9, 0.1, 0.5]), torch.tensor([0.05, 0.01])], None, min_rank=1, threshold=0.4
    )
    assert keep[0].tolist() == [True, False, True]
    assert keep[1].tolist() == [True, False]  # min rank beats the threshold


def test_budget_config_validation():
    with pytest.raises(ValidationError, match="total_rank or total_params"):
        BudgetConfig(total_rank=4, total_params=100)
    with pytest.raises(ValidationError, match="needs total_rank"):
        BudgetConfig()
    with pytest.raises(ValidationError, match="min_rank"):
        BudgetConfig(total_rank=4, min_rank=3, max_rank=2)
    with pytest.raises(ValidationError):
        get_family("adalora").config_cls(budget={"total_rank": 8, "interval": 3})


def test_cubic_budget_endpoints():
    assert cubic_budget(0, 100, 20, 10, 90) == 100
    assert cubic_budget(10, 100, 20, 10, 90) == 100
    assert cubic_budget(90, 100, 20, 10, 90) == 20
    assert cubic_budget(95, 100, 20, 10, 90) == 20


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, _ = build_model("rs-tiny-clip", None)
    return model


@pytest.mark.parametrize(
    ("name", "matrices"), [("lora", ["q", "v"]), ("codyra", ["q", "v"]), ("dra", ["o", "proj"])]
)
@pytest.mark.parametrize("by", ["total_rank", "total_params"])
def test_family_budget_masks_layers(tiny, name, matrices, by):
    import copy

    model = copy.deepcopy(tiny)
    cls = get_family(name)
    sites = resolve_sites("both", "all", matrices, {t: len(b) for t, b in tower_blocks(model).items()})
    probe = cls(cls.config_cls(), 20)
    attach_adapters(copy.deepcopy(tiny), probe, sites)
    per_rank = probe.layers[0].params_per_rank()
    amount = (
        5 if by == "total_rank" else 5 * per_rank
    )  # all probe layers of a tower share dims in the tiny model
    cfg = cls.config_cls(budget={by: amount, "min_rank": 0, "start_frac": 0.5, "ramp": "step"})
    family = cls(cfg, 20)
    attach_adapters(model, family, sites)
    with torch.no_grad():
        for p in family.trainable_parameters():
            p.normal_(0, 0.1)
    for step in range(1, 21):
        family.after_step(step)
    assert isinstance(family.rank_budget, RankBudget) and family.rank_budget.history
    masks = [layer.rank_mask() for layer in family.layers]
    if by == "total_rank":
        assert sum(int(m.sum()) for m in masks) <= 5
    else:
        assert (
            sum(int(m.sum()) * ly.params_per_rank() for m, ly in zip(masks, family.layers, strict=True))
            <= amount
        )
    assert sum(layer.rank() for layer in family.layers) <= 5


def test_lora_budget_uses_lora_mask(tiny):
    import copy

    model = copy.deepcopy(tiny)
    cls = get_family("lora")
    family = cls(cls.config_cls(r=4, budget={"total_rank": 3, "start_frac": 0.0, "ramp": "step"}), 10)
    sites = resolve_sites("vision", "all", ["q"], {t: len(b) for t, b in tower_blocks(model).items()})
    attach_adapters(model, family, sites)
    with torch.no_grad():
        for p in family.trainable_parameters():
            p.normal_(0, 0.1)
    family.after_step(1)
    assert sum(int(layer.lora_mask.sum()) for layer in family.layers) == 3
    assert sum(layer.rank() for layer in family.layers) == 3


def test_budget_below_min_rank_raises_config_error(tiny):
    import copy

    model = copy.deepcopy(tiny)
    cls = get_family("codyra")
    family = cls(cls.config_cls(budget={"total_rank": 2, "min_rank": 1}), 10)
    sites = resolve_sites("vision", "all", ["q", "k"], {t: len(b) for t, b in tower_blocks(model).items()})
    attach_adapters(model, family, sites)
    with pytest.raises(ConfigError, match="total_rank"):
        family.after_step(9)
