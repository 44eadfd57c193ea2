"""One Pareto helper (ranksearch.pareto) agrees with the definition and with Optuna's own ``study.best_trials``."""

from __future__ import annotations

import numpy as np
import optuna
from hypothesis import given, settings
from hypothesis import strategies as st

from ranksearch.pareto import pareto_mask

points = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=25
)  # small integer grid: many ties and duplicates


def _brute_force(values: np.ndarray, maximize: list[bool]) -> list[bool]:
    v = np.where(maximize, values, -values)  # higher is better
    return [
        not any((v[j] >= v[i]).all() and (v[j] > v[i]).any() for j in range(len(v))) for i in range(len(v))
    ]


@settings(max_examples=60, deadline=None)
@given(points, st.lists(st.booleans(), min_size=2, max_size=2))
def test_pareto_mask_is_the_definition_and_optunas_front(pts, maximize):
    values = np.array(pts, dtype=float)
    mask = pareto_mask(values, maximize)
    assert mask.tolist() == _brute_force(values, maximize)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if m else "minimize" for m in maximize])
    for row in values:
        study.add_trial(optuna.trial.create_trial(values=list(row)))
    assert sorted(t.number for t in study.best_trials) == np.flatnonzero(mask).tolist()


def test_empty_input_has_an_empty_front():
    assert pareto_mask(np.zeros((0, 2)), [True, False]).tolist() == []
