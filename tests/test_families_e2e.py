"""Every registered family runs end to end through ``ranksearch trial`` and lands in MLflow with its telemetry."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ranksearch.adapters import family_names
from ranksearch.cli import main

SETTINGS = {
    "lora": {"adapter": {"family": "lora", "r": 2}},
    # a large threshold so the proximal step visibly prunes gates within a 24-step run
    "codyra": {"adapter": {"family": "codyra", "r": 8, "kappa_max": 0.5}},
    "rlrr": {"adapter": {"family": "rlrr"}},
    "dra": {"adapter": {"family": "dra"}, "placement": {"matrices": ["o", "proj"]}},
    "adalora": {"adapter": {"family": "adalora", "init_r": 6, "target_r": 2, "delta_t": 2}},
}


@pytest.mark.parametrize("family", family_names())
def test_family_trial_logs_allocation_heatmap_and_rank_over_time(family, tmp_path):
    config = {
        "model": {"pretrained": None},
        "data": {"shots": 2, "test_per_class": 2},
        "train": {"iterations": 24, "batch_size": 16, "lr": 1e-2},
        "eval": {"evals": 2},
        "tracking": {"allocation_every": 4, "experiment": f"e2e-{family}"},
        **SETTINGS.get(family, {"adapter": {"family": family}}),
    }
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    main(["trial", str(path), "--out", str(tmp_path / "runs"), "--tracking-uri", uri, "--quiet"])

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(f"e2e-{family}").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["family"] == family
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "allocation.parquet",
        "allocation_heatmap.png",
        "rank_over_time.png",
        "rank_pattern.json",
    } <= artifacts
    rows = pq.read_table(
        client.download_artifacts(run.info.run_id, "allocation.parquet", str(tmp_path))
    ).to_pylist()
    steps = sorted({r["step"] for r in rows})
    assert steps == [0, 4, 8, 12, 16, 20, 24]
    total = {s: sum(r["rank"] for r in rows if r["step"] == s) for s in steps}
    if family in ("codyra", "adalora"):
        assert total[24] < total[0], total  # the allocation really changes during training
