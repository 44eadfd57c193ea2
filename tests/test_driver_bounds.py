"""Issue 16: the driver's per-trial costs that grow with the sweep are bounded.

* ``space.tpe_window.WindowedTPESampler``: TPE models the best and the most recent trials only (below the
  window it is Optuna's TPE exactly);
* ``sweep.snapshots.bounded_snapshots``: Tune's experiment snapshot every 2 s at least, at most 5 % of the time.
Their measured costs are rows of ``bench/driver_scale.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from ranksearch.space.tpe_window import WindowedTPESampler

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
    view = WindowedTPESampler(window=60, keep_best=25)._view(study)._get_trials(deepcopy=False, states=None)
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


def _reference_window(study: optuna.Study, window: int, keep_best: int) -> list[int]:
    """The window from scratch: the best ``keep_best`` COMPLETE, then the most recent finished, + unfinished."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    if len(finished) <= window:
        return [t.number for t in trials]
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    best = sorted(
        complete, key=lambda t: (t.value if study.direction.name == "MINIMIZE" else -t.value, t.number)
    )
    kept = {t.number for t in best[:keep_best]}
    for t in reversed(finished):
        if len(kept) >= window:
            break
        kept.add(t.number)
    return sorted(kept | {t.number for t in trials if not t.state.is_finished()})


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_incremental_window_is_the_window_computed_from_scratch(direction):
    """Trials finish out of order, some fail or are pruned, eight run at a time: after every change the view
    the sampler keeps up to date incrementally holds exactly the trials a from-scratch computation picks."""
    rng = random.Random(5)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=1))
    sampler = WindowedTPESampler(window=40, keep_best=10)
    running = []
    for _ in range(300):
        while len(running) < 8:
            trial = study.ask()
            trial.suggest_float("x", -5, 5)
            running.append(trial)
        trial = running.pop(rng.randrange(len(running)))
        fate = rng.random()
        if fate < 0.1:
            study.tell(trial, state=TrialState.FAIL)
        elif fate < 0.25:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, round(rng.gauss(0, 1), 1))  # ties: the earlier trial is the better one
        view = sampler._view(study)._get_trials(deepcopy=False, states=None)
        assert [t.number for t in view] == _reference_window(study, 40, 10)


def test_the_grouped_search_space_is_optunas_over_all_trials():
    """The decomposition is refined by newly finished trials only, and equals Optuna's over the whole study
    (not just the window), sub-spaces in the same order, while trials of conditional branches finish out of
    order, eight at a time."""
    from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace

    def suggest(trial: optuna.Trial) -> float:
        family = trial.suggest_categorical("family", ["lora", "dra", "rlrr"])
        x = trial.suggest_float(f"{family}.x", 0, 1)
        if family == "dra":
            x += trial.suggest_int("dra.k", 1, 4)
        if trial.number % 7 == 0:
            x += trial.suggest_float(f"{family}.extra", 0, 1)
        return x

    rng = random.Random(3)
    kw = {"seed": 2, "multivariate": True, "group": True, "constant_liar": True, "n_startup_trials": 5}
    sampler = WindowedTPESampler(window=30, **kw)  # asked here only, at the same points as Optuna's
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    optunas = _GroupDecomposedSearchSpace(True)  # persists across calls, as in TPESampler
    running = []
    for _ in range(40):
        while len(running) < 8:
            trial = study.ask()
            running.append((trial, suggest(trial)))
        for _ in range(rng.randint(1, 4)):  # finished together: the refinement order matters
            trial, value = running.pop(rng.randrange(len(running)))
            if rng.random() < 0.2:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, value)
        ours = sampler._group_decomposed_search_space.calculate(sampler._view(study))
        assert ours.search_spaces == optunas.calculate(study).search_spaces
    assert len(ours.search_spaces) >= 4


def test_a_multi_objective_study_is_modelled_whole():
    kw = {"seed": 0, "multivariate": True, "group": True, "constant_liar": True, "n_startup_trials": 5}
    sampler = WindowedTPESampler(window=10, **kw)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    assert sampler._view(study) is study
    theirs = optuna.create_study(
        directions=["minimize", "minimize"], sampler=optuna.samplers.TPESampler(**kw)
    )
    for s in (study, theirs):  # past the window: still Optuna's own TPE
        s.optimize(lambda t: (_objective(t), t.params["x"] ** 2), n_trials=20)
    assert [t.params for t in study.trials] == [t.params for t in theirs.trials]


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
