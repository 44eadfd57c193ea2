"""Fast checks behind the cluster features (default tier; the real cluster and PostgreSQL runs are in
test_cluster_real.py / test_postgres.py): credentials never shown, ``ranksearch submit``'s input handling, and the
driver-side messages a cluster run produces."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ranksearch.errors import ConfigError
from ranksearch.submit import dashboard_address, submit_sweep, sweep_command
from ranksearch.tracking.credentials import MASK, has_password, password_of, redact, redact_text

ROOT = Path(__file__).resolve().parents[1]

passwords = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=4, max_size=30)
users = st.text(st.characters(whitelist_categories=("Ll", "Nd")), min_size=1, max_size=12)
schemes = st.sampled_from(["postgresql", "postgresql+psycopg2", "mysql+pymysql", "https", "http"])


@settings(max_examples=300, deadline=None)
@given(scheme=schemes, user=users, password=passwords, query=st.booleans())
def test_a_password_in_a_url_is_found_and_never_survives_redaction(scheme, user, password, query):
    tail = "@db.internal:5432/ranksearch" + ("?sslmode=require&application_name=rs" if query else "")
    url = f"{scheme}://{user}:{quote(password, safe='')}{tail}"
    assert has_password(url)
    assert password_of(url) == password
    assert redact(url) == f"{scheme}://{user}:{MASK}{tail}"
    message = f"could not connect to {url}: connection refused"
    assert redact_text(message) == f"could not connect to {scheme}://{user}:{MASK}{tail}: connection refused"
    assert password not in redact_text(f"password {password} rejected", [password])


@pytest.mark.parametrize(
    "url",
    ["postgresql://ranksearch@db/ranksearch", "http://127.0.0.1:5000", "sqlite:////tmp/x/mlflow.db",
     "/shared/ranksearch", "postgresql://db/ranksearch?sslmode=require"],
)  # fmt: skip
def test_urls_without_a_password_are_left_alone(url):
    assert not has_password(url) and redact(url) == url and password_of(url) is None


def test_a_secret_query_parameter_is_masked():
    url = "postgresql://db/ranksearch?sslmode=require&password=hunter2"
    assert has_password(url) and "hunter2" not in redact(url) and "sslmode=require" in redact(url)


# -------------------------------------------------------------------------------------------- submit
@pytest.mark.parametrize(
    ("given_", "expected"),
    [("http://127.0.0.1:8265/", "http://127.0.0.1:8265"), ("127.0.0.1:8265", "http://127.0.0.1:8265"),
     ("https://ray.example:443", "https://ray.example:443")],
)  # fmt: skip
def test_dashboard_address(given_, expected):
    assert dashboard_address(given_) == expected


@pytest.mark.parametrize("bad", ["ray://head:10001", "auto", "ftp://head:8265"])
def test_dashboard_address_refuses_other_addresses(bad):
    with pytest.raises(ConfigError) as e:
        dashboard_address(bad)
    assert "--address" in str(e.value)


def test_dashboard_address_from_the_environment(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not the Jobs API
    with pytest.raises(ConfigError):
        dashboard_address(None)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://10.0.0.1:8265")
    assert dashboard_address(None) == "http://10.0.0.1:8265"


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": {"adapter.r": [1, 2]}, "objective": {"metric": "val/hm"}}))
    return path


def test_submit_reports_every_problem_before_contacting_the_cluster(tmp_path):
    with pytest.raises(ConfigError) as e:
        submit_sweep(
            tmp_path / "missing.yaml", address="http://127.0.0.1:9", runs_dir="relative/runs",
            tracking_uri="postgresql://u:hunter2@db/mlflow", storage="postgresql://u:hunter2@db/optuna",
        )  # fmt: skip
    text = str(e.value)
    for field in ("--runs-dir", "--tracking-uri", "--storage", "SPACE"):
        assert field in text, text
    assert "hunter2" not in text


def test_submit_to_nothing_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        submit_sweep(_space(tmp_path), address="http://127.0.0.1:9", runs_dir="/shared/ranksearch")
    assert "nothing answers at http://127.0.0.1:9" in str(e.value)


def test_submit_cli_bad_input_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ranksearch", "submit", str(_space(tmp_path)), "--runs-dir", "runs",
         "--address", "ray://head:10001"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "--address" in proc.stderr


def test_the_job_runs_the_sweep_command_on_the_head():
    cmd = sweep_command("dra.yaml", name="dra", runs_dir="/shared/rs", trials=50, resume=True,
                        tracking_uri="http://mlflow:5000", overrides=["model.name=ViT-B-16"])  # fmt: skip
    assert cmd[:4] == ["ranksearch", "sweep", "dra.yaml", "--address"] and cmd[4] == "auto"
    for pair in (["--runs-dir", "/shared/rs"], ["--trials", "50"], ["--set", "model.name=ViT-B-16"]):
        assert any(cmd[i : i + 2] == pair for i in range(len(cmd)))
    assert "--resume" in cmd and "--no-live" in cmd


# ------------------------------------------------------------------------------------ driver messages
def test_a_tune_traceback_becomes_one_line(capsys):
    from ranksearch.quiet import quiet_libraries

    logger = logging.getLogger("ray.tune.execution.tune_controller")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        with quiet_libraries():
            try:
                raise RuntimeError("The actor is unavailable: RpcError: Socket closed\nmore detail")
            except RuntimeError:
                logger.exception("Trial task failed for trial %s", "t1")
        err = capsys.readouterr().err
        assert err.strip() == (
            "Trial task failed for trial t1: RuntimeError: The actor is unavailable: RpcError: Socket closed"
        )
        try:  # outside the block (and with --debug) Tune's own output is untouched
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("Trial task failed for trial %s", "t2")
        assert "Traceback" in capsys.readouterr().err
    finally:
        logger.removeHandler(handler)


def test_the_last_trial_of_a_grid_is_told_without_a_warning(caplog, tmp_path):
    """GridSampler calls study.stop() when its grid is used up, which raises outside study.optimize; Optuna has
    stored the result by then, so the searcher must not warn that Optuna refused it."""
    import optuna

    from ranksearch.space import load_space
    from ranksearch.space.optuna_space import DefineByRun, build_sampler
    from ranksearch.sweep.searcher import PruneAwareOptunaSearch

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": {"adapter.r": [1, 2]}, "objective": {"metric": "val/hm"},
                                    "sampler": {"type": "grid", "seed": 0}}))  # fmt: skip
    space = load_space(path)
    searcher = PruneAwareOptunaSearch(space=DefineByRun(space), metric="val/hm", mode="max",
                                      sampler=build_sampler(space))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="ranksearch"):
        for tid in ("a", "b"):
            assert searcher.suggest(tid) is not None
        for tid in ("a", "b"):
            searcher.on_trial_complete(tid, {"val/hm": 1.0, "is_final": True, "status": "completed"})
    assert not [r for r in caplog.records if "did not accept" in r.getMessage()]
    states = [t.state for t in searcher._ot_study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2
