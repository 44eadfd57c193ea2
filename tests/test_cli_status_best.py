"""``ranksearch status``, ``best`` and ``export SWEEP|RUN`` on sweep folders in the format the sweep writes."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ranksearch.cli import main
from ranksearch.config import load_trial_config
from ranksearch.report.data import load_sweep, trial_params
from ranksearch.report.fixture import write_fake_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_fake_sweep(tmp_path_factory.mktemp("sweeps") / "cli30", 30, seed=6)


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_status_counts_best_and_eta(tmp_path, capsys):
    import time

    folder = write_fake_sweep(tmp_path / "live", 30, seed=6, status="running", started=time.time() - 300)
    main(["status", str(folder), "--json"])
    s = _json(capsys)
    counts = load_sweep(folder, history=False).trials["status"].value_counts().to_dict()
    assert {k: v for k, v in s["counts"].items() if v} == counts and s["total"] == 30
    assert s["finished"] == 30 and s["eta_s"] is None  # all done: nothing left to wait for
    assert s["best"]["trial_id"] and s["best"]["val/hm"] > 0
    main(["status", str(folder)])
    text = capsys.readouterr().out
    assert "completed" in text and s["best"]["trial_id"] in text


def test_status_eta_of_a_running_sweep(tmp_path, capsys):
    import time

    from ranksearch.sweep.results import write_parquet

    folder = write_fake_sweep(tmp_path / "half", 10, seed=8, status="running", started=time.time() - 100)
    rows = load_sweep(folder, history=False).trials.to_dict("records")
    write_parquet(rows[:5], folder / "trials.parquet")  # 5 of 10 finished in ~100 s -> ~100 s to go
    main(["status", str(folder), "--json"])
    s = _json(capsys)
    assert s["finished"] == 5 and s["total"] == 10 and 80 < s["eta_s"] < 130


def test_best_is_a_ready_to_run_trial_yaml(sweep, tmp_path, capsys):
    main(["best", str(sweep), "--json"])
    b = _json(capsys)
    data = load_sweep(sweep, history=False)
    done = data.completed()
    assert b["trial_id"] == done.loc[done["val/hm"].idxmax(), "trial_id"]
    path = tmp_path / "best.yaml"
    main(["best", str(sweep), "--out", str(path)])
    config = load_trial_config(path)  # loads as a trial config: ready for `ranksearch trial best.yaml`
    params = trial_params(sweep, b["trial_id"])
    assert config.adapter.family == params["adapter.family"]
    assert config.train.lr == pytest.approx(params["train.lr"])
    assert path.read_text().startswith(f"# trial {b['trial_id']}")


def test_best_of_a_named_trial_and_errors(sweep, capsys):
    tid = load_sweep(sweep, history=False).trials["trial_id"].iloc[-1]
    main(["best", str(sweep), "--trial", tid, "--json"])
    assert _json(capsys)["trial_id"] == tid
    with pytest.raises(SystemExit) as e:
        main(["best", str(sweep), "--trial", "nope"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "no trial 'nope'" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["status", str(sweep / "trials")])
    assert "not a sweep folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- export
def _logits(model, images, tokens):
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        return model.logit_scale.exp() * img @ txt.t()


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory):
    """A synthetic sweep whose best trial folder holds a really trained adapter (a few steps)."""
    from ranksearch.space import load_space
    from ranksearch.trial import run_trial

    folder = write_fake_sweep(tmp_path_factory.mktemp("sweeps") / "exp6", 6, seed=9)
    data = load_sweep(folder, history=False)
    done = data.completed()
    best = done.loc[done["val/hm"].idxmax(), "trial_id"]
    config = load_space(folder / "space.yaml").trial_config(
        trial_params(folder, best), ["train.iterations=6", "eval.evals=1", "train.lr=0.01"]
    )
    run_trial(config, output_dir=folder / "trials" / best, progress=False)
    return folder, best


def test_export_sweep_best_trial_reproduces_logits(trained_sweep, tmp_path, tiny_inputs, capsys):
    from ranksearch.export import rebuild_adapted_model

    folder, best = trained_sweep
    main(["export", str(folder), "--out", str(tmp_path / "exp"), "--json"])
    manifest = _json(capsys)
    assert best in manifest["exported"] and manifest["source_trial"].endswith(best)
    adapted, _, _ = rebuild_adapted_model(folder / "trials" / best)
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'exp'}").eval()  # open_clip alone
    assert not any("ranksearch" in type(m).__module__ for m in plain.modules())
    images, tokens = tiny_inputs
    assert manifest["merged"], manifest  # both fixture families (lora, adalora) merge
    if manifest["merged"]:
        assert (_logits(adapted, images, tokens) - _logits(plain, images, tokens)).abs().max() <= 1e-4
    # a trial without an adapter (pruned) is refused with one clear message
    pruned = load_sweep(folder, history=False).trials.query("status != 'completed'")["trial_id"]
    if len(pruned):
        with pytest.raises(SystemExit):
            main(["export", str(folder), "--trial", pruned.iloc[0], "--out", str(tmp_path / "x")])
        assert "did not complete" in capsys.readouterr().err


def test_export_by_mlflow_run_id(trained_sweep, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    folder, best = trained_sweep
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("export-test", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp).info.run_id
    client.log_artifacts(run, str(folder / "trials" / best))
    main(["export", run, "--tracking-uri", uri, "--out", str(tmp_path / "exp"), "--json"])
    manifest = _json(capsys)
    assert run in manifest["exported"] and (tmp_path / "exp" / "open_clip_pytorch_model.bin").is_file()
    with pytest.raises(SystemExit):
        main(["export", "0" * 32, "--tracking-uri", uri, "--out", str(tmp_path / "y")])
    assert "not found" in capsys.readouterr().err


def test_status_elapsed_comes_from_the_recorded_times_not_file_times(tmp_path, capsys):
    """A finished sweep's elapsed time is ended - started from sweep.json, whatever the files' mtimes say (a
    copied folder, a later ``report`` rewriting trials.parquet)."""
    import os
    import shutil

    from ranksearch.sweep.folder import Manifest

    folder = write_fake_sweep(tmp_path / "done", 4, seed=3)
    m = Manifest.load(folder)
    m.started, m.ended = 1_000_000.0, 1_000_000.0 + 754.0
    m.save(folder)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # fresh mtimes everywhere
    os.utime(copy / "trials.parquet", (2_000_000_000, 2_000_000_000))
    main(["status", str(copy), "--json"])
    assert _json(capsys)["elapsed_s"] == 754.0
    main(["status", str(copy)])
    assert "12m34s elapsed" in capsys.readouterr().out
