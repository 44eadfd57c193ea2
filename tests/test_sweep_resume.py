"""``--resume`` after the driver is SIGKILLed mid-sweep: every trial done exactly once in Tune, Optuna, MLflow.

The drivers run as subprocesses with their own local Ray (this process starts none), in a new session so the
Ray processes the killed driver leaves behind can be ended by their session, which only this test created
(``driver_process``).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import driver_process
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from reliability_report import record

pytestmark = pytest.mark.ray

N = 8
DRIVER = """
import json, sys
from pathlib import Path
from ranksearch.sweep.tuner import run_sweep
space, storage, resume, tmp = sys.argv[1:5]
r = run_sweep(space, gpus=4, name="resume", storage=Path(storage), resume=resume == "1", runner="synthetic",
              runner_options={"seconds_per_eval": 0.5}, live=False, ray_init={"num_cpus": 2, "_temp_dir": tmp})
print("RESULT " + json.dumps({"rows": [[x["trial_id"], x["status"]] for x in r.rows], "parent": r.parent_run_id,
                              "reports": {x["trial_id"]: x["reports"] for x in r.rows}}))
"""


def start_driver(tmp: Path, resume: bool) -> subprocess.Popen:
    args = [str(tmp / "space.yaml"), str(tmp / "runs"), "1" if resume else "0"]
    return driver_process.start_driver(DRIVER, args, tmp / f"driver-{int(resume)}.log")


def finished_in_optuna(folder: Path) -> int:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not (folder / "optuna.journal").exists():
        return 0
    try:
        study = optuna.load_study(
            study_name="ranksearch",
            storage=JournalStorage(JournalFileBackend(str(folder / "optuna.journal"))),
        )
    except KeyError:
        return 0
    return sum(t.state.is_finished() for t in study.trials)


@pytest.mark.slow  # a real sweep, killed and resumed in subprocesses
def test_resume_after_sigkill(tmp_path):
    t0 = time.time()
    space = {
        "base": {"model": {"pretrained": None}, "eval": {"evals": 4}},
        "params": {
            "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
            "adapter.r": [1, 2, 4, 8, 16],
        },
        "objective": {"metric": "val/hm", "mode": "max"},
        "sampler": {"type": "tpe", "seed": 0, "options": {"n_startup_trials": 3}},
        "early_stopping": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "trials": N,
        "concurrency": 2,
        "resources": {"cpu": 1, "gpu": 0.5},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    folder = tmp_path / "runs" / "resume"

    first = start_driver(tmp_path, resume=False)
    deadline = time.time() + 180
    while finished_in_optuna(folder) < 3:  # kill after K=3 trials finished, with others running
        assert first.poll() is None, (tmp_path / "driver-0.log").read_text()[-3000:]
        assert time.time() < deadline, "the first driver did not finish 3 trials in time"
        time.sleep(0.5)
    driver_process.kill_session(first)
    parent = json.loads((folder / "sweep.json").read_text())["parent_run_id"]

    second = start_driver(tmp_path, resume=True)
    try:
        second.wait(timeout=240)
    finally:
        if second.poll() is None:
            driver_process.kill_session(second)
    out = (tmp_path / "driver-1.log").read_text()
    assert second.returncode == 0, out[-4000:]
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    # Tune: N trials, all finished, each once
    tune_ids = [tid for tid, _ in result["rows"]]
    assert len(tune_ids) == N == len(set(tune_ids))
    assert all(status in ("completed", "pruned") for _, status in result["rows"]), result["rows"]
    assert result["parent"] == parent
    assert json.loads((folder / "sweep.json").read_text())["status"] == "finished"

    # Optuna: every Tune trial once, finished; trials lost with the first driver (if any) are FAIL "orphaned"
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="ranksearch", storage=JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    )
    # A result Optuna was told just before the kill, newer than Tune's last experiment snapshot, is recorded in
    # lost_by_tune.json (Optuna trials are immutable once finished): it must be finished and have no MLflow run.
    lost_file = folder / "lost_by_tune.json"
    lost = {e["number"] for e in json.loads(lost_file.read_text())} if lost_file.exists() else set()
    owned = [
        t
        for t in study.trials
        if t.user_attrs.get("ranksearch_status") != "orphaned" and t.number not in lost
    ]
    assert sorted(t.user_attrs["ray_trial_id"] for t in owned) == sorted(tune_ids)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in owned)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials if t.number in lost)
    assert len(lost) <= 2  # at most the trials reported within one snapshot interval before the kill
    assert all(t.state.name == "FAIL" for t in study.trials if t not in owned and t.number not in lost)

    # MLflow: the same parent, one active child per Tune trial
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name("resume")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    all_children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    # runs of trials the restored Tune state does not know are kept (never deleted once they hold metrics),
    # ended and tagged ranksearch.orphaned
    orphaned = [r for r in all_children if r.data.tags.get("ranksearch.orphaned") == "true"]
    children = [r for r in all_children if r not in orphaned]
    assert all(r.info.status in ("KILLED", "FINISHED") and r.data.metrics for r in orphaned)
    assert [p.info.run_id for p in parents] == [parent]
    assert sorted(c.data.tags["ranksearch.trial_id"] for c in children) == sorted(tune_ids)
    ended = {"completed": "FINISHED", "pruned": "KILLED"}  # pruned trials: stopped by the scheduler
    assert all(c.info.status == ended[c.data.tags["ranksearch.status"]] for c in children)
    assert client.get_run(parent).info.status == "FINISHED"

    # MLflow metric histories: steps 1..reports for every key, none duplicated or missing, although the trials
    # running at the kill re-ran their tail from their last checkpoint (the journal keys points by step)
    duplicates = lost = 0
    for c in children:
        reports = result["reports"][c.data.tags["ranksearch.trial_id"]]
        for key in ("val/hm", "train/loss"):
            steps = [m.step for m in client.get_metric_history(c.info.run_id, key)]
            duplicates += len(steps) - len(set(steps))
            lost += len(set(range(1, reports + 1)) - set(steps))
    assert duplicates == 0 and lost == 0
    record(
        "driver_loss", count=1, trials=N, completed=f"{N} ({sum(st == 'pruned' for _, st in result['rows'])} pruned by ASHA)",
        failed_recorded=0, duplicates=duplicates, lost_points=lost, tracebacks=0, seconds=round(time.time() - t0),
        orphaned_optuna_trials=len(study.trials) - len(owned), orphaned_mlflow_runs_kept=len(orphaned),
    )  # fmt: skip
