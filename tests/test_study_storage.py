"""The Optuna study on a database (``sweep.study_storage``): URL handling, retries, heartbeats, no password in
pickles. sqlite stands in for PostgreSQL here (fast); tests/test_postgres_backend.py runs the real server."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy.exc

from ranksearch.errors import ConfigError
from ranksearch.sweep import study_storage as ss
from ranksearch.tracking.credentials import is_database_url


def test_database_urls_are_told_from_folders():
    for url in ("postgresql://u@db/optuna", "postgresql+psycopg2://u:p@db:5432/o", "sqlite:////tmp/x.db"):
        assert is_database_url(url)
    for value in ("/shared/ranksearch", "runs", "http://mlflow:5000", "", None):
        assert not is_database_url(value)


def test_bare_postgresql_urls_get_the_installed_driver():
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which the [postgres] extra does not install
    url = ss.with_driver("postgresql://u@db/optuna")
    import importlib.util

    expected = "postgresql" if importlib.util.find_spec("psycopg") else "postgresql+psycopg2"
    assert url == f"{expected}://u@db/optuna"
    assert ss.with_driver("postgresql+psycopg2://u@db/x") == "postgresql+psycopg2://u@db/x"
    assert ss.with_driver("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
def test_the_pickled_storage_has_no_password_and_reconnects(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}?password=hunter2"  # sqlite ignores it; redaction must not
    storage = ss.ResilientRDBStorage(url)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    blob = pickle.dumps(storage)
    assert b"hunter2" not in blob
    again = pickle.loads(blob)  # this process remembers the full URL: reconnects with it
    assert again.url == url and len(again.get_all_trials(study._study_id)) == 2


def test_a_dropped_connection_is_retried_then_given_up(tmp_path, monkeypatch):
    storage = ss.ResilientRDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    calls = {"n": 0}
    real = optuna.storages.RDBStorage.get_all_studies

    def flaky(self):
        calls["n"] += 1
        if calls["n"] < 3:  # as Optuna raises it: StorageInternalError from SQLAlchemy's OperationalError
            try:
                raise sqlalchemy.exc.OperationalError(
                    "SELECT 1", {}, Exception("server closed the connection")
                )
            except sqlalchemy.exc.OperationalError as e:
                raise optuna.exceptions.StorageInternalError("commit failed") from e
        return real(self)

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_studies", flaky)
    monkeypatch.setattr(ss.ResilientRDBStorage, "get_all_studies", ss._retrying("get_all_studies"))
    assert storage.get_all_studies() == [] and calls["n"] == 3
    calls["n"] = -100  # fails for longer than the retry budget: the error surfaces
    monkeypatch.setenv("RANKSEARCH_STUDY_RETRY_S", "1")
    t0 = time.monotonic()
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage.get_all_studies()
    assert time.monotonic() - t0 < 3
    # an error that is not about the connection is not retried
    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_studies", lambda self: 1 / 0)
    monkeypatch.setattr(ss.ResilientRDBStorage, "get_all_studies", ss._retrying("get_all_studies"))
    with pytest.raises(ZeroDivisionError):
        storage.get_all_studies()


class _Searcher:
    """What Heartbeat reads of Ray's OptunaSearch."""

    def __init__(self, study, trials):
        self._ot_study, self._ot_trials, self._completed_trials = study, trials, set()


@pytest.mark.slow
def test_heartbeats_keep_running_trials_alive_and_a_dead_driver_s_trials_fail(tmp_path):
    storage = ss.ResilientRDBStorage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_s=1, grace_s=2)
    study = optuna.create_study(storage=storage, study_name="s")
    a, b = study.ask(), study.ask()
    searcher = _Searcher(study, {"ta": a, "tb": b})
    beat = ss.Heartbeat(searcher, interval_s=0.3).start()
    try:
        time.sleep(3)  # past the grace period: only beating keeps them RUNNING
        assert ss.fail_stale(searcher) == 0
        searcher._completed_trials.add("tb")  # tb finished in Tune: no longer beaten for
        time.sleep(3)
        assert ss.fail_stale(searcher) == 1
        states = {t.number: t.state for t in study.get_trials()}
        assert states == {a.number: optuna.trial.TrialState.RUNNING, b.number: optuna.trial.TrialState.FAIL}
    finally:
        beat.stop()
    time.sleep(3)  # the driver is gone: its last running trial goes stale too
    assert ss.fail_stale(searcher) == 1


def test_an_unreachable_study_server_is_one_line_without_the_password():
    with pytest.raises(ConfigError) as e:
        ss.open_storage("postgresql://ranksearch:hunter2@127.0.0.1:9/optuna")
    text = str(e.value)
    assert "--storage" in text and "hunter2" not in text and "\n" not in text.strip()


@pytest.mark.slow
def test_sweep_storage_option_bad_url_exits_2(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("params: {adapter.r: [1, 2]}\nobjective: {metric: val/hm}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ranksearch", "sweep", str(space), "--runs-dir", str(tmp_path / "runs"),
         "--storage", "postgresq://u:hunter2@db/optuna", "--no-live"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--storage" in proc.stderr and "Traceback" not in proc.stderr and "hunter2" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
