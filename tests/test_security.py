"""Security defaults (issue 7, item 6), each asserted here or in a named test.

* servers the project starts bind 127.0.0.1 unless the user asks: the MLflow UI (``ranksearch ui``) and a local
  Ray's dashboard (``run_sweep`` starts it off, and on loopback if the user turns it on);
* cluster recipes keep Ray token authentication on and never publish the dashboard or Jobs API: checked line by
  line in ``tests/test_cluster_recipes.py`` (``test_recipe_never_disables_auth_or_publishes_ports``,
  ``test_launcher_keeps_token_auth_and_loopback_dashboard``, ``test_ray_pods_use_token_auth_and_stay_internal``);
  a cross-check over every recipe file is here;
* checkpoints load with ``torch.load(weights_only=True)`` or safetensors; YAML only with the safe loader; no
  pickle; no config value is imported as code (source scan of the package);
* sweep, trial-folder and run names are sanitised: no name can address a path outside the sweep folder.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_report import record

from ranksearch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ranksearch"
CHECKS: list[str] = []


def _sources() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


# ---------------------------------------------------------------------------------------------- bind addresses
def test_mlflow_ui_binds_loopback_by_default():
    from ranksearch.report import commands, ui

    assert inspect.signature(commands.ui).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(ui.start_server).parameters["host"].default == "127.0.0.1"
    assert ui.is_loopback("127.0.0.1") and ui.is_loopback("localhost") and not ui.is_loopback("0.0.0.0")
    CHECKS.append("mlflow-ui-loopback")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("user_init", [{}, {"include_dashboard": True}])
def test_local_ray_dashboard_is_off_or_on_loopback(tmp_path, monkeypatch, user_init):
    """``run_sweep`` starts a local Ray without a dashboard; if the user turns it on, on 127.0.0.1 only."""
    import ray
    import yaml

    from ranksearch.sweep.tuner import run_sweep

    seen: dict = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"adapter.r": [1, 2]}, "objective": {"metric": "val/hm"}}))
    with pytest.raises(_Stop):
        run_sweep(
            space,
            name="bind",
            storage=tmp_path / "runs",
            runner="synthetic",
            live=False,
            ray_init=user_init,
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        )
    assert seen["address"] == "local"
    assert seen["include_dashboard"] is user_init.get("include_dashboard", False)
    assert seen["dashboard_host"] == "127.0.0.1"
    CHECKS.append("ray-dashboard-loopback")


def test_recipes_keep_auth_and_private_addresses():
    """Cross-check over every file of cluster/ (the detailed checks live in test_cluster_recipes.py)."""
    bad = [
        re.compile(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled", re.I),
        re.compile(r"--dashboard-host[= ]+[\"']?0\.0\.0\.0"),
        re.compile(r"dashboard_host\s*[=:]\s*[\"']?0\.0\.0\.0"),
        re.compile(r"--(ray-client-server|dashboard)-port[= ]+\S+.*--host[= ]+0\.0\.0\.0"),
    ]
    files = [p for p in (ROOT / "cluster").rglob("*") if p.is_file() and p.suffix != ".md"]
    assert files
    for path in files:
        text = path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        for pattern in bad:
            hits = [line for line in lines if pattern.search(line)]
            assert not hits, (path, hits)
    assert any("RAY_AUTH_MODE" in p.read_text(errors="replace") for p in files)
    CHECKS.append("recipes-auth")


# ---------------------------------------------------------------------------------------------- safe loading
# calls that unpickle a file: never in the package
UNPICKLERS = {
    "pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "ray.cloudpickle.load",
    "ray.cloudpickle.loads", "marshal.loads", "pd.read_pickle", "pandas.read_pickle", "joblib.load",
    "dill.load", "dill.loads", "shelve.open",
}  # fmt: skip
# calls that make Ray unpickle a sweep folder's files (tune/tuner.pkl, the experiment and searcher state):
# allowed only in a function that verified the folder's signatures first (ranksearch.sweep.signing)
RAY_UNPICKLERS = {
    "tune.Tuner.restore", "Tuner.restore", "ray.tune.Tuner.restore", "tune.ExperimentAnalysis", "ExperimentAnalysis",
    "Trial.from_directory", "tune.ResultGrid", "Tuner.can_restore",
}  # fmt: skip
VERIFIERS = {"_check_state_signed", "verify_tune_state"}


def _unpickling_offenders(sources: list[tuple[Path, ast.AST]]) -> list[str]:
    offenders = []
    for path, tree in sources:
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    offenders.append(f"{path}:{node.lineno} torch.load without weights_only=True")
            allow = kw.get("allow_pickle")
            if name in ("np.load", "numpy.load") and isinstance(allow, ast.Constant) and allow.value is True:
                offenders.append(f"{path}:{node.lineno} {name}(allow_pickle=True)")
            if name in UNPICKLERS:
                # an in-memory round trip of our own object (can Ray carry this exception?) reads no file
                arg = node.args[0] if node.args else None
                if not (isinstance(arg, ast.Call) and _dotted(arg.func).endswith("dumps")):
                    offenders.append(f"{path}:{node.lineno} {name}")
            if name in RAY_UNPICKLERS:
                owner = [f for f in functions if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
                verified = owner and any(
                    isinstance(c, ast.Call)
                    and _dotted(c.func).split(".")[-1] in VERIFIERS
                    and c.lineno < node.lineno
                    for c in ast.walk(owner[-1])
                )
                if not verified:
                    offenders.append(
                        f"{path}:{node.lineno} {name} without verifying the folder's signatures first"
                    )
    return offenders


def test_checkpoints_load_weights_only_and_nothing_unpickles():
    """No pickle is read from disk by the package, and Ray restores only folders whose pickles were verified."""
    assert not _unpickling_offenders(_sources())
    # the check itself catches each form (a Tuner.restore without verification is what issue 21 found)
    bad = ast.parse(
        "def resume(p):\n    return tune.Tuner.restore(p, f)\n"
        "def load(p):\n    return pickle.load(open(p, 'rb'))\n"
        "def ok(p):\n    _check_state_signed(p)\n    return tune.Tuner.restore(p, f)\n"
        "def late(p):\n    t = tune.Tuner.restore(p, f)\n    verify_tune_state(p)\n"
    )
    found = _unpickling_offenders([(Path("x.py"), bad)])
    assert [f.split()[0] for f in found] == ["x.py:2", "x.py:4", "x.py:9"], found
    CHECKS.append("weights-only")


def test_yaml_is_only_loaded_safely():
    offenders = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                kw = {k.arg: _dotted(k.value) for k in node.keywords}
                if name in (
                    "yaml.unsafe_load",
                    "yaml.full_load",
                    "yaml.unsafe_load_all",
                    "yaml.full_load_all",
                ):
                    offenders.append(f"{path}:{node.lineno} {name}")
                if name in ("yaml.load", "yaml.load_all", "yaml.parse") and kw.get("Loader") not in (
                    "yaml.SafeLoader",
                    "yaml.CSafeLoader",
                ):
                    offenders.append(f"{path}:{node.lineno} {name} without SafeLoader")
            if isinstance(node, ast.Attribute) and _dotted(node) in (
                "yaml.Loader",
                "yaml.UnsafeLoader",
                "yaml.FullLoader",
            ):
                offenders.append(f"{path}:{node.lineno} {_dotted(node)}")
    assert not offenders, offenders
    CHECKS.append("yaml-safe")


def test_no_config_value_is_imported_as_code():
    """No dynamic import, eval or exec in the package: runners, families, samplers are registries in code."""
    offenders = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name in (
                    "importlib.import_module",
                    "__import__",
                    "pydoc.locate",
                    "eval",
                    "exec",
                    "compile",
                ):
                    offenders.append(f"{path}:{node.lineno} {name}")
    assert not offenders, offenders
    from ranksearch.sweep.tuner import run_sweep

    with pytest.raises(ConfigError, match="unknown runner"):
        run_sweep("unused.yaml", runner="os.system")
    CHECKS.append("no-dynamic-import")


# ----------------------------------------------------------------------------------------------- names
hostile = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "..",
            "../..",
            "../../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            ".",
            ".hidden",
            "a\x00b",
            "~root",
            "C:\\Windows",
            "run\nname",
            "%2e%2e%2f",
            "\u202e",
            " ",
            "",
        ]
    ),
)


@settings(max_examples=200, deadline=None)
@given(hostile)
def test_hostile_names_never_escape_the_sweep_folder(name):
    from ranksearch.sweep.folder import safe_name, sweep_folder
    from ranksearch.sweep.tuner import trial_dirname

    storage = Path("/tmp/rs-storage")
    try:
        folder = sweep_folder(name, storage)
    except ConfigError as e:
        assert e.problems[0][0] == "--name"
    else:
        assert folder.parent == storage.resolve() and folder.name == name
    clean = safe_name(name)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", clean), clean
    assert (storage / clean).resolve().parent == storage.resolve()

    class Trial:
        trial_id = name

    assert trial_dirname(Trial()) == clean


def test_zz_record_the_figures():
    record(
        "security_defaults",
        count=f"{len(set(CHECKS)) + 1} checks",
        checks=sorted(set(CHECKS)) + ["hostile-names"],
    )
