"""PostgreSQL as a sweep's shared backend: ``mlflow server`` on PostgreSQL (artifacts on "shared storage") and the
Optuna study (``--storage postgresql://...``) on the same server.

A real PostgreSQL (Debian's, started by ``postgres_server.PostgresServer``) with a password that needs
percent-encoding; a real ``mlflow server``; a real sweep driver in its own process (the synthetic runner, so the
trials are cheap). Mid-sweep PostgreSQL is crashed (immediate shutdown) and restarted: every metric point still
reaches MLflow once, and the study holds every trial. The password appears nowhere: not in the driver's output,
not in any file of the sweep folder (Tune's pickles included), not in MLflow params/tags, not in the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from mlflow.tracking import MlflowClient
from postgres_server import MlflowServer, PostgresServer, pg_bin
from reliability_report import record

pytestmark = [
    pytest.mark.ray,
    pytest.mark.reliability,
    pytest.mark.skipif(pg_bin() is None, reason="needs PostgreSQL (apt-get install postgresql)"),
]

ROOT = Path(__file__).resolve().parents[1]
EVALS, TRIALS = 8, 6

DRIVER = """
import json, sys
from pathlib import Path
from ranksearch.sweep.tuner import run_sweep
args = json.loads(sys.argv[1])
result = run_sweep(args["space"], name="pg", storage=Path(args["runs"]), runner="synthetic", live=False,
                   tracking_uri=args["tracking"], study_storage=args["study"],
                   runner_options={"seconds_per_eval": 0.6},
                   ray_init={"num_cpus": 2, "_temp_dir": args["ray_tmp"]})
print("ROWS " + json.dumps([[r["trial_id"], r["status"], r["reports"]] for r in result.rows]))
"""


def _space(folder: Path) -> Path:
    path = folder / "space.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": {"model": {"pretrained": None}, "eval": {"evals": EVALS}},
                "params": {"adapter.r": [1, 2, 4, 8, 16, 32]},
                "objective": {"metric": "val/hm"},
                "sampler": {"type": "grid", "seed": 0},
                "early_stopping": {"type": "none"},
                "trials": TRIALS,
                "concurrency": 2,
                "resources": {"cpu": 1, "gpu": 0},
            }
        )
    )
    return path


def _progress_lines(folder: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in folder.glob("trials/*/progress.jsonl"))


def test_sweep_on_postgresql_survives_a_database_restart_and_never_shows_the_password(tmp_path):
    t0 = time.time()
    shared = tmp_path / "shared"  # what every node would mount: sweep folders and MLflow's artifacts
    shared.mkdir()
    with PostgresServer() as pg:  # its own folder under /tmp: the postgres user must reach it
        secret = pg.password
        secrets = {secret, quote(secret, safe="")}
        # SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the [postgres] extra installs psycopg2, which MLflow's
        # server must be told (ranksearch's own --storage picks the installed driver itself)
        pg.database("mlflow")
        tracking_db, study_url = pg.url("mlflow", driver="postgresql+psycopg2"), pg.database("optuna")
        with MlflowServer(tracking_db, shared / "mlartifacts", tmp_path / "mlflow.log") as server:
            folder = shared / "runs" / "pg"
            ray_tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"rspg{os.getpid()}"
            args = {"space": str(_space(tmp_path)), "runs": str(shared / "runs"), "tracking": server.uri,
                    "study": study_url, "ray_tmp": str(ray_tmp)}  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "RANKSEARCH_MLFLOW_DRAIN_S": "240"}  # fmt: skip
            outage: dict = {}

            def crash_the_database() -> None:
                deadline = time.time() + 240
                while _progress_lines(folder) < 4 and time.time() < deadline:  # trials are reporting
                    time.sleep(0.2)
                outage["down"] = time.time()
                pg.restart(down_s=4.0)
                outage["up"] = time.time()
                outage["reports_at_down"] = _progress_lines(folder)

            thread = threading.Thread(target=crash_the_database, daemon=True)
            thread.start()
            proc = subprocess.run(
                [sys.executable, "-c", DRIVER, json.dumps(args)], env=env, capture_output=True, text=True,
                timeout=600, cwd=tmp_path,
            )  # fmt: skip
            thread.join(timeout=60)
            output = proc.stdout + proc.stderr
            assert proc.returncode == 0, output[-4000:]
            assert "up" in outage and outage["reports_at_down"] < TRIALS * EVALS, (
                outage
            )  # restarted mid-sweep
            rows = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("ROWS "))[5:])
            assert [r[1] for r in rows] == ["completed"] * TRIALS, rows

            # every metric point reached the PostgreSQL-backed MLflow, once
            client = MlflowClient(tracking_uri=server.uri)
            exp = client.get_experiment_by_name("pg")
            children = client.search_runs([exp.experiment_id], "tags.`ranksearch.kind` = 'trial'")
            assert len(children) == TRIALS
            produced = delivered = duplicates = 0
            for c in children:
                for key in ("val/hm", "train/loss", "trainable_params"):
                    steps = [m.step for m in client.get_metric_history(c.info.run_id, key)]
                    produced += EVALS
                    delivered += len(set(steps))
                    duplicates += len(steps) - len(set(steps))
                    assert sorted(steps) == list(range(1, EVALS + 1)), (key, steps)
                assert c.info.status == "FINISHED"
                # artifacts went to the shared folder through the server
                assert client.list_artifacts(c.info.run_id), c.info.run_id
            parent = client.get_run(json.loads((folder / "sweep.json").read_text())["parent_run_id"])
            assert parent.info.status == "FINISHED"
            entries = [json.loads(x) for x in (folder / "mlflow.journal.jsonl").read_text().splitlines()]
            assert {e["ack"] for e in entries if "ack" in e} == {e["seq"] for e in entries if "seq" in e}

            # the study on PostgreSQL holds every trial, complete, with its value
            count = pg.count(
                "optuna", "SELECT count(*) FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE t.state = 'COMPLETE'",
            )  # fmt: skip
            assert count == TRIALS

            # the report is built from the sweep folder + the server (nothing to leak there either)
            report = subprocess.run(
                [sys.executable, "-m", "ranksearch", "report", str(folder), "--quiet"], env=env,
                capture_output=True, text=True, timeout=300, cwd=tmp_path,
            )  # fmt: skip
            assert report.returncode == 0, report.stderr[-3000:]
            html = (folder / "report.html").read_text()

            # the password: nowhere
            leaks = [s for s in secrets if s in output or s in report.stdout + report.stderr or s in html]
            for path in folder.rglob("*"):
                if path.is_file():
                    data = path.read_bytes()
                    leaks += [f"{path.relative_to(folder)}" for s in secrets if s.encode() in data]
            for run in [parent, *children]:
                values = " ".join([*run.data.params.values(), *run.data.tags.values()])
                leaks += [f"run {run.info.run_id}" for s in secrets if s in values]
            assert not leaks, leaks
            manifest = json.loads((folder / "sweep.json").read_text())
            assert manifest["study_storage"].startswith("postgresql://ranksearch:***@127.0.0.1:")
            assert parent.data.params["study_storage"] == manifest["study_storage"]
    record(
        "postgres_restart",
        count=f"1 crash, {outage['up'] - outage['down']:.0f} s down",
        trials=TRIALS,
        completed=TRIALS,
        failed_recorded=0,
        duplicates=duplicates,
        lost_points=produced - delivered,
        tracebacks=0,
        seconds=round(time.time() - t0),
    )
