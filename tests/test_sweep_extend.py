"""``ranksearch sweep --extend N``: N more trials for a finished sweep, in its study, parent run and folder.

Real Ray (one local runtime for the module), real Optuna journal, real MLflow (sqlite), the ``synthetic``
runner. The refusals (no sweep, not finished, bad N, options that only a new sweep takes) are one line, exit 2,
and leave the folder as it was.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from cli_run import run_cli as cli

from ranksearch.errors import ConfigError

pytestmark = (
    pytest.mark.ray
)  # the in-process tests are slow (one shared sweep); the killed-driver one is reliability

SPACE = {
    "base": {"model": {"pretrained": None}, "eval": {"evals": 3}},
    "params": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True, "default": 1.0e-3},
        "adapter.r": {"type": "categorical", "choices": [1, 2, 4, 8], "default": 4},
    },
    "objective": {"metric": "val/hm", "mode": "max"},
    "sampler": {"type": "tpe", "seed": 0, "options": {"n_startup_trials": 2}, "enqueue_defaults": True},
    "early_stopping": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "trials": 5,
    "concurrency": 2,
    "resources": {"cpu": 0.5, "gpu": 0.5},
}
OPTS = {"seconds_per_eval": 0.05}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, _temp_dir=tmp)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory):
    from ranksearch.sweep.tuner import run_sweep

    tmp = tmp_path_factory.mktemp("extend")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    first = run_sweep(
        space, name="ext", storage=tmp / "runs", runner="synthetic", runner_options=OPTS, live=False
    )
    return tmp, space, first


def study_trials(folder: Path) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    return optuna.load_study(study_name="ranksearch", storage=storage).get_trials(deepcopy=False)


def mlflow_runs(result) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)
    exp = client.get_experiment_by_name(result.experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.slow
def test_extend_adds_trials_to_the_same_study_parent_run_and_folder(finished):
    from ranksearch.sweep.tuner import run_sweep

    tmp, space, first = finished
    before = {t.number: (t.state.name, t.params) for t in study_trials(first.folder)}
    assert len(before) == 5 and len(first.rows) == 5
    result = run_sweep(
        space, name="ext", storage=tmp / "runs", runner="synthetic", runner_options=OPTS, live=False, extend=3
    )
    assert result.folder == first.folder and result.parent_run_id == first.parent_run_id
    trials = study_trials(result.folder)
    # one study: the first five trials untouched, three more numbered after them; the defaults ran once
    assert [t.number for t in trials] == list(range(8))
    assert {t.number: (t.state.name, t.params) for t in trials[:5]} == before
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    defaults = {"train.lr": 1.0e-3, "adapter.r": 4}
    assert sum(t.params == defaults for t in trials) == 1
    # the sweep's rows: every trial of both runs; trials.parquet likewise (what report/status read)
    old_ids = {r["trial_id"] for r in first.rows}
    new_ids = {r["trial_id"] for r in result.rows} - old_ids
    assert len(result.rows) == 8 and len(new_ids) == 3
    table = pq.read_table(result.folder / "trials.parquet").to_pydict()
    assert set(table["trial_id"]) == old_ids | new_ids
    assert {t.user_attrs["ray_trial_id"] for t in trials[5:]} == new_ids
    # MLflow: still one parent, now with eight children (the first five not taken for orphans)
    runs = mlflow_runs(result)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.parent_run_id]
    assert [p.info.run_id for p in parents] == [first.parent_run_id]
    assert {c.data.tags["ranksearch.trial_id"] for c in children} == old_ids | new_ids
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["ranksearch.extensions"] == "1"
    assert parents[0].data.tags["ranksearch.extended_trials"] == "3"
    manifest = json.loads((result.folder / "sweep.json").read_text())
    assert manifest["status"] == "finished" and manifest["extensions"] == 1
    assert set(manifest["earlier_trials"]) == old_ids and manifest["trials"] == 8
    from ranksearch.report.data import load_sweep, total_trials

    data = load_sweep(result.folder)
    assert total_trials(data) == 8 and set(data.trials["trial_id"]) == old_ids | new_ids
    # nothing was taken for lost by Tune (the earlier trials belong to the earlier experiment)
    assert not (result.folder / "lost_by_tune.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extend": 0}, "--extend: 0: give the number of trials to add"),
        ({"extend": 2, "resume": True}, "--resume does not apply"),
        ({"extend": 2, "trials": 4}, "--trials does not apply"),
        ({"extend": 2, "name": "nothing"}, "holds no sweep to extend"),
    ],
)
def test_extend_refuses_bad_requests(finished, kwargs, message):
    from ranksearch.sweep.tuner import run_sweep

    tmp, space, _ = finished
    kwargs = {"name": "ext", **kwargs}
    with pytest.raises(ConfigError, match=message):
        run_sweep(space, storage=tmp / "runs", runner="synthetic", live=False, **kwargs)


@pytest.mark.slow
def test_extend_refuses_an_unfinished_sweep_in_one_line(finished, tmp_path, capsys):
    """CLI: an interrupted sweep is not extended (exit 2, one line naming --extend and --resume)."""
    tmp, space, first = finished
    folder = tmp_path / "runs" / "cut"
    folder.mkdir(parents=True)
    (folder / "tune").mkdir()
    manifest = json.loads((first.folder / "sweep.json").read_text())
    (folder / "sweep.json").write_text(json.dumps({**manifest, "name": "cut", "status": "interrupted"}))
    saved = (folder / "sweep.json").read_text()
    code, out = cli(
        ["sweep", str(space), "--name", "cut", "--runs-dir", str(tmp_path / "runs"), "--extend", "2"], capsys
    )
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "--extend" in lines[0] and "not a finished sweep" in lines[0], out
    assert "--resume" in lines[0] and "Traceback" not in out
    assert (folder / "sweep.json").read_text() == saved
    for bad in ("0", "x"):
        code, out = cli(["sweep", str(space), "--name", "cut", "--extend", bad], capsys)
        lines = [line for line in out.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "--extend" in lines[0] and "Traceback" not in out, out


DRIVER = """
import json, sys
from pathlib import Path
from ranksearch.sweep.tuner import run_sweep
space, storage, mode, tmp = sys.argv[1:5]
r = run_sweep(space, gpus=2, name="cut", storage=Path(storage), resume=mode == "resume",
              extend=int(mode) if mode.isdigit() else None, runner="synthetic", runner_options={"seconds_per_eval": 0.5},
              live=False, ray_init={"num_cpus": 2, "_temp_dir": tmp})
print("RESULT " + json.dumps({"rows": [[x["trial_id"], x["status"]] for x in r.rows], "parent": r.parent_run_id}))
"""


def driver(tmp: Path, mode: str):
    from driver_process import start_driver

    args = [str(tmp / "space.yaml"), str(tmp / "runs"), mode]
    return start_driver(DRIVER, args, tmp / f"driver-{mode}.log")


def finish(proc, tmp: Path, mode: str) -> dict:
    from driver_process import kill_session

    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            kill_session(proc)
    out = (tmp / f"driver-{mode}.log").read_text()
    assert proc.returncode == 0, out[-4000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.reliability  # drivers in subprocesses, one SIGKILLed mid-extension
def test_an_interrupted_extension_resumes_with_every_trial_once(tmp_path):
    """4 trials, then --extend 6 killed after 2 of them finished, then --resume: 10 trials, each once in Tune,
    Optuna and MLflow, the first 4 untouched, none of them taken for orphans or lost."""
    import time

    from driver_process import kill_session
    from mlflow.tracking import MlflowClient
    from test_sweep_resume import finished_in_optuna

    (tmp_path / "space.yaml").write_text(
        yaml.safe_dump({**SPACE, "trials": 4, "resources": {"cpu": 1, "gpu": 0.5}})
    )
    folder = tmp_path / "runs" / "cut"
    first = finish(driver(tmp_path, "new"), tmp_path, "new")
    before = {t.number: (t.state.name, t.params) for t in study_trials(folder)}
    ext = driver(tmp_path, "6")
    deadline = time.time() + 240
    while finished_in_optuna(folder) < 6:  # two of the extension's trials finished, others running
        assert ext.poll() is None, (tmp_path / "driver-6.log").read_text()[-3000:]
        assert time.time() < deadline, "the extension did not finish 2 trials in time"
        time.sleep(0.5)
    kill_session(ext)
    assert json.loads((folder / "sweep.json").read_text())["status"] == "running"
    result = finish(driver(tmp_path, "resume"), tmp_path, "resume")

    ids = [tid for tid, _ in result["rows"]]
    old = [tid for tid, _ in first["rows"]]
    assert len(ids) == 10 == len(set(ids)) and ids[:4] == old and result["parent"] == first["parent"]
    assert all(status in ("completed", "pruned") for _, status in result["rows"]), result["rows"]
    trials = study_trials(folder)
    assert {t.number: (t.state.name, t.params) for t in trials[:4]} == before
    lost_file = folder / "lost_by_tune.json"
    lost = {e["number"] for e in json.loads(lost_file.read_text())} if lost_file.exists() else set()
    assert all(n >= 4 for n in lost)  # the earlier experiment's trials are never "lost by Tune"
    owned = [
        t for t in trials if t.user_attrs.get("ranksearch_status") != "orphaned" and t.number not in lost
    ]
    assert sorted(t.user_attrs["ray_trial_id"] for t in owned) == sorted(ids)
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cut")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first["parent"]]
    # a run of a trial the restored Tune state does not know is kept (it has metrics) and tagged, never deleted
    orphaned = [c for c in children if c.data.tags.get("ranksearch.orphaned") == "true"]
    assert all(c.data.metrics and c.info.status in ("KILLED", "FINISHED") for c in orphaned)
    children = [c for c in children if c not in orphaned]
    assert sorted(c.data.tags["ranksearch.trial_id"] for c in children) == sorted(ids)
    manifest = json.loads((folder / "sweep.json").read_text())
    assert manifest["status"] == "finished" and manifest["trials"] == 10 and manifest["earlier_trials"] == old
    assert set(pq.read_table(folder / "trials.parquet").to_pydict()["trial_id"]) == set(ids)
