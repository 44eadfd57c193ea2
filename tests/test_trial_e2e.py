"""A real trial on the tiny model, end to end: CLI -> training -> evaluation -> artifacts -> MLflow sqlite."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from ranksearch.cli import main
from ranksearch.config import validate_trial_config
from ranksearch.trial import run_trial

FAST = {
    "model": {"pretrained": None},
    "data": {"shots": 2, "test_per_class": 3},
    "train": {"iterations": 12, "batch_size": 16, "lr": 5e-3},
    "eval": {"evals": 3},
    "tracking": {"log_every": 2, "allocation_every": 4},
}


@pytest.fixture
def trial_file(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(FAST))
    return path


def test_trial_cli_logs_a_complete_mlflow_run(trial_file, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    main(
        [
            "trial",
            str(trial_file),
            "--out",
            str(tmp_path / "runs"),
            "--tracking-uri",
            uri,
            "--quiet",
            "--set",
            "adapter.r=4",
        ]
    )
    printed = capsys.readouterr().out
    assert "test/hm" in printed and "zero-shot" in printed and "trainable parameters: 7,680" in printed

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ranksearch")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["adapter/r"] == "4" and run.data.params["placement/matrices"] == "q,k,v"
    assert run.data.params["model/activation"] == "gelu"  # quick_gelu for OpenAI weights
    assert (
        run.data.tags["family"] == "lora"
        and run.data.tags["seed"] == "1"
        and "version.torch" in run.data.tags
    )
    for key in ("val/hm", "test/base", "test/new", "test/hm", "zs/test/hm", "trainable_params"):
        assert key in run.data.metrics, key
    assert not {"step", "total_steps"} & set(run.data.metrics)  # bookkeeping, not measurements
    assert "None" not in run.data.params.values()
    assert run.data.tags["mlflow.source.name"] == str(trial_file.resolve())
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.metrics["trainable_params"] == 5 * 3 * 4 * 128
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [2, 4, 6, 8, 10, 12]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/hm")] == [4, 8, 12]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "allocation.parquet", "adapter.safetensors", "config.yaml", "metrics.json", "rank_pattern.json",
        "allocation_heatmap.png", "rank_over_time.png",
    } <= artifacts  # fmt: skip
    local = client.download_artifacts(run.info.run_id, "allocation.parquet", str(tmp_path))
    table = pq.read_table(local)
    assert {"step", "tower", "layer", "module", "rank", "trainable_params"} <= set(table.column_names)
    rows = table.to_pylist()
    assert sorted({r["step"] for r in rows}) == [0, 4, 8, 12]
    assert len(rows) == 4 * 15 and all(r["rank"] == 4 for r in rows)


def test_trial_training_changes_the_model_and_is_reproducible(tmp_path):
    config = validate_trial_config({**FAST, "tracking": {"enabled": False}})
    a = run_trial(config, output_dir=tmp_path / "a", progress=False)
    b = run_trial(config, output_dir=tmp_path / "b", progress=False)
    assert a.status == "completed" and a.metrics == b.metrics  # same seed -> same numbers
    history = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    assert len(history) == 3 and history[0]["train/loss"] != history[-1]["train/loss"]
    from safetensors.torch import load_file

    state = load_file(tmp_path / "a" / "adapter.safetensors")
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in state.items())  # B moved away from 0


def test_resume_from_an_eval_checkpoint_gives_the_same_result(tmp_path):
    config = validate_trial_config(
        {**FAST, "train": {**FAST["train"], "augment": True}, "tracking": {"enabled": False}}
    )
    states = []
    full = run_trial(
        config, output_dir=tmp_path / "full", progress=False, on_eval=lambda ev: states.append(ev.state())
    )
    assert [s["step"] for s in states] == [4, 8, 12]
    path = tmp_path / "ckpt.pt"
    torch.save(states[0], path)
    resumed = run_trial(
        config, output_dir=tmp_path / "resumed", progress=False, resume=torch.load(path, weights_only=True)
    )
    assert resumed.metrics == pytest.approx(full.metrics, abs=1e-6)


def test_divergence_is_reported_as_a_failed_trial(tmp_path):
    config = validate_trial_config(
        {**FAST, "train": {**FAST["train"], "logit_scale": 1e39}, "tracking": {"enabled": False}}
    )
    result = run_trial(config, output_dir=tmp_path, progress=False)
    assert result.status == "failed" and "non-finite loss" in result.error


def test_bad_placement_is_a_clear_error(trial_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(
            [
                "trial",
                str(trial_file),
                "--out",
                str(tmp_path),
                "--no-track",
                "--quiet",
                "--set",
                "placement.layers=[7]",
            ]
        )
    assert info.value.code == 2  # the user's input to fix, like any config error
    err = capsys.readouterr().err
    assert "placement" in err and "out of range" in err and "Traceback" not in err


def test_continual_trial_fills_the_accuracy_matrix_and_merges_at_boundaries(tmp_path):
    from ranksearch.continual import continual_metrics

    config = validate_trial_config(
        {
            **FAST,
            "data": {
                "protocol": "continual",
                "sequence": ["clutter", "lowcontrast", "bright"],
                "shots": 2,
                "test_per_class": 2,
            },
            "adapter": {"family": "codyra", "r": 4},
            "train": {"iterations": 6, "batch_size": 16, "lr": 1e-2},
            "tracking": {"enabled": False},
        }
    )
    result = run_trial(config, output_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "accuracy_matrix.json").read_text())
    assert saved["tasks"] == ["clutter", "lowcontrast", "bright"] and len(saved["A"]) == 3
    expected = continual_metrics(saved["A"])
    assert result.metrics["cl/transfer"] == pytest.approx(expected["transfer"])
    assert result.metrics["cl/last"] == pytest.approx(expected["last"])
    assert len(saved["folded_ranks"]) == 2  # merged at the two task boundaries
    assert [h["task"] for h in result.history] == [0, 1, 2]


def test_continual_needs_a_sequence():
    from ranksearch.errors import ConfigError

    with pytest.raises(ConfigError, match="data"):
        validate_trial_config({"data": {"protocol": "continual"}})


def test_trial_seeds_report_mean_and_std(trial_file, tmp_path, capsys):
    main(
        ["trial", str(trial_file), "--out", str(tmp_path / "runs"), "--no-track", "--json", "--seeds", "1,2"]
    )
    metrics = json.loads(capsys.readouterr().out)
    (folder,) = (tmp_path / "runs").iterdir()
    per_seed = [json.loads((folder / f"seed-{s}" / "metrics.json").read_text())["final"] for s in (1, 2)]
    assert per_seed[0]["train/loss"] != per_seed[1]["train/loss"]  # the seed really changes the run
    assert metrics["test/hm"] == pytest.approx((per_seed[0]["test/hm"] + per_seed[1]["test/hm"]) / 2)
    assert metrics["test/hm_std"] == pytest.approx(
        abs(per_seed[0]["test/hm"] - per_seed[1]["test/hm"]) / 2**0.5
    )


def test_trial_takes_a_search_space_defaults_or_params_in_debug_mode(tmp_path, capsys):
    """`ranksearch trial SPACE --debug`: each parameter's default (or --params), tiny budget, built-in checkpoint."""
    common = ["--out", str(tmp_path), "--no-track", "--json", "--debug"]
    main(["trial", "search_spaces/quickstart.yaml", *common])
    defaults = json.loads(capsys.readouterr().out)
    assert defaults["total_steps"] == 20 and defaults["trainable_params"] == 5 * 3 * 2 * 128  # r=2 on q,k,v
    main(["trial", "search_spaces/quickstart.yaml", *common, "--params", '{"adapter.r": 8}'])
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 5 * 3 * 8 * 128
