"""The searcher as ``sweep`` builds it (``ranksearch.sweep.search``) and the space fields it reads.

Fields: ``sampler.enqueue_defaults`` (the defaults as a prior), ``early_stopping.brackets`` / ``rank_by``,
``budget`` and ``constraints``; each is validated up front with the other errors of the file.
"""

from __future__ import annotations

import pytest

from ranksearch.errors import ConfigError
from ranksearch.space import validate_space
from ranksearch.sweep.compute_budget import ComputeBudget
from ranksearch.sweep.search import build_scheduler, build_searcher, build_stopper, default_points

BASE = {
    "base": {"model": {"pretrained": None}, "eval": {"evals": 4}},
    "params": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True, "default": 1e-3},
        "adapter.r": {"type": "categorical", "choices": [1, 2, 4, 8], "default": 4},
    },
    "objective": {"metric": "val/hm", "mode": "max"},
}


def make(**changes):
    return validate_space({**BASE, **changes})


def test_sweep_and_replay_share_one_builder():
    """The tuner builds its searcher, scheduler and stopper through ranksearch.sweep.search only."""
    import inspect

    from ranksearch.sweep import tuner

    src = inspect.getsource(tuner)
    assert "build_searcher(" in src and "build_scheduler(space)" in src and "build_stopper(space)" in src
    assert "PruneAwareOptunaSearch(" not in src and "ASHAScheduler(" not in src


def test_the_searcher_is_prune_aware_with_the_spaces_sampler():
    import optuna

    from ranksearch.sweep.searcher import PruneAwareOptunaSearch

    s = build_searcher(make(sampler={"type": "tpe", "seed": 3, "options": {"n_startup_trials": 5}}))
    assert isinstance(s, PruneAwareOptunaSearch)
    sampler = s._ot_study.sampler
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == 5
    assert sampler._multivariate and sampler._group and sampler._constant_liar


def test_enqueued_defaults_run_first():
    s = build_searcher(make(sampler={"enqueue_defaults": True}))
    assert s.suggest("a") == {"train.lr": 1e-3, "adapter.r": 4}
    assert s.suggest("b") != {"train.lr": 1e-3, "adapter.r": 4}
    family = validate_space({
        "base": {"model": {"pretrained": None}},
        "params": {"adapter.family": ["lora", "rlrr"]},
        "families": {"lora": {"params": {"adapter.r": [2, 4]}}},
        "objective": {"metric": "val/hm"},
    })  # fmt: skip
    assert [p["adapter.family"] for p in default_points(family)] == ["lora", "rlrr"]


def test_scheduler_settings():
    from ray.tune.schedulers import ASHAScheduler

    sched = build_scheduler(make(early_stopping={"grace_period": 1, "reduction_factor": 2, "brackets": 2}))
    assert isinstance(sched, ASHAScheduler) and len(sched._brackets) == 2 and sched._max_t == 4
    assert build_scheduler(make(early_stopping={"type": "none"})) is None
    # more brackets than rungs: capped so that every bracket has a rung
    assert len(build_scheduler(make(early_stopping={"brackets": 8}), max_t=4)._brackets) == 3


def test_compute_budget_stopper_charges_seconds_at_the_trials_resources():
    stopper = build_stopper(make(budget={"cpu_hours": 1.0}, resources={"cpu": 2}))
    assert isinstance(stopper, ComputeBudget)
    assert not stopper("t1", {"time_this_iter_s": 1799.0}) and not stopper.stop_all()
    assert stopper("t2", {"time_this_iter_s": 1.0}) and stopper.stop_all()
    assert (
        build_stopper(make(budget={"trials": 5})) is None and make(budget={"trials": 5}).spec.trial_count == 5
    )


@pytest.mark.parametrize(
    ("changes", "where", "message"),
    [
        ({"budget": {"gpu_hours": 2}}, "budget.gpu_hours", "resources.gpu > 0"),
        ({"budget": {"gpu_hours": 2, "cpu_hours": 1}}, "budget", "exactly one"),
        ({"budget": {}}, "budget", "exactly one"),
        ({"budget": {"trials": 4}, "trials": 8}, "budget.trials", "trial count once"),
        ({"budget": {"cpu_hours": -1}}, "budget.cpu_hours", "greater than 0"),
        ({"constraints": [{"metric": "trainable_params"}]}, "constraints.0", "max, min or both"),
        ({"constraints": [{"metric": "test/acc", "max": 3}]}, "constraints.0", "validation metrics"),
        ({"constraints": [{"metric": "x", "min": 3, "max": 1}]}, "constraints.0", "min 3.0 > max 1.0"),
        ({"early_stopping": {"brackets": 0}}, "early_stopping.brackets", "greater than or equal to 1"),
        ({"early_stopping": {"rank_by": "second"}}, "early_stopping.rank_by", "pareto"),
    ],
)
def test_new_fields_are_validated_with_the_rest(changes, where, message):
    with pytest.raises(ConfigError) as e:
        validate_space({**BASE, **changes, "concurrency": 0})
    problems = e.value.problems
    assert any(p.startswith(where) and message in m for p, m in problems), problems
    assert any(p == "concurrency" for p, _ in problems)  # reported together with the other errors


def test_constraint_values_follow_optunas_sign_convention():
    from ranksearch.sweep.searcher import constraint_values

    s = make(constraints=[{"metric": "trainable_params", "max": 100}, {"metric": "val/acc", "min": 50}])
    got = constraint_values(list(s.spec.constraints), {"trainable_params": 80.0, "val/acc": 40.0})
    assert got == {"trainable_params": -20.0, "val/acc": 10.0}
    assert constraint_values(list(s.spec.constraints), {})["val/acc"] > 0  # missing: infeasible


def test_a_failed_trials_reason_comes_from_the_drivers_staged_error_file(tmp_path, monkeypatch):
    """Tune writes error.txt into the driver's staging folder just before it tells the searcher; the copy in the
    sweep folder's tune/ comes later (on a busy machine, after the searcher has recorded the trial): the staged
    file is read first, so Optuna gets the real reason (CI saw a missing ``ranksearch_failure`` without this)."""
    import ray.train.constants

    session = tmp_path / "session" / "artifacts"
    monkeypatch.setattr(ray.train.constants, "_get_ray_train_session_dir", lambda: str(session))
    s = build_searcher(make(), tune_dir=str(tmp_path / "sweep" / "tune"))
    assert s.suggest("t1") is not None and s.suggest("t2") is not None
    staged = session / "2026-12-02_18-00-00" / "tune" / "driver_artifacts" / "t1" / "error.txt"
    staged.parent.mkdir(parents=True)
    staged.write_text("Failure # 1\nTraceback ...\nRuntimeError: CUDA out of memory on rank 4\n")
    s.on_trial_complete("t1", error=True)
    s.on_trial_complete("t2", error=True)  # no error file anywhere (yet): recorded as FAIL without a reason
    t1, t2 = s._ot_study.trials
    assert (
        t1.state.name == "FAIL"
        and t1.user_attrs["ranksearch_failure"] == "RuntimeError: CUDA out of memory on rank 4"
    )
    assert t2.state.name == "FAIL" and "ranksearch_failure" not in t2.user_attrs
