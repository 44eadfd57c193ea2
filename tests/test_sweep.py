"""Sweeps on a real Ray, real Optuna (journal) and real MLflow (sqlite).

Most tests use the ``synthetic`` runner (registered in ``ranksearch.sweep.runners.RUNNERS``): same trainable,
reports, checkpoints and tracking, but a cheap deterministic function instead of training. One test runs the
real tiny model.

Ray ordering: this module starts one local Ray (module fixture) and shuts it down at the end;
test_sweep_cluster.py starts an in-process 2-node cluster afterwards; test_sweep_resume.py runs drivers as
subprocesses with their own Ray. Only one Ray can be initialised per process at a time.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ranksearch.errors import ConfigError

pytestmark = pytest.mark.ray

SYNTH_SPACE = {
    "base": {"model": {"pretrained": None}, "eval": {"evals": 4}},
    "params": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
        "adapter.r": [1, 2, 4, 8, 16],
        "placement.towers": ["vision", "text", "both"],
    },
    "objective": {"metric": "val/hm", "mode": "max"},
    "sampler": {"type": "tpe", "seed": 0, "options": {"n_startup_trials": 3}},
    "early_stopping": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "trials": 8,
    "concurrency": 4,
    "resources": {"cpu": 0.5, "gpu": 0.5},
}


def write_space(folder: Path, **changes) -> Path:
    data = json.loads(json.dumps(SYNTH_SPACE))
    data.update(changes)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def load_study(folder: Path) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    return optuna.load_study(study_name="ranksearch", storage=storage)


def children_and_parents(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module")
def ray_session():
    import ray

    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, _temp_dir=tmp)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def synthetic_sweep(ray_session, tmp_path_factory):
    """8 trials, 0.5 GPU and 0.5 CPU each, up to 4 at once, one in three errors (lr above 0.03)."""
    from ranksearch.sweep.tuner import run_sweep

    tmp = tmp_path_factory.mktemp("sweep")
    space = write_space(tmp)
    result = run_sweep(
        space, name="synth", storage=tmp / "runs", runner="synthetic",
        runner_options={"seconds_per_eval": 0.4, "fail_above_lr": 0.03}, live=False,
    )  # fmt: skip
    return tmp, space, result


def test_trials_run_concurrently_on_fractional_gpus(synthetic_sweep):
    _, _, result = synthetic_sweep
    assert len(result.rows) == 8
    assert all(r["status"] in ("completed", "pruned", "error") for r in result.rows)
    spans = []
    for record in result.folder.glob("trials/*/synthetic.json"):
        spans += [(r["start"], r["end"]) for r in json.loads(record.read_text())]
    overlaps = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlaps >= 2, spans
    assert result.best is not None and result.best["status"] == "completed"
    manifest = json.loads((result.folder / "sweep.json").read_text())
    assert manifest["status"] == "finished" and manifest["parent_run_id"] == result.parent_run_id


def test_optuna_knows_pruned_and_errored_trials(synthetic_sweep):
    _, _, result = synthetic_sweep
    study = load_study(result.folder)
    assert len(study.trials) == 8
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    expected = {"completed": "COMPLETE", "pruned": "PRUNED", "error": "FAIL"}
    for row in result.rows:
        t = by_ray[row["trial_id"]]
        assert t.state.name == expected[row["status"]], (row, t)
        if row["status"] == "completed":
            assert t.value == pytest.approx(row["val/hm"])
        if row["status"] == "pruned":  # its last report (the one ASHA stopped it on) is in Optuna too
            assert sorted(t.intermediate_values) == list(range(1, row["reports"] + 1)), (row, t)
            assert t.intermediate_values[row["reports"]] == pytest.approx(row["val/hm"])
    statuses = {r["status"] for r in result.rows}
    assert "pruned" in statuses  # ASHA stopped some: they must not be COMPLETE with a low-fidelity value


def test_mlflow_has_one_parent_and_a_child_per_trial(synthetic_sweep):
    _, _, result = synthetic_sweep
    client, parents, children = children_and_parents(result.tracking_uri, result.experiment)
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    assert len(children) == 8
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {result.parent_run_id}
    rows = {r["trial_id"]: r for r in result.rows}
    assert {c.data.tags["ranksearch.trial_id"] for c in children} == set(rows)
    for c in children:
        row = rows[c.data.tags["ranksearch.trial_id"]]
        assert c.data.tags["ranksearch.status"] == row["status"]
        assert c.data.params["train/lr"] and c.data.params["search/adapter.r"]
        assert c.data.params["model/activation"] == "gelu"
        if row["status"] != "error":
            history = client.get_metric_history(c.info.run_id, "val/hm")
            assert len(history) == row["reports"] and len({m.step for m in history}) == len(history)
        if row["status"] == "completed":
            assert {a.path for a in client.list_artifacts(c.info.run_id)} >= {
                "metrics.json",
                "synthetic.json",
            }
            assert c.info.status == "FINISHED"
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["best.trial_id"] == result.best["trial_id"]
    assert {a.path for a in client.list_artifacts(result.parent_run_id)} >= {"space.yaml", "trials.parquet"}
    table = pq.read_table(result.folder / "trials.parquet").to_pylist()
    assert len(table) == 8 and {r["trial_id"] for r in table} == set(rows)


def test_mlflow_records_the_sweep_the_mlflow_way(synthetic_sweep):
    """A model-training experiment; pruned trials KILLED and filterable; no bookkeeping metrics; no "None"
    params; MLflow's own context tags; Optuna's objectives named for optuna-dashboard."""
    _, space, result = synthetic_sweep
    client, parents, children = children_and_parents(result.tracking_uri, result.experiment)
    exp = client.get_experiment_by_name(result.experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    rows = {r["trial_id"]: r for r in result.rows}
    pruned = {t for t, r in rows.items() if r["status"] == "pruned"}
    assert pruned
    want = {"completed": "FINISHED", "pruned": "KILLED", "error": "FAILED", "failed": "FAILED"}
    for c in children:
        assert c.info.status == want[rows[c.data.tags["ranksearch.trial_id"]]["status"]]
    found = client.search_runs([exp.experiment_id], filter_string="tags.`ranksearch.status` = 'pruned'")
    assert {r.data.tags["ranksearch.trial_id"] for r in found} == pruned
    killed = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'KILLED'")
    assert {r.data.tags["ranksearch.trial_id"] for r in killed} == pruned
    for run in [*parents, *children]:
        assert not {"step", "eval_step", "replicate", "replicates", "total_steps"} & set(run.data.metrics)
        assert "None" not in run.data.params.values(), run.data.params
        assert run.data.tags["mlflow.source.name"] == str(space.resolve())
        assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.user"]
        assert "version.ray" in run.data.tags and "git.sha" not in run.data.tags
    assert "val/hm" in next(c for c in children if c.info.status == "FINISHED").data.metrics
    assert "ranksearch report" in parents[0].data.tags["mlflow.note.content"]
    assert load_study(result.folder).metric_names == ["val/hm"]
    # the parent's counts are the end state: nothing still "running" (a tag once written stays unless rewritten)
    counts = {k[len("trials.") :]: int(v) for k, v in parents[0].data.tags.items() if k.startswith("trials.")}
    assert counts["running"] == counts["pending"] == 0, counts
    assert {k: v for k, v in counts.items() if v} == Counter(r["status"] for r in result.rows)
    manifest = json.loads((result.folder / "sweep.json").read_text())
    assert manifest["started"] < manifest["ended"] <= manifest["started"] + result.wall_s + 1


def test_existing_folder_needs_resume(synthetic_sweep):
    from ranksearch.sweep.tuner import run_sweep

    tmp, space, _ = synthetic_sweep
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(space, name="synth", storage=tmp / "runs", runner="synthetic")
    with pytest.raises(ConfigError, match="no sweep to resume"):
        run_sweep(space, name="other", storage=tmp / "runs", runner="synthetic", resume=True)


def test_warm_start_adds_completed_trials(synthetic_sweep, tmp_path):
    from ranksearch.sweep.tuner import run_sweep

    _, _, first = synthetic_sweep
    space = write_space(tmp_path, trials=2, concurrency=2)
    result = run_sweep(
        space, name="warm", storage=tmp_path / "runs", runner="synthetic", warm_start=first.folder,
        runner_options={"seconds_per_eval": 0.05, "fail_above_lr": 0.03}, live=False,
    )  # fmt: skip
    study = load_study(result.folder)
    warm = [t for t in study.trials if "warm_start_from" in t.user_attrs]
    completed_before = sum(r["status"] == "completed" for r in first.rows)
    assert len(warm) == completed_before and all(t.state.name == "COMPLETE" for t in warm)
    assert len(study.trials) == completed_before + 2


def test_pareto_search_with_seed_replicates(ray_session, tmp_path):
    from ranksearch.sweep.tuner import run_sweep

    space = write_space(
        tmp_path,
        objective=[{"metric": "val/hm", "mode": "max"}, {"metric": "trainable_params", "mode": "min"}],
        seeds=[1, 2],
        trials=4,
        concurrency=2,
        base={"model": {"pretrained": None}, "eval": {"evals": 2}},
    )
    result = run_sweep(
        space, name="pareto", storage=tmp_path / "runs", runner="synthetic",
        runner_options={"seconds_per_eval": 0.05}, live=False,
    )  # fmt: skip
    study = load_study(result.folder)
    assert len(study.directions) == 2 and len(study.trials) == 4
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    for row in result.rows:
        t = by_ray[row["trial_id"]]
        if row["status"] == "completed":
            assert row["reports"] == 4 and row["val/hm_std"] > 0  # 2 evals x 2 seeds; seeds differ
            assert t.state.name == "COMPLETE" and len(t.values) == 2
        else:
            assert t.state.name != "COMPLETE"
    assert all(len(list(result.folder.glob(f"trials/{r['trial_id']}/seed-*"))) in (1, 2) for r in result.rows)


def test_real_tiny_model_sweep(ray_session, tmp_path):
    """Two real trials of the tiny CLIP (run_trial): metrics, allocation summary and artifacts reach MLflow."""
    from ranksearch.sweep.tuner import run_sweep

    space = write_space(
        tmp_path,
        base={
            "model": {"name": "rs-tiny-clip", "pretrained": None},
            "data": {"task": "shapeworld", "shots": 2, "test_per_class": 2},
            "train": {"iterations": 16, "batch_size": 16},
            "eval": {"evals": 2, "zero_shot": False},
        },
        params={"adapter.r": [2, 4], "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        trials=2,
        concurrency=2,
        resources={"cpu": 1, "gpu": 0},
        early_stopping={"type": "none"},
    )
    result = run_sweep(space, name="real", storage=tmp_path / "runs", live=False)
    assert [r["status"] for r in result.rows] == ["completed", "completed"], result.rows
    for row in result.rows:
        assert 0 <= row["val/hm"] <= 100 and "test/hm" in row and row["alloc/total_rank"] > 0
    client, _, children = children_and_parents(result.tracking_uri, result.experiment)
    assert len(children) == 2
    for c in children:
        assert {"adapter.safetensors", "allocation.parquet"} <= {
            a.path for a in client.list_artifacts(c.info.run_id)
        }
        assert "test/hm" in c.data.metrics and c.data.params["model/name"] == "rs-tiny-clip"


@pytest.mark.slow  # a whole sweep through the CLI (~20 s on an idle 2-core machine)
def test_nan_objective_fails_the_trial_and_a_sweep_without_results_exits_1(
    ray_session, tmp_path, monkeypatch, capsys
):
    """Trials that train to the end with a NaN objective are FAILED with the reason in Tune's rows, Optuna and
    MLflow (not completed); the sweep command, with no trial completed, exits 1 with one line saying why."""
    import ranksearch.sweep.tuner as tuner
    from ranksearch.cli import main

    real = tuner.run_sweep
    inject = {str(r): {"nan_objective": True} for r in (1, 2, 4, 8, 16)}
    seen = {}

    def synthetic_sweep(*args, **kwargs):  # the CLI's sweep, on the synthetic runner
        seen["result"] = real(
            *args, **kwargs, runner="synthetic", runner_options={"seconds_per_eval": 0.05, "inject": inject}
        )
        return seen["result"]

    monkeypatch.setattr(tuner, "run_sweep", synthetic_sweep)
    space = write_space(tmp_path, trials=2, concurrency=2, early_stopping={"type": "none"})
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(space), "--name", "nan", "--runs-dir", str(tmp_path / "runs"), "--no-live"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "no trial completed (2 failed)" in line and "val/hm is nan" in line, err
    assert "Traceback" not in err

    result = seen["result"]
    assert [r["status"] for r in result.rows] == ["failed", "failed"] and result.best is None
    reasons = {r["trial_id"]: r["error"] for r in result.rows}
    assert all("objective val/hm is nan" in why for why in reasons.values()), reasons
    study = load_study(result.folder)
    assert {t.state.name for t in study.trials} == {"FAIL"}
    for t in study.trials:
        assert t.user_attrs["ranksearch_failure"] == reasons[t.user_attrs["ray_trial_id"]]
    _, _, children = children_and_parents(result.tracking_uri, result.experiment)
    assert {c.info.status for c in children} == {"FAILED"}
    for c in children:
        assert c.data.tags["ranksearch.status"] == "failed"
        assert c.data.tags["ranksearch.failure"] == reasons[c.data.tags["ranksearch.trial_id"]]
