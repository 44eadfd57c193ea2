"""Issue 16: the driver's per-trial costs that grow with the sweep are bounded.

* ``space.tpe_window.WindowedTPESampler``: TPE models the best and the most recent trials only (below the
  window it is Optuna's TPE exactly);
* ``sweep.snapshots.bounded_snapshots``: Tune's experiment snapshot every 2 s at least, at most 5 % of the time.
Their measured costs are rows of ``bench/driver_scale.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import optuna
import pytest

from ranksearch.space.tpe_window import WindowedTPESampler, _Window

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    r = trial.suggest_categorical("r", [1, 2, 4, 8])
    return (x - 1.3) ** 2 + r / 10


def test_below_the_window_it_is_optunas_tpe():
    kw = {"seed": 3, "multivariate": True, "group": True, "constant_liar": True, "n_startup_trials": 5}
    ours = optuna.create_study(sampler=WindowedTPESampler(window=50, **kw))
    theirs = optuna.create_study(sampler=optuna.samplers.TPESampler(**kw))
    ours.optimize(_objective, n_trials=40)
    theirs.optimize(_objective, n_trials=40)
    assert [t.params for t in ours.trials] == [t.params for t in theirs.trials]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_window_holds_the_best_and_the_most_recent_trials(direction):
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_objective, n_trials=300)
    running = study.ask()  # a running trial is always kept (constant_liar)
    view = _Window(study, window=60, keep_best=25)._get_trials(deepcopy=False, states=None)
    finished = [t for t in view if t.state != optuna.trial.TrialState.RUNNING]
    assert len(finished) == 60 and running.number in {t.number for t in view}
    ranked = sorted(study.trials[:300], key=lambda t: t.value, reverse=direction == "maximize")
    assert {t.number for t in ranked[:25]} <= {t.number for t in finished}
    assert {t.number for t in study.trials[265:300]} <= {
        t.number for t in finished
    }  # 35 + best 25 = 60 at most
    assert [t.number for t in view] == sorted(t.number for t in view)  # trial order (TPE's weights)
    # the sampler keeps working on the view, and TPE's "good" set is the study's own top 25
    sampler = WindowedTPESampler(window=60, seed=0)
    study.sampler = sampler
    study.tell(running, _objective(running))
    study.optimize(_objective, n_trials=5)
    assert len(study.trials) == 306


def test_a_multi_objective_study_is_modelled_whole():
    study = optuna.create_study(directions=["minimize", "minimize"])
    sampler = WindowedTPESampler(window=10)
    assert sampler._view(study) is study


def test_snapshots_every_2_s_at_least_and_at_most_5_percent_of_the_time(monkeypatch):
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from ranksearch.sweep.snapshots import bounded_snapshots

    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)
    syncer = SimpleNamespace(sync_up=lambda *a: False, wait=lambda: None)
    storage = SimpleNamespace(
        experiment_driver_staging_path="/nonexistent", experiment_fs_path="/x", syncer=syncer
    )
    with bounded_snapshots() as stats:
        manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period="auto")
        assert manager._checkpoint_period == 2.0  # Tune's "auto" starts at 10 s
        manager.sync_up_experiment_state(lambda: time.sleep(0.01))
        assert manager._checkpoint_period == 2.0 and stats["saves"] == 1
        manager._last_save_time = float("-inf")
        manager.sync_up_experiment_state(lambda: time.sleep(0.3))  # a big state: 19x its save time
        assert 5.6 <= manager._checkpoint_period <= 7.0 and stats["saves"] == 2
        manager.sync_up_experiment_state(lambda: time.sleep(0.3))  # throttled: no save
        assert stats["saves"] == 2
    fresh = _ExperimentCheckpointManager(storage=storage, checkpoint_period="auto")
    assert fresh._checkpoint_period == 10.0  # Tune's own again outside the block
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "7")
    with bounded_snapshots():  # a period the user chose is theirs
        assert _ExperimentCheckpointManager(storage=storage, checkpoint_period="7")._checkpoint_period == 7.0
