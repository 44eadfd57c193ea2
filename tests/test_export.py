"""Export: the merged checkpoint loads with open_clip alone and reproduces the adapted model's logits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ranksearch.config import validate_trial_config
from ranksearch.errors import RanksearchError
from ranksearch.export import export_trial, load_export, rebuild_adapted_model
from ranksearch.trial import run_trial


def logits(model, images, tokens):
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        return model.logit_scale.exp() * img @ txt.t()


@pytest.mark.parametrize("family", ["lora", "dra"])
def test_exported_model_reproduces_adapted_logits(tmp_path, tiny_inputs, family):
    config = validate_trial_config(
        {
            "model": {"pretrained": None},
            "adapter": {"family": family},
            "placement": {"matrices": ["q", "k", "v"] if family == "lora" else ["o", "proj"]},
            "data": {"shots": 2, "test_per_class": 2},
            "train": {"iterations": 6, "batch_size": 16, "lr": 1e-2},
            "eval": {"evals": 1, "zero_shot": False},
            "tracking": {"enabled": False},
        }
    )
    run_trial(config, output_dir=tmp_path / "trial", progress=False)
    adapted, _, _ = rebuild_adapted_model(tmp_path / "trial")
    manifest = export_trial(tmp_path / "trial", tmp_path / "export")
    plain = open_clip.create_model(
        f"local-dir:{tmp_path / 'export'}"
    )  # open_clip alone, no ranksearch modules
    plain.eval()
    assert not any("ranksearch" in type(m).__module__ for m in plain.modules())
    images, tokens = tiny_inputs
    want, got = logits(adapted, images, tokens), logits(plain, images, tokens)
    rank_pattern = json.loads((tmp_path / "export" / "rank_pattern.json").read_text())
    assert rank_pattern and (tmp_path / "export" / "adapter.safetensors").is_file()
    if family == "lora":
        assert manifest["merged"] is True
        assert (want - got).abs().max() <= 1e-4
    else:  # not mergeable: base model + adapter, and the manifest says how it really loads
        assert manifest["merged"] is False and "not mergeable" in manifest["note"]
        assert manifest["load_with"].startswith("ranksearch.export.load_export(")
        assert (want - got).abs().max() > 1e-3  # open_clip alone loads the frozen base: not the trial's model
    loaded = load_export(tmp_path / "export")
    assert (want - logits(loaded, images, tokens)).abs().max() <= 1e-4


def test_export_never_overwrites(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(RanksearchError, match="not empty"):
        export_trial(tmp_path, tmp_path / "out")


# --------------------------------------------------------------------------------------- MLflow models
def _trained_sweep(folder):
    """A synthetic sweep with MLflow child runs whose best trial holds a really trained adapter."""
    from ranksearch.report.data import load_sweep, trial_params
    from ranksearch.report.fixture import write_fake_sweep
    from ranksearch.space import load_space

    folder = write_fake_sweep(folder, 6, seed=9, mlflow=True)
    done = load_sweep(folder, history=False).completed()
    best = done.loc[done["val/hm"].idxmax(), "trial_id"]
    config = load_space(folder / "space.yaml").trial_config(
        trial_params(folder, best), ["train.iterations=6", "eval.evals=1", "train.lr=0.01"]
    )
    run_trial(config, output_dir=folder / "trials" / best, progress=False)
    return folder, best


def test_best_register_puts_the_champion_in_the_registry_and_mlflow_loads_it(tmp_path, capsys, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from ranksearch.cli import main
    from ranksearch.models.clip import register_tiny_configs
    from ranksearch.report.data import open_sweep
    from ranksearch.report.detail import run_ids

    folder, best = _trained_sweep(tmp_path / "reg")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    main(["best", str(folder), "--register", "rs-champion", "--json"])
    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging the model left the process's settings alone
    answer = json.loads(capsys.readouterr().out)
    assert answer["trial_id"] == best
    reg = answer["registered"]["registered"]
    assert reg == {
        "name": "rs-champion",
        "version": 1,
        "alias": "champion",
        "uri": "models:/rs-champion@champion",
    }
    data = open_sweep(folder)
    uri, run_id = data.manifest.tracking_uri, run_ids(data)[0][best]
    client = MlflowClient(tracking_uri=uri)

    # the LoggedModel: linked to the trial's run, with the validation metrics it was selected on and their dataset
    model = client.get_logged_model(answer["registered"]["model_id"])
    assert model.source_run_id == run_id and str(model.status) == "READY"
    val = {m.key: m for m in model.metrics if m.key.startswith("val/")}
    run_metrics = client.get_run(run_id).data.metrics
    assert val["val/hm"].value == pytest.approx(run_metrics["val/hm"])
    assert val["val/hm"].dataset_name.endswith("base2new val") and val["val/hm"].dataset_digest
    run = client.get_run(run_id)
    assert model.model_id in {o.model_id for o in run.outputs.model_outputs}
    assert any(d.dataset.name == val["val/hm"].dataset_name for d in run.inputs.dataset_inputs)
    version = client.get_model_version_by_alias("rs-champion", "champion")
    assert int(version.version) == 1 and version.tags["ranksearch.trial_id"] == best

    # loaded back by MLflow's own API and run: the same logits as the adapted model ranksearch trained
    register_tiny_configs()
    texts = ["a red star", "a small blue ring in the top left", "a heart"]
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    adapted, _, _ = rebuild_adapted_model(folder / "trials" / best)
    want = logits(adapted, images, open_clip.get_tokenizer("rs-tiny-clip")(texts))
    from ranksearch.tracking.mlflow_model import tracking

    with tracking(uri):  # set and restored exactly: a leaked $MLFLOW_TRACKING_URI would redirect later sweeps
        pyfunc = mlflow.pyfunc.load_model("models:/rs-champion@champion")
        got = pyfunc.predict({"images": images.numpy(), "texts": texts})["logits_per_image"]
        assert (want - torch.as_tensor(got)).abs().max() <= 1e-4
        local = Path(
            mlflow.artifacts.download_artifacts("models:/rs-champion@champion", dst_path=str(tmp_path / "dl"))
        )
    plain = open_clip.create_model(f"local-dir:{next(local.rglob('open_clip_config.json')).parent}").eval()
    assert not any("ranksearch" in type(m).__module__ for m in plain.modules())
    assert (want - logits(plain, images, open_clip.get_tokenizer("rs-tiny-clip")(texts))).abs().max() <= 1e-4

    # registering again: a new version of the same logged model, the alias moves to it
    main(["best", str(folder), "--register", "rs-champion", "--alias", "production", "--json"])
    again = json.loads(capsys.readouterr().out)["registered"]
    assert again["model_id"] == model.model_id and again["registered"]["version"] == 2
    assert int(client.get_model_version_by_alias("rs-champion", "production").version) == 2


def test_export_of_a_debug_trial_logs_a_model_of_its_run(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from ranksearch.cli import main

    trial_yaml = tmp_path / "t.yaml"
    trial_yaml.write_text(
        "model: {pretrained: null}\ndata: {shots: 2, test_per_class: 2}\n"
        "train: {iterations: 4, batch_size: 16}\neval: {evals: 1, zero_shot: false}\n"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    main(["trial", str(trial_yaml), "--out", str(tmp_path / "runs"), "--tracking-uri", uri, "--json"])
    capsys.readouterr()
    (folder,) = (tmp_path / "runs").iterdir()
    recorded = json.loads((folder / "mlflow_run.json").read_text())
    main(["export", str(folder), "--out", str(tmp_path / "exp"), "--json"])
    logged = json.loads(capsys.readouterr().out)["mlflow"]
    assert logged["run_id"] == recorded["run_id"] and "registered" not in logged
    model = MlflowClient(tracking_uri=uri).get_logged_model(logged["model_id"])
    assert model.source_run_id == recorded["run_id"]
    assert {m.key for m in model.metrics} >= {"val/hm", "test/hm"}
    main(["export", str(folder), "--out", str(tmp_path / "exp2"), "--no-mlflow", "--json"])
    assert "mlflow" not in json.loads(capsys.readouterr().out)


def test_export_keeps_quick_gelu(tmp_path, tiny_inputs):
    """A model that runs QuickGELU (OpenAI weights; here a local-dir folder that says so) exports a folder that
    rebuilds QuickGELU: the plain open_clip config of the name would load it with nn.GELU."""
    from open_clip.transformer import QuickGELU

    from ranksearch.models.clip import CONFIG_DIR, build_model

    folder = tmp_path / "quick"
    folder.mkdir()
    cfg = json.loads((CONFIG_DIR / "rs-tiny-clip.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**cfg, "quick_gelu": True}}))
    torch.manual_seed(0)
    torch.save(build_model("rs-tiny-clip", None)[0].state_dict(), folder / "open_clip_pytorch_model.bin")
    config = validate_trial_config(
        {
            "model": {"pretrained": f"local-dir:{folder}"},
            "data": {"shots": 1, "test_per_class": 1},
            "train": {"iterations": 2, "batch_size": 8, "lr": 1e-2},
            "eval": {"evals": 1, "zero_shot": False},
            "tracking": {"enabled": False},
        }
    )
    run_trial(config, output_dir=tmp_path / "trial", progress=False)
    adapted, _, _ = rebuild_adapted_model(tmp_path / "trial")
    export_trial(tmp_path / "trial", tmp_path / "export")
    exported = json.loads((tmp_path / "export" / "open_clip_config.json").read_text())
    assert exported["model_cfg"]["quick_gelu"] is True
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'export'}").eval()
    assert any(isinstance(m, QuickGELU) for m in plain.modules())
    images, tokens = tiny_inputs
    assert (logits(adapted, images, tokens) - logits(plain, images, tokens)).abs().max() <= 1e-4
