"""Properties of the replayed production searcher on random small tables (Hypothesis), and ``--extend``'s replay.

Each example draws a table (configurations × seeds × fidelities, noisy rising curves, random costs, a failing
configuration sometimes) and the settings (sampler, ASHA grace period and reduction factor, workers, budget,
sweep seed), replays one sweep through ``ranksearch.replay.replay_sweep`` (``PruneAwareOptunaSearch`` as
``ranksearch sweep`` builds it, Ray's ``ASHAScheduler``, the compute-budget stopper) and checks what a real sweep
guarantees:

- the same seed gives the same sweep (trials, seeds drawn, states, fidelities, compute);
- every trial's Optuna state is the replay's: COMPLETE exactly when it reached the last fidelity (with the
  table's value of the seed it drew), PRUNED when ASHA or the budget stopped it (ASHA only at a rung), FAIL
  for a NaN run;
- compute is the sum of the trials' busy seconds, never more than ``workers`` trials run at once, and the
  budget stops the sweep within one evaluation per worker of its limit.

The property test is in the slow tier (25 examples, ~20 s). The extension test continues a study in an Optuna journal file, as ``ranksearch sweep --extend`` does.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranksearch.replay.engine import replay_sweep
from ranksearch.replay.table import from_arrays
from ranksearch.space import validate_space

RANKS, TOWERS = [1, 2, 4, 8], ["vision", "both"]


def random_table(rng: np.random.Generator, lrs: int, seeds: int, fidelities: int, fail: bool):
    """lrs × 4 ranks × 2 towers configurations; curves rise to a per-configuration value, seed noise, costs
    growing with the rank (cumulative, strictly increasing)."""
    configs = [(lr, r, t) for lr in np.geomspace(1e-3, 3e-2, lrs) for r in RANKS for t in TOWERS]
    n = len(configs)
    true = rng.normal(60, 5, n)[:, None, None]
    f = np.arange(1, fidelities + 1)[None, None, :]
    noise = rng.normal(0, rng.uniform(0.1, 3), (n, seeds, 1))
    hm = true - 8 / f + noise + rng.normal(0, 0.3, (n, seeds, fidelities))
    if fail:
        hm[int(rng.integers(n)), :, -1] = math.nan  # this configuration diverges at its last evaluation
    step = (
        rng.uniform(0.5, 3, (n, seeds, fidelities))
        * (1 + np.array([c[1] for c in configs]) / 8)[:, None, None]
    )
    table = from_arrays(
        {"train.lr": [float(c[0]) for c in configs], "adapter.r": [c[1] for c in configs],
         "placement.towers": [c[2] for c in configs]},
        {"val/hm": hm}, np.cumsum(step, axis=2),
    )  # fmt: skip
    return table


def make_space(sampler: str, grace: int, rf: int, asha: bool, defaults: bool = False):
    lr = {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}
    r: dict = {"type": "categorical", "choices": RANKS}
    towers: dict = {"type": "categorical", "choices": TOWERS}
    if defaults:
        lr, r, towers = {**lr, "default": 3e-3}, {**r, "default": 4}, {**towers, "default": "both"}
    return validate_space(
        {
            "params": {"train.lr": lr, "adapter.r": r, "placement.towers": towers},
            "objective": {"metric": "val/hm", "mode": "max"},
            "sampler": {"type": sampler, "seed": 0, "enqueue_defaults": defaults},
            "early_stopping": {"type": "asha", "grace_period": grace, "reduction_factor": rf}
            if asha
            else {"type": "none"},
        },
        trial_config=False,
    )


def key(trace) -> list[tuple]:
    return [(r.trial_id, r.config, r.seed, r.state, r.fidelity, round(r.compute, 9)) for r in trace.records]


@pytest.mark.slow  # ~0.7 s per example; tests/test_replay.py checks the same on one fixed table in the default tier
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    data_seed=st.integers(0, 2**16),
    lrs=st.integers(2, 4),
    n_seeds=st.integers(1, 3),
    fidelities=st.integers(2, 6),
    fail=st.booleans(),
    sampler=st.sampled_from(["tpe", "random"]),
    grace=st.integers(1, 2),
    rf=st.sampled_from([2, 3]),
    asha=st.booleans(),
    workers=st.integers(1, 4),
    full_runs=st.floats(3, 12),
    seed=st.integers(0, 1000),
)
def test_replayed_sweeps_keep_a_real_sweeps_guarantees(
    data_seed, lrs, n_seeds, fidelities, fail, sampler, grace, rf, asha, workers, full_runs, seed
):
    table = random_table(np.random.default_rng(data_seed), lrs, n_seeds, fidelities, fail)
    space = make_space(sampler, grace, rf, asha)
    E = table.fidelities
    budget = full_runs * float(np.median(table.full_cost()))
    trace = replay_sweep(table, space, seed=seed, workers=workers, budget_s=budget)
    assert trace.records
    assert key(replay_sweep(table, space, seed=seed, workers=workers, budget_s=budget)) == key(trace)

    study = {t.number: t for t in trace.study.get_trials(deepcopy=False)}
    assert len(study) == len(trace.records)
    grace_eff = min(grace, E)
    rungs = {grace_eff * rf**k for k in range(E) if grace_eff * rf**k < E}
    values = table.values["val/hm"]
    for r in trace.records:
        ot = study[int(r.trial_id)]
        assert ot.state.name == r.state, (r, ot)
        run = values[r.config, r.seed, : r.fidelity]
        if r.state == "FAIL":
            assert not math.isfinite(run[-1]) and all(math.isfinite(v) for v in run[:-1])
        elif r.state == "COMPLETE":
            assert r.fidelity == E and ot.values[0] == pytest.approx(run[-1]) == r.values[0]
        else:  # PRUNED: by the budget (at the sweep's end) or by ASHA, which stops a trial only at a rung
            assert r.state == "PRUNED" and r.fidelity <= E
            by_budget = trace.stopped_by_budget and r.end_s == trace.wall_s
            assert by_budget or (asha and r.fidelity in rungs), (r, rungs)
            if not by_budget:  # Optuna holds its whole curve, up to the evaluation ASHA stopped it at
                assert sorted(ot.intermediate_values) == list(range(1, r.fidelity + 1))
                assert ot.intermediate_values[r.fidelity] == pytest.approx(run[-1])
    # compute: every trial's busy seconds; never more than `workers` at once; the budget within one step each
    busy = sum(r.end_s - r.start_s for r in trace.records)
    assert trace.compute == pytest.approx(busy)
    events = sorted([(r.start_s, 1) for r in trace.records] + [(r.end_s, -1) for r in trace.records],
                    key=lambda e: (e[0], e[1]))  # fmt: skip
    running = 0
    for _, d in events:
        running += d
        assert running <= workers
    if trace.stopped_by_budget:
        max_step = float(np.max(np.diff(table.cost, axis=2, prepend=0)))
        assert budget <= trace.compute <= budget + workers * max_step
    else:
        assert trace.compute < budget


def test_an_extension_continues_the_journal_study_as_sweep_extend_does(tmp_path):
    """Replay 6 trials into an Optuna journal file, then 4 more from a new storage on the same file (a new
    driver, as ``ranksearch sweep --extend``): one study of 10 trials, the first 6 as they were, the defaults
    once, and the extension's trials are not those of a fresh sweep (TPE learnt from the first 6)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    table = random_table(np.random.default_rng(7), 3, 2, 4, False)
    space = make_space("tpe", 1, 2, True, defaults=True)
    path = str(tmp_path / "optuna.journal")
    first = replay_sweep(table, space, seed=0, max_trials=6, storage=JournalStorage(JournalFileBackend(path)))
    before = [(t.number, t.state.name, t.params, t.values) for t in first.study.get_trials(deepcopy=False)]
    more = replay_sweep(table, space, seed=0, max_trials=4, storage=JournalStorage(JournalFileBackend(path)))
    trials = optuna.load_study(
        study_name="ranksearch", storage=JournalStorage(JournalFileBackend(path))
    ).trials
    assert [t.number for t in trials] == list(range(10))
    assert [(t.number, t.state.name, t.params, t.values) for t in trials[:6]] == before
    assert sorted(int(r.trial_id) for r in more.records) == list(range(6, 10))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    defaults = {"train.lr": 3e-3, "adapter.r": 4, "placement.towers": "both"}
    assert [t.number for t in trials if t.params == defaults] == [0]
    fresh = replay_sweep(table, space, seed=0, max_trials=4)
    assert [r.params for r in fresh.records] != [r.params for r in more.records]
