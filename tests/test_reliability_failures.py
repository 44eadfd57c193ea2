"""Diverging, crashing and over-budget trials are recorded as failed with their reason; the sweep goes on.

One sweep of the ``synthetic`` runner (grid over ``adapter.r``, one failure mode per rank, injected through the
runner's ``inject`` option and the real budget checks), plus one real tiny-CLIP trial whose loss is non-finite
at once (``train.logit_scale: 1e39``) and one real trial over its memory budget. Issue 7, item 4.
"""

from __future__ import annotations

import tempfile
import time

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from reliability_report import record

pytestmark = [pytest.mark.ray, pytest.mark.reliability]

# adapter.r -> what goes wrong in that trial, and the words its recorded reason must contain
MODES = {
    1: ({"train.logit_scale": 1.0e39}, "failed", "diverged: non-finite loss"),
    2: ({"raise": "injected crash"}, "error", "synthetic failure: injected crash"),
    3: ({"diverge_at": 30}, "failed", "diverged: non-finite loss (nan) at step 30"),
    4: ({"train.max_seconds": 0.3}, "failed", "over its time budget: train.max_seconds=0.3"),
    8: ({"train.max_memory_mb": 1}, "failed", "over its memory budget: train.max_memory_mb=1"),
    16: ({}, "completed", None),
}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, _temp_dir=tmp)
    yield
    ray.shutdown()


def _space(tmp_path, **changes):
    space = {
        "base": {"model": {"pretrained": None}, "eval": {"evals": 5}},
        "params": {"adapter.r": sorted(MODES)},
        "objective": {"metric": "val/hm", "mode": "max"},
        "sampler": {"type": "grid", "seed": 0},
        "early_stopping": {"type": "none"},
        "trials": len(MODES),
        "concurrency": 3,
        "resources": {"cpu": 0.5, "gpu": 0.5},
        **changes,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _study(folder):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    return optuna.load_study(study_name="ranksearch", storage=storage)


def test_failing_trials_are_recorded_and_the_sweep_finishes(ray_session, tmp_path, capsys):
    from ranksearch.sweep.live import leaderboard
    from ranksearch.sweep.tuner import run_sweep

    t0 = time.time()
    inject = {str(r): mode for r, (mode, _, _) in MODES.items()}
    result = run_sweep(
        _space(tmp_path),
        name="failing",
        storage=tmp_path / "runs",
        runner="synthetic",
        runner_options={"seconds_per_eval": 0.2, "inject": inject},
        live=False,
    )
    rows = result.rows
    assert len(rows) == len(MODES)
    assert sorted(int(r["param:adapter.r"]) for r in rows) == sorted(MODES)  # grid: every mode once
    assert (result.folder / "sweep.json").read_text().count('"finished"') == 1

    study = _study(result.folder)
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    client = MlflowClient(tracking_uri=result.tracking_uri)
    exp = client.get_experiment_by_name(result.experiment)
    children = {
        c.data.tags["ranksearch.trial_id"]: c
        for c in client.search_runs([exp.experiment_id], "tags.`ranksearch.kind` = 'trial'")
    }
    recorded = 0
    for row in rows:
        _, status, reason = MODES[int(row["param:adapter.r"])]
        assert row["status"] == status, row
        run, ot = children[row["trial_id"]], by_ray[row["trial_id"]]
        assert run.data.tags["ranksearch.status"] == status
        if status == "completed":
            assert run.info.status == "FINISHED" and ot.state.name == "COMPLETE"
            assert "ranksearch.failure" not in run.data.tags
            continue
        # MLflow: FAILED with the reason as a tag; Optuna: FAIL with the reason; the row says it too
        assert run.info.status == "FAILED", row
        assert reason in run.data.tags["ranksearch.failure"], run.data.tags
        assert ot.state.name == "FAIL" and reason in ot.user_attrs["ranksearch_failure"], ot.user_attrs
        assert reason in row["error"] and "Traceback" not in row["error"]
        recorded += 1
        if int(row["param:adapter.r"]) == 3:  # diverged at step 30: the two evaluations before it are kept
            hist = client.get_metric_history(run.info.run_id, "val/hm")
            assert sorted(m.step for m in hist) == [1, 2]

    # the CLI's summary lists the failed trials with their reason
    from ranksearch.sweep import commands  # noqa: F401  (the printing lives in commands.sweep)

    leaderboard(rows, result.space)  # renders with failed rows present
    record(
        "failing_trials",
        count=len(MODES) - 1,
        trials=len(rows),
        completed=sum(r["status"] == "completed" for r in rows),
        failed_recorded=recorded,
        duplicates=0,
        lost_points=0,
        tracebacks=0,
        seconds=round(time.time() - t0),
    )
    assert recorded == len(MODES) - 1


def test_real_trial_divergence_is_a_failed_trial(ray_session, tmp_path):
    """The real tiny CLIP with an overflowing logit scale: non-finite loss at step 1 -> failed, sweep finished."""
    from ranksearch.sweep.tuner import run_sweep

    t0 = time.time()
    space = _space(
        tmp_path,
        base={
            "model": {"name": "rs-tiny-clip", "pretrained": None},
            "data": {"task": "shapeworld", "shots": 2, "test_per_class": 2},
            "train": {"iterations": 4, "batch_size": 8, "logit_scale": 1.0e39},
            "eval": {"evals": 1, "zero_shot": False},
        },
        params={"adapter.r": [2]},
        trials=1,
        concurrency=1,
        resources={"cpu": 1, "gpu": 0},
    )
    result = run_sweep(space, name="diverge", storage=tmp_path / "runs", live=False)
    [row] = result.rows
    assert row["status"] == "failed" and "diverged: non-finite loss" in row["error"], row
    client = MlflowClient(tracking_uri=result.tracking_uri)
    exp = client.get_experiment_by_name(result.experiment)
    [child] = client.search_runs([exp.experiment_id], "tags.`ranksearch.kind` = 'trial'")
    assert child.info.status == "FAILED" and "non-finite loss" in child.data.tags["ranksearch.failure"]
    [ot] = _study(result.folder).trials
    assert ot.state.name == "FAIL" and "non-finite" in ot.user_attrs["ranksearch_failure"]
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    record(
        "real_divergence",
        count=1,
        trials=1,
        completed=0,
        failed_recorded=1,
        duplicates=0,
        lost_points=0,
        tracebacks=0,
        seconds=round(time.time() - t0),
    )


def test_real_trial_over_its_memory_budget_fails_cleanly(tmp_path):
    """``train.max_memory_mb`` in the real loop: a clear failed result, not a crash (no Ray needed)."""
    from ranksearch.config.load import validate_trial_config
    from ranksearch.trial import run_trial

    config = validate_trial_config(
        {
            "model": {"name": "rs-tiny-clip", "pretrained": None},
            "data": {"task": "shapeworld", "shots": 2, "test_per_class": 2},
            "train": {"iterations": 3, "batch_size": 8, "max_memory_mb": 1},
            "eval": {"evals": 1, "zero_shot": False},
        }
    )
    result = run_trial(config, output_dir=tmp_path / "t", progress=False)
    assert result.status == "failed"
    assert result.error.startswith("over its memory budget: train.max_memory_mb=1 exceeded at step 1")
