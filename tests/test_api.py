"""The Python API (``import ranksearch``): light to import, configs in every form, the CLI's behaviour, and the
examples under examples/ executed as users run them (the script in a subprocess, the notebook in a kernel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import ranksearch
from ranksearch.errors import ConfigError
from ranksearch.report.fixture import write_fake_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"pretrained": None},
    "data": {"shots": 2, "test_per_class": 2},
    "train": {"iterations": 4, "batch_size": 16},
    "eval": {"evals": 1, "zero_shot": False},
}


def test_import_ranksearch_stays_light():
    code = (
        "import sys, ranksearch; fns = [ranksearch.trial, ranksearch.sweep, ranksearch.load_sweep, ranksearch.export];"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'open_clip', 'ray', 'mlflow', 'pandas',"
        " 'optuna', 'plotly', 'numpy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
    assert set(ranksearch.__all__) <= set(dir(ranksearch))
    from ranksearch import api

    for name in ("trial", "sweep", "load_sweep", "export", "load_config"):
        doc = getattr(api, name).__doc__
        assert doc and "Args" in doc or name == "load_sweep", name  # documented like the rest of the API
    with pytest.raises(AttributeError):
        ranksearch.no_such_function  # noqa: B018
    # ranksearch.trial / .sweep / .export are also module names: once imported, the modules call the API
    import importlib

    for module in ("ranksearch.export", "ranksearch.sweep.tuner", "ranksearch.trial"):
        importlib.import_module(module)
    assert callable(ranksearch.trial) and callable(ranksearch.sweep) and callable(ranksearch.export)
    assert ranksearch.sweep.tuner.run_sweep and ranksearch.trial.run_trial  # ... and stay modules


def test_configs_as_dicts_yaml_paths_and_objects_give_the_same_trial(tmp_path):
    from ranksearch.space import load_space

    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(TINY))
    from_dict = ranksearch.load_config(TINY, overrides=["adapter.r=4"])
    from_yaml = ranksearch.load_config(path, overrides=["adapter.r=4"])
    from_object = ranksearch.load_config(ranksearch.load_config(TINY), overrides=["adapter.r=4"])
    assert from_dict == from_yaml == from_object and from_dict.adapter.r == 4
    # a search space: each parameter's default, or the given params; as a path, a dict or a SearchSpace
    space_file = REPO / "search_spaces" / "quickstart.yaml"
    space = load_space(space_file)
    as_dict = yaml.safe_load(space_file.read_text())
    params = {"adapter.r": 8, "train.lr": 0.01}
    configs = [ranksearch.load_config(c, params=params) for c in (space_file, as_dict, space)]
    assert configs[0] == configs[1] == configs[2] and configs[0].adapter.r == 8
    assert configs[0] == space.trial_config(params)
    # errors name the field, as the CLI's do
    with pytest.raises(ConfigError, match="train.lr"):
        ranksearch.load_config({**TINY, "train": {"lr": -1}})
    with pytest.raises(ConfigError, match="params"):
        ranksearch.load_config(TINY, params={"adapter.r": 4})
    with pytest.raises(ConfigError, match="expected a dict"):
        ranksearch.load_config(42)


def test_trial_behaves_like_the_cli(tmp_path, capsys):
    from ranksearch.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = ranksearch.trial(TINY, out_dir=tmp_path / "api", tracking_uri=uri, progress=False)
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(TINY))
    main(["trial", str(path), "--out", str(tmp_path / "cli"), "--tracking-uri", uri, "--json"])
    cli_metrics = json.loads(capsys.readouterr().out)
    assert outcome.metrics == pytest.approx(cli_metrics)  # same seed, same code path: the same numbers
    assert (outcome.folder / "adapter.safetensors").is_file() and outcome.folder.parent == tmp_path / "api"
    ((run_uri, run_id),) = outcome.runs
    assert json.loads((outcome.folder / "mlflow_run.json").read_text()) == {
        "tracking_uri": uri,
        "run_id": run_id,
    }
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["val/hm"] == pytest.approx(
        outcome.metrics["val/hm"]
    )
    # never into an existing folder; seeds run once each, mean ± std
    seeded = ranksearch.trial(TINY, seeds=[1, 2], out_dir=tmp_path / "api", track=False, progress=False)
    assert seeded.folder != outcome.folder and len(seeded.per_seed) == 2 and "val/hm_std" in seeded.metrics
    with pytest.raises(ConfigError, match="seeds"):
        ranksearch.trial(TINY, seeds=[1, 1], out_dir=tmp_path / "api", track=False)


def test_load_sweep_gives_trials_study_best_config_and_report(tmp_path, capsys):
    from ranksearch.cli import main
    from ranksearch.report.data import load_sweep as load_tables
    from ranksearch.report.data import read_trials

    folder = write_fake_sweep(tmp_path / "s", 12, seed=3)
    sweep = ranksearch.load_sweep(folder)
    assert sweep.name == "s" and sweep.status == "finished" and sweep.objectives[0] == ("val/hm", "max")
    assert list(sweep.trials["trial_id"]) == list(read_trials(folder)["trial_id"])
    assert set(sweep.history["trial_id"]) <= set(sweep.trials["trial_id"]) and len(sweep.history)
    assert list(sweep.leaderboard()["trial_id"]) == list(load_tables(folder).ranked()["trial_id"])
    # the best trial is the one `ranksearch best` picks, and its config is the YAML that command prints
    main(["best", str(folder), "--json"])
    best = json.loads(capsys.readouterr().out)
    assert sweep.best["trial_id"] == best["trial_id"]
    assert sweep.best_config.model_dump(mode="json") == best["config"]
    assert sweep.params() == best["params"]
    study = sweep.study
    assert study.metric_names == ["val/hm", "trainable_params"] and len(study.trials) > 0
    assert sweep.status_summary()["finished"] == len(sweep.trials)
    page = sweep.report(tmp_path / "r.html")
    assert page.is_file() and "Optimisation history" in page.read_text()
    assert "<b>sweep s</b>" in sweep._repr_html_() and best["trial_id"] in sweep._repr_html_()
    # by name under a storage folder, like the CLI
    assert ranksearch.load_sweep("s", storage=tmp_path).folder == folder


@pytest.mark.ray
def test_sweep_from_a_dict_space_with_overrides(tmp_path):
    space = {
        "name": "from-dict",
        "base": {"model": {"pretrained": None}, "eval": {"evals": 2}},
        "params": {
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "adapter.r": [1, 4],
        },
        "objective": {"metric": "val/hm", "mode": "max"},
        "sampler": {"type": "random", "seed": 0},
        "early_stopping": {"type": "none"},
        "trials": 3,
        "concurrency": 2,
        "resources": {"cpu": 1, "gpu": 0},
    }
    sweep = ranksearch.sweep(
        space, storage=tmp_path, overrides=["train.batch_size=8"], runner="synthetic",
        runner_options={"seconds_per_eval": 0.05}, ray_init={"num_cpus": 2, "_temp_dir": tempfile.mkdtemp(dir="/tmp")},
    )  # fmt: skip
    assert isinstance(sweep, ranksearch.Sweep) and sweep.name == "from-dict" and sweep.status == "finished"
    assert len(sweep.trials) == 3 and set(sweep.trials["status"]) == {"completed"}
    assert sweep.best_config.train.batch_size == 8  # the override reached every trial and the record
    recorded = yaml.safe_load((sweep.folder / "space.yaml").read_text())
    assert recorded["base"]["train"]["batch_size"] == 8


# ------------------------------------------------------------------------------------------------ examples
@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """examples/api_quickstart.py --small, run as a user runs it (its own process, its own Ray)."""
    cwd = tmp_path_factory.mktemp("example")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "RAY_TMPDIR": tempfile.mkdtemp(prefix="rx", dir="/tmp")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "api_quickstart.py"), "--small"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return cwd, proc


@pytest.mark.ray
def test_example_script_runs_every_step(example_run):
    cwd, proc = example_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for step in ("trial: val/hm", "Sweep('api-quickstart', finished, 2 trials", "best: lora", "report: ",
                 "export: open_clip.create_model", "loaded with open_clip alone"):  # fmt: skip
        assert step in out, out
    assert (cwd / "ranksearch-runs" / "sweeps" / "api-quickstart" / "report.html").is_file()
    assert "models:/m-" in out  # the export is an MLflow model of the best trial's run
    assert "Creating initial MLflow database tables" not in proc.stderr  # start-up chatter stays quiet


@pytest.mark.ray
@pytest.mark.slow  # a Jupyter kernel start-up on top of the example sweep
def test_example_notebook_runs_on_that_sweep(example_run):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cwd, proc = example_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(REPO / "examples" / "explore_sweep.ipynb", as_version=4)
    saved = {k: os.environ.get(k) for k in ("RANKSEARCH_EXAMPLE_SMALL", "PYTHONPATH", "HF_HUB_OFFLINE")}
    os.environ.update(RANKSEARCH_EXAMPLE_SMALL="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")  # the kernel's
    try:
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text") or o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "Sweep('api-quickstart', finished" in text and "['val/hm'] 2 trials" in text
    assert "report.html" in text and "'test/hm'" in text
    assert any("text/html" in o.get("data", {}) for o in outputs)  # the Sweep and the plotly figure render
