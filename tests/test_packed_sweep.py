"""Packed trials through the sweep path: ``resources: {pack: K}`` on a real Ray, Optuna journal and MLflow sqlite.

Tune, Optuna and MLflow must see K ordinary trials (own suggestion, reports, ASHA decision, child run), while one
pack host trains them together (``ranksearch.sweep.packed``); a real packed trial ends with the metrics and adapter
of the same configuration trained alone (``tests/test_packed.py`` checks the pack itself in more cases).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ranksearch.config.load import load_trial_config
from ranksearch.trial import run_trial

pytestmark = pytest.mark.ray


def write_space(folder: Path, data: dict) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def children(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def pack_records(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("trials/*/pack.json")}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=tmp)
    yield
    ray.shutdown()


def test_packed_trials_are_ordinary_trials_to_tune_optuna_and_mlflow(ray_session, tmp_path):
    """8 synthetic trials, packs of 4 on one CPU each: 8 Tune trials, 8 Optuna trials, 8 MLflow children; ASHA
    stops members one by one and their slots go to the next trials, all in the one host the 4 fit into."""
    from ranksearch.sweep.tuner import run_sweep

    space = write_space(
        tmp_path,
        {
            "base": {"model": {"pretrained": None}, "eval": {"evals": 4}},
            "params": {
                "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
                "adapter.r": [1, 2, 4, 8, 16],
            },
            "objective": {"metric": "val/hm", "mode": "max"},
            "sampler": {"type": "tpe", "seed": 0, "options": {"n_startup_trials": 3}},
            "early_stopping": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "trials": 8,
            "concurrency": 4,
            "resources": {"cpu": 1, "pack": 4},
        },
    )
    result = run_sweep(
        space, name="packed-synth", storage=tmp_path / "runs", runner="synthetic",
        runner_options={"seconds_per_eval": 0.4}, live=False,
    )  # fmt: skip
    assert len(result.rows) == 8
    statuses = [r["status"] for r in result.rows]
    assert set(statuses) <= {"completed", "pruned"} and "pruned" in statuses, statuses
    assert "completed" in statuses

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from ranksearch.sweep.tuner import JOURNAL

    study = optuna.load_study(
        study_name="ranksearch", storage=JournalStorage(JournalFileBackend(str(result.folder / JOURNAL)))
    )
    assert len(study.trials) == 8
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    for row in result.rows:  # each trial's own suggestion, its own pruning decision
        t = by_ray[row["trial_id"]]
        assert t.state.name == {"completed": "COMPLETE", "pruned": "PRUNED"}[row["status"]]
        assert t.params["train.lr"] == pytest.approx(row["param:train.lr"])
    assert len(children(result.tracking_uri, result.experiment)) == 8

    records = pack_records(result.folder)
    completed = {r["trial_id"] for r in result.rows if r["status"] == "completed"}
    assert completed <= set(records)  # a completed member's files came back from its host
    assert len({r["host"] for r in records.values()}) == 1  # 4 at a time fit in one host, freed slots reused
    # members ran together: the trials' MLflow child runs (started when Tune starts a trial, ended when it ends;
    # every trial has one). The trial folders cannot tell: only completed members' files come back from the
    # host, and how many complete is the searcher's business
    spans = [(c.info.start_time, c.info.end_time) for c in children(result.tracking_uri, result.experiment)]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) >= 3, spans


def test_a_packed_real_trial_trains_exactly_like_the_same_trial_alone(ray_session, tmp_path):
    """Three real tiny-CLIP trials packed in one host end with the metrics (≤ 1e-5) and adapter tensors of the
    same configurations trained alone by ``run_trial``."""
    from ranksearch.sweep.tuner import run_sweep

    base = {
        "model": {"name": "rs-tiny-clip", "pretrained": None},
        "data": {"task": "shapeworld", "shots": 2, "test_per_class": 2},
        "train": {"iterations": 12, "batch_size": 8},
        "eval": {"evals": 2},
        "adapter": {"family": "lora", "dropout": 0.0},
    }
    space = write_space(
        tmp_path,
        {
            "base": base,
            "params": {
                "adapter.r": [2, 4],
                "train.lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True},
            },
            "objective": {"metric": "val/hm", "mode": "max"},
            "sampler": {"type": "random", "seed": 3},
            "early_stopping": {"type": "none"},
            "trials": 3,
            "concurrency": 3,
            "resources": {"cpu": 1, "pack": 3},
        },
    )
    result = run_sweep(space, name="packed-real", storage=tmp_path / "runs", live=False)
    assert [r["status"] for r in result.rows] == ["completed"] * 3, result.rows
    records = pack_records(result.folder)
    assert len(records) == 3 and len({r["host"] for r in records.values()}) == 1
    for row in result.rows:
        folder = result.folder / "trials" / row["trial_id"]
        config = load_trial_config(folder / "config.yaml")
        alone = run_trial(config, output_dir=tmp_path / row["trial_id"], progress=False)
        packed = json.loads((folder / "metrics.json").read_text())["final"]
        for k, v in alone.metrics.items():
            assert packed[k] == pytest.approx(v, abs=1e-5), k
            if k.startswith(("val/", "test/")):
                assert row[k] == pytest.approx(v, abs=1e-5), k  # what Tune, Optuna and MLflow were told
        a = load_file(str(alone.output_dir / "adapter.safetensors"))
        b = load_file(str(folder / "adapter.safetensors"))
        assert a.keys() == b.keys() and a
        # stacked rows change the float summation order; AdamW's normalised steps carry ~1e-6 of it
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
    for child in children(result.tracking_uri, result.experiment):
        assert "test/hm" in child.data.metrics
