"""The replay (``ranksearch.replay``): the production searcher and Ray's scheduler against a small table, no Ray.

The table is synthetic and tiny (32 configurations × 3 seeds × 4 fidelities): each test replays in well under
a second. What is checked is behaviour a real sweep has: same seed same sweep, Ray's ASHA stops trials and
Optuna records them PRUNED with their intermediate values, the budget stops the sweep, constraints keep
infeasible trials off the front, a failed run is FAIL, and MO-ASHA keeps cheap Pareto-optimal trials that
first-objective ASHA stops.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ranksearch.errors import ConfigError
from ranksearch.replay import analysis
from ranksearch.replay.engine import replay_sweep
from ranksearch.replay.table import from_rows, read_table, write_table
from ranksearch.space import validate_space

PARAMS = ["train.lr", "adapter.r", "placement.towers"]
LRS, RANKS, TOWERS = [1e-3, 3e-3, 1e-2, 3e-2], [1, 2, 4, 8], ["vision", "both"]


def true_hm(lr: float, r: int, towers: str) -> float:
    return (
        50 + 10 * math.exp(-((math.log10(lr) + 2) ** 2)) + 3 * math.log2(r) + (2 if towers == "both" else 0)
    )


def table_rows(noise: float = 1.0, nan_config: int | None = None) -> list[dict]:
    """Curves rise towards the true value; cost grows with rank; seed noise ``noise``."""
    rng = np.random.default_rng(0)
    rows = []
    for cid, (lr, r, towers) in enumerate(itertools.product(LRS, RANKS, TOWERS)):
        for seed in range(3):
            eps = rng.normal(0, noise)
            for f in range(1, 5):
                hm = true_hm(lr, r, towers) - 8 / f + eps
                if cid == nan_config and f >= 3:
                    hm = math.nan
                rows.append({
                    "config_id": cid, "train.lr": lr, "adapter.r": r, "placement.towers": towers, "seed": seed,
                    "fidelity": f, "step": 10 * f, "val/hm": hm,
                    "trainable_params": 100.0 * r * (2 if towers == "both" else 1), "cost_s": f * 2.0 * (1 + r / 8),
                })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def table():
    return from_rows(table_rows(), params=PARAMS, metrics=["val/hm", "trainable_params"])


def space(**changes):
    data = {
        "params": {
            "train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
            "adapter.r": RANKS,
            "placement.towers": TOWERS,
        },
        "objective": {"metric": "val/hm", "mode": "max"},
        "early_stopping": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "concurrency": 4,
    }
    data.update(changes)
    return validate_space(data, trial_config=False)


MO = [{"metric": "val/hm", "mode": "max"}, {"metric": "trainable_params", "mode": "min"}]


# ------------------------------------------------------------------------------------------------- table
def test_table_round_trips_through_parquet(tmp_path, table):
    meta = {"objectives": [{"metric": "val/hm", "mode": "max"}], "command": "test"}
    write_table(table_rows(), tmp_path / "t.parquet", params=PARAMS, metrics=["val/hm", "trainable_params"],
                meta=meta)  # fmt: skip
    back = read_table(tmp_path / "t.parquet")
    assert back.n_configs == 32 and back.fidelities == 4 and list(back.n_seeds) == [3] * 32
    np.testing.assert_allclose(back.values["val/hm"], table.values["val/hm"])
    np.testing.assert_allclose(back.true_final("val/hm"), table.true_final("val/hm"))
    assert back.meta["command"] == "test" and back.meta["params"] == PARAMS
    assert back.config(0) == {"train.lr": 1e-3, "adapter.r": 1, "placement.towers": "vision"}


def test_list_values_are_stored_as_the_space_encodes_them(tmp_path):
    rows = [{"config_id": 0, "placement.matrices": ["q", "k", "v"], "seed": 0, "fidelity": 1, "step": 1,
             "val/hm": 1.0, "cost_s": 1.0}]  # fmt: skip
    t = write_table(rows, tmp_path / "m.parquet", params=["placement.matrices"], metrics=["val/hm"])
    assert (
        read_table(tmp_path / "m.parquet").configs["placement.matrices"][0]
        == "q,k,v"
        == t.configs["placement.matrices"][0]
    )


def test_invalid_tables_list_every_problem_with_its_column():
    rows = table_rows()
    rows[0]["fidelity"] = 7  # config 0 seed 0 now has fidelities 7, 2, 3, 4
    rows[5]["cost_s"] = -1.0
    rows[13]["adapter.r"] = 99  # config 1 has two values of adapter.r
    with pytest.raises(ConfigError) as e:
        from_rows(rows, params=PARAMS, metrics=["val/hm"])
    paths = {p for p, _ in e.value.problems}
    assert {"fidelity", "cost_s", "adapter.r"} <= paths
    with pytest.raises(ConfigError, match="missing column"):
        from_rows([{k: v for k, v in r.items() if k != "cost_s"} for r in table_rows()], params=PARAMS,
                  metrics=["val/hm"])  # fmt: skip


def test_a_file_that_is_not_a_table_is_a_config_error(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ConfigError, match="cannot read"):
        read_table(bad)
    with pytest.raises(ConfigError, match="missing.parquet: no such file"):
        read_table(tmp_path / "missing.parquet")


# ------------------------------------------------------------------------------------------------ replay
def test_same_seed_same_sweep_other_seed_other_sweep(table):
    a = replay_sweep(table, space(), seed=3, budget_s=400)
    b = replay_sweep(table, space(), seed=3, budget_s=400)
    c = replay_sweep(table, space(), seed=4, budget_s=400)

    def key(t):
        return [(r.config, r.seed, r.state, r.fidelity, round(r.compute, 6)) for r in t.records]

    assert key(a) == key(b) != key(c)
    assert a.compute == b.compute


def test_asha_stops_trials_and_optuna_records_them_pruned(table):
    trace = replay_sweep(table, space(), seed=0, budget_s=600)
    states = {t.number: t for t in trace.study.trials}
    pruned = [r for r in trace.records if r.state == "PRUNED"]
    complete = [r for r in trace.records if r.state == "COMPLETE"]
    assert pruned and complete
    for r in trace.records:
        ot = states[int(r.trial_id)]
        if r.state == "COMPLETE":
            assert (
                ot.state.name == "COMPLETE" and r.fidelity == 4 and ot.values[0] == pytest.approx(r.values[0])
            )
        else:
            assert ot.state.name == "PRUNED" and r.fidelity < 4
    # Optuna saw the intermediate values of the trials ASHA let continue
    assert any(len(states[int(r.trial_id)].intermediate_values) >= 1 for r in pruned if r.fidelity >= 2)
    # the compute is the busy seconds of every trial: a full run costs its table cost
    for r in complete:
        assert r.end_s - r.start_s == pytest.approx(table.cost[r.config, r.seed, -1])


def test_without_early_stopping_every_trial_runs_to_the_end(table):
    trace = replay_sweep(table, space(early_stopping={"type": "none"}), seed=0, budget_s=300)
    assert all(r.state == "COMPLETE" and r.fidelity == 4 for r in trace.records if not trace.stopped_by_budget
               or r.end_s < trace.wall_s)  # fmt: skip


def test_budget_stops_the_sweep_and_stops_running_trials(table):
    trace = replay_sweep(table, space(), seed=1, budget_s=200, workers=4)
    assert trace.stopped_by_budget
    max_step = float(np.max(np.diff(table.cost, axis=2, prepend=0)))
    assert 200 <= trace.compute <= 200 + 4 * max_step
    last = [r for r in trace.records if r.end_s == trace.wall_s]
    assert len(last) >= 2 and all(r.state in ("PRUNED", "COMPLETE") for r in last)
    # the space's own budget (CPU-hours at 2 CPUs per trial) is the same budget through the production stopper
    per_cpu = replay_sweep(table, space(budget={"cpu_hours": 400 / 3600}, resources={"cpu": 2}), seed=1)
    assert [r.config for r in per_cpu.records] == [r.config for r in trace.records]


def test_trial_budget_runs_exactly_that_many_trials(table):
    trace = replay_sweep(table, space(budget={"trials": 7}), seed=0)
    assert len(trace.records) == 7 and len(trace.study.trials) == 7


def test_failed_runs_are_told_fail(table):
    t = from_rows(table_rows(nan_config=5), params=PARAMS, metrics=["val/hm", "trainable_params"])
    s = space(params={"train.lr": [1e-3], "adapter.r": [4], "placement.towers": ["both"]},
              early_stopping={"type": "none"})  # fmt: skip
    trace = replay_sweep(t, s, seed=0, max_trials=3, workers=1)
    assert all(r.config == 5 and r.state == "FAIL" and r.fidelity == 3 for r in trace.records)
    assert all(ot.state.name == "FAIL" for ot in trace.study.trials)


def test_constraints_reach_optuna_and_keep_infeasible_trials_off_the_front(table):
    s = space(objective=MO, constraints=[{"metric": "trainable_params", "max": 400}])
    trace = replay_sweep(table, s, seed=0, budget_s=600)
    done = [t for t in trace.study.trials if t.state.name == "COMPLETE"]
    assert done and all("trainable_params" in t.constraints for t in done)
    assert any(t.constraints["trainable_params"] > 0 for t in done)  # some trials were infeasible...
    front = analysis.observed_front(trace, s, math.inf)
    params = table.true_final("trainable_params")
    assert front and all(params[c] <= 400 for c in front)  # ... and none of them is on the front
    # Optuna's own feasible front agrees
    assert all(t.constraints["trainable_params"] <= 0 for t in trace.study.best_trials)


def test_suggestions_are_answered_by_the_matching_configuration(table):
    s = space(params={"train.lr": [1e-3, 3e-3, 1e-2, 3e-2], "adapter.r": RANKS, "placement.towers": TOWERS})
    trace = replay_sweep(table, s, seed=0, budget_s=300)
    assert all(r.exact for r in trace.records)
    for r in trace.records:
        assert table.config(r.config) == {"train.lr": r.params["train.lr"], "adapter.r": r.params["adapter.r"],
                                          "placement.towers": r.params["placement.towers"]}  # fmt: skip
    # a continuous lr is answered by the nearest recorded lr (on the log scale the space samples)
    trace = replay_sweep(table, space(), seed=0, budget_s=100)
    for r in trace.records:
        nearest = min(LRS, key=lambda x: abs(math.log(x) - math.log(r.params["train.lr"])))
        assert table.config(r.config)["train.lr"] == nearest


# ------------------------------------------------------------------------------------------------ MO-ASHA
def test_mo_asha_keeps_cheap_pareto_trials_that_first_objective_asha_stops():
    from ray.tune.schedulers import ASHAScheduler

    from ranksearch.replay.engine import SimTrial
    from ranksearch.sweep.mo_asha import MultiObjectiveASHA

    mo = MultiObjectiveASHA(["acc", "params"], ["max", "min"], max_t=4, grace_period=1, reduction_factor=2)
    first = ASHAScheduler(metric="acc", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    results = [("big", 80.0, 1000.0), ("big2", 79.0, 900.0), ("tiny", 60.0, 10.0)]
    decisions = {}
    for sched, name in ((mo, "mo"), (first, "first")):
        for tid, acc, params in results:
            trial = SimTrial(tid, {})
            sched.on_trial_add(None, trial)
            decisions[name, tid] = sched.on_trial_result(None, trial, {"training_iteration": 1, "acc": acc,
                                                                        "params": params})  # fmt: skip
    assert decisions["first", "tiny"] == "STOP" and decisions["mo", "tiny"] == "CONTINUE"
    # a dominated trial is stopped by both
    t = SimTrial("dominated", {})
    mo.on_trial_add(None, t)
    assert mo.on_trial_result(None, t, {"training_iteration": 1, "acc": 50.0, "params": 2000.0}) == "STOP"


def test_mo_asha_with_one_objective_decides_exactly_as_rays_asha():
    """Random result streams (reduction factors, rungs, brackets, ties): every decision equals Ray's."""
    from ray.tune.schedulers import ASHAScheduler

    from ranksearch.replay.engine import SimTrial
    from ranksearch.sweep.mo_asha import MultiObjectiveASHA

    rng = np.random.default_rng(0)
    decisions = 0
    for _ in range(60):
        rf, max_t = float(rng.choice([2, 3, 4])), int(rng.choice([4, 8, 9, 16]))
        brackets = int(rng.choice([1, 2]))
        kw = dict(max_t=max_t, grace_period=1, reduction_factor=rf, brackets=brackets)
        np.random.seed(int(rng.integers(2**31)))  # both draw a new trial's bracket from NumPy's generator
        state = np.random.get_state()
        mo = MultiObjectiveASHA(["acc"], ["max"], **kw)
        ray = ASHAScheduler(metric="acc", mode="max", **kw)
        n = int(rng.integers(3, 16))
        for sched in (mo, ray):
            np.random.set_state(state)
            for i in range(n):
                sched.on_trial_add(None, SimTrial(f"t{i}", {}))
        alive = set(range(n))
        base = rng.normal(size=n)
        for it in range(1, max_t + 1):
            for i in sorted(alive):
                value = round(float(base[i] + 0.1 * it + rng.normal(0, 0.3)), int(rng.choice([1, 3])))  # ties
                result = {"training_iteration": it, "acc": value}
                a = mo.on_trial_result(None, SimTrial(f"t{i}", {}), result)
                b = ray.on_trial_result(None, SimTrial(f"t{i}", {}), result)
                assert a == b, (rf, max_t, brackets, it, i, value)
                decisions += 1
                if b == "STOP":
                    alive.discard(i)
    assert decisions > 1000


def test_default_multi_objective_early_stopping_is_mo_asha(table):
    from ranksearch.sweep.mo_asha import MultiObjectiveASHA
    from ranksearch.sweep.search import build_scheduler

    assert isinstance(build_scheduler(space(objective=MO), max_t=4), MultiObjectiveASHA)
    s = space(objective=MO, early_stopping={"type": "asha", "rank_by": "first", "brackets": 3})
    sched = build_scheduler(s, max_t=8)
    assert not isinstance(sched, MultiObjectiveASHA) and len(sched._brackets) == 3


# ------------------------------------------------------------------------------------------- hypervolume
def test_hypervolume_matches_the_exact_2d_area(table):
    s = space(objective=MO)
    scale = analysis.ParetoScale(table, s)
    rng = np.random.default_rng(0)
    for _ in range(5):
        configs = list(rng.choice(table.n_configs, size=6, replace=False))
        losses = np.minimum(scale.losses(np.array(configs)), 1.1)  # a point past the reference adds nothing
        # exact area dominated below the reference point (1.1, 1.1) in two dimensions, by sweeping
        pts = sorted(map(tuple, losses))
        area, best_y = 0.0, 1.1
        for x, y in pts:
            if y < best_y:
                area += (1.1 - x) * (best_y - y)
                best_y = y
        assert scale.hypervolume(configs) == pytest.approx(area)
    assert scale.hypervolume(list(range(table.n_configs))) == pytest.approx(scale.table_hypervolume())
    # the scale runs from the ideal (0, 0) to the nadir (1, 1) of the table's true front: its HV is 1.1² - 1²/2 at
    # most (a straight front), and more than the 0.21 of the single corner points
    front = scale.losses(np.flatnonzero(scale.feasible))
    assert front.min(axis=0) == pytest.approx([0, 0]) and np.all(front.max(axis=0) >= 1)
    assert 0.21 < scale.table_hypervolume() <= 1.21


def test_noise_report_sees_the_tables_noise(table):
    quiet = analysis.noise_report(
        from_rows(table_rows(noise=0.01), params=PARAMS, metrics=["val/hm"]), "val/hm"
    )
    loud = analysis.noise_report(
        from_rows(table_rows(noise=5.0), params=PARAMS, metrics=["val/hm"]), "val/hm"
    )
    assert quiet.seed_sd < 0.02 and 3 < loud.seed_sd < 7
    assert quiet.variance_explained > 0.99 > loud.variance_explained
    assert quiet.seed_spearman > 0.99 > loud.seed_spearman
    assert analysis.choose_grace_period(quiet) == 1


def test_an_extended_replay_continues_the_study(table):
    """What ``sweep --extend`` relies on: a searcher built on an existing study continues it (no second round of
    defaults, trial numbers continue, the sampler sees the earlier trials)."""
    import optuna

    s = space(sampler={"type": "tpe", "seed": 0, "enqueue_defaults": True}, params={
        "train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True, "default": 1e-2},
        "adapter.r": {"type": "categorical", "choices": RANKS, "default": 8},
        "placement.towers": {"type": "categorical", "choices": TOWERS, "default": "both"},
    })  # fmt: skip
    storage = optuna.storages.InMemoryStorage()
    first = replay_sweep(table, s, seed=0, max_trials=6, storage=storage)
    more = replay_sweep(table, s, seed=0, max_trials=4, storage=storage)
    study = more.study
    assert len(study.trials) == 10 and [t.number for t in study.trials] == list(range(10))
    defaults = [
        t for t in study.trials if t.params == {"train.lr": 1e-2, "adapter.r": 8, "placement.towers": "both"}
    ]
    assert [t.number for t in defaults][:1] == [0] and all(t.number < 6 for t in defaults)  # enqueued once
    assert sorted(int(r.trial_id) for r in more.records) == list(range(6, 10))
    assert {int(r.trial_id) for r in first.records} == set(range(6))
    # the extension differs from a fresh sweep of 4: the sampler modelled the first 6 trials
    fresh = replay_sweep(table, s, seed=0, max_trials=4)
    assert [r.params for r in fresh.records] != [r.params for r in more.records]
