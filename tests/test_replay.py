"""The replay backend (``bench/replay.py``): deterministic simulated sweeps, ASHA pruning, Optuna trial states."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(
    0, str(ROOT)
)  # ``bench`` is a top-level folder of the repo, not part of the installed package

replay = pytest.importorskip("bench.replay")


@pytest.fixture
def grid():
    """A synthetic 12-point grid: curves rise with lr, the best point (lr 3, r 2) is unique."""
    choices = {"lr": [1, 2, 3], "r": [1, 2], "towers": ["vision", "both"]}
    curves, params = {}, {}
    for lr in choices["lr"]:
        for r in choices["r"]:
            for towers in choices["towers"]:
                final = 40 + 3 * lr + r + (0.5 if towers == "both" else 0)
                curves[(lr, r, towers)] = [final - 6 + 2 * i for i in range(4)]
                params[(lr, r, towers)] = 100 * r * (2 if towers == "both" else 1)
    return replay.Grid(choices, curves, params)


def test_same_seed_same_sweep(grid):
    a = replay.replay_sweep(grid, "tpe+asha", seed=3, budget=60)
    b = replay.replay_sweep(grid, "tpe+asha", seed=3, budget=60)
    assert [(f["key"], f["state"], f["units"]) for f in a.finished] == [
        (f["key"], f["state"], f["units"]) for f in b.finished
    ]
    assert a.units == b.units >= 60


def test_asha_prunes_and_optuna_sees_pruned(grid):
    from optuna.trial import TrialState

    result = replay.replay_sweep(grid, "tpe+asha", seed=0, budget=80)
    pruned = [f for f in result.finished if f["state"] == "PRUNED"]
    assert pruned and all(f["evals"] < 4 for f in pruned)
    states = {t.number: t.state for t in result.study.trials}
    assert all(states[f["number"]] == TrialState.PRUNED for f in pruned)
    assert all(
        states[f["number"]] == TrialState.COMPLETE for f in result.finished if f["state"] == "COMPLETE"
    )
    # compute counts only the evaluations a trial ran
    assert result.units == sum(f["evals"] for f in result.finished)


def test_no_pruning_without_asha(grid):
    result = replay.replay_sweep(grid, "tpe", seed=0, budget=40)
    assert all(f["state"] == "COMPLETE" and f["evals"] == 4 for f in result.finished)


def test_random_search_finds_the_best_with_a_large_budget(grid):
    result = replay.replay_sweep(grid, "random", seed=0, budget=12 * 4 * 10)
    assert math.isfinite(result.units_to_reach(grid.best()))


def test_hypervolume_of_the_whole_grid_is_one(grid):
    result = replay.replay_sweep(grid, "random", seed=0, budget=12 * 4 * 10, multi_objective=True)
    assert replay.hypervolume_ratio(grid, result) == pytest.approx(1.0)
    assert replay.hypervolume([(1.0, 10.0), (2.0, 100.0)], (0.0, 3.0)) == pytest.approx(1 * 2 + 1 * 1)


def test_recorded_grid_loads():
    if not replay.DEFAULT_GRID.is_file():
        pytest.skip("bench/data/grid.json not recorded")
    g = replay.Grid.load()
    assert len(g.curves) == 24 and g.evals == 4
