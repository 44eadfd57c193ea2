"""Sweep arguments that used to do the wrong thing silently (issue 21): refused in one line, or a clean stop.

Fast cases (no Ray) run in the default tier; the ones that need a Ray runtime or a signal are ``reliability``.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from cli_run import run_cli as cli
from reliability_report import record

from ranksearch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def space_file(tmp_path: Path, **fields) -> Path:
    space = {
        "base": {"model": {"pretrained": None}, "eval": {"evals": 4}},
        "params": {
            "adapter.r": [1, 2, 4, 8],
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
        "objective": {"metric": "val/hm", "mode": "max"},
        "early_stopping": {"type": "none"},
        "trials": 6,
        "concurrency": 2,
        **fields,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_set_on_a_searched_field_is_refused(tmp_path, capsys):
    """README: --set fixes a field for every trial; on a searched field it would have been ignored."""
    space = space_file(tmp_path)
    runs = tmp_path / "runs"
    code, text = cli(["sweep", str(space), "--set", "train.lr=0.01", "--runs-dir", str(runs)], capsys)
    assert code == 2, text
    assert "--set train.lr=0.01: train.lr is searched by this space (params.train.lr)" in text, text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text
    assert not runs.exists()
    # a field the space does not search is fixed as before (here: the space loads with it)
    from ranksearch.space import load_space

    assert load_space(space, ["train.batch_size=16"]).trial_config(None).train.batch_size == 16


@pytest.mark.parametrize("trials", [0, -1])
def test_trials_below_one_are_refused(tmp_path, capsys, trials):
    from ranksearch.sweep.tuner import run_sweep

    space = space_file(tmp_path)
    with pytest.raises(ConfigError, match="--trials"):  # Ray reads num_samples=-1 as "forever"
        run_sweep(space, trials=trials, storage=tmp_path / "runs", runner="synthetic", live=False)
    code, text = cli(
        ["sweep", str(space), "--trials", str(trials), "--runs-dir", str(tmp_path / "runs")], capsys
    )
    assert code == 2 and "--trials" in text and len(text.strip().splitlines()) == 1, text
    assert not (tmp_path / "runs").exists()


def test_unreachable_address_fails_fast_and_leaves_nothing(tmp_path, capsys):
    """Ray's client retries an address nothing answers for minutes; one line at once here."""
    space = space_file(tmp_path)
    t0 = time.monotonic()
    code, text = cli(
        ["sweep", str(space), "--address", "127.0.0.1:1", "--runs-dir", str(tmp_path / "runs")], capsys
    )
    assert code == 2, text
    assert "--address: no Ray cluster answers at 127.0.0.1:1 (Connection refused)" in text, text
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "runs").exists()


def test_local_ray_token_file_is_private(tmp_path, monkeypatch):
    """Ray writes ~/.ray/auth_token with the umask (0644); ranksearch creates it 0600 first, or tightens it."""
    from ranksearch.sweep.ray_runtime import private_token_file

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    old = os.umask(0o022)
    try:
        path = private_token_file()
    finally:
        os.umask(old)
    assert path == tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text().strip()) >= 32
    path.chmod(0o644)
    token = path.read_text()
    assert private_token_file() == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == token  # the same token, private
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "cluster-token"))
    assert stat.S_IMODE(private_token_file().stat().st_mode) == 0o600


# ------------------------------------------------------------------------------------- with a Ray runtime
DRIVER = """
import json, sys
from pathlib import Path
from ranksearch.errors import RanksearchError
from ranksearch.sweep.tuner import run_sweep
space, storage, resume, tmp, gpus = sys.argv[1:6]
try:
    r = run_sweep(space, gpus=int(gpus), name="args", storage=Path(storage), resume=resume == "1",
                  runner="synthetic", runner_options={"seconds_per_eval": 1.0}, live=False,
                  ray_init={"num_cpus": 2, "_temp_dir": tmp})
except RanksearchError as e:
    print("ERROR " + str(e)); sys.exit(2)
print("RESULT " + json.dumps({"stopped": r.stopped_by, "rows": [[x["trial_id"], x["status"]] for x in r.rows]}))
"""


def driver(tmp_path: Path, space: Path, resume: bool = False, gpus: int = 0) -> subprocess.Popen:
    ray_tmp = tempfile.mkdtemp(prefix="ra", dir="/tmp")
    args = [sys.executable, "-c", DRIVER, str(space), str(tmp_path / "runs"), "1" if resume else "0", ray_tmp]
    log = open(tmp_path / f"driver-{int(resume)}.log", "a")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen([*args, str(gpus)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.reliability
@pytest.mark.parametrize(
    "resources,field",
    [({"gpu": 0.5, "cpu": 1}, "resources.gpu: 0.5 GPU(s) per trial"), ({"cpu": 64}, "resources.cpu: 64")],
)
def test_resources_no_node_can_hold_fail_fast(tmp_path, resources, field):
    """Tune would keep these trials pending forever; the sweep says why within seconds of Ray's start."""
    proc = driver(tmp_path, space_file(tmp_path, resources=resources), gpus=0)
    t0 = time.monotonic()
    finish(proc, timeout=120)
    out = (tmp_path / "driver-0.log").read_text()
    assert proc.returncode == 2, out[-3000:]
    assert field in out and "the trials would wait forever" in out, out[-3000:]
    assert time.monotonic() - t0 < 120


@pytest.mark.reliability
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_is_a_clean_stop_that_resume_continues(tmp_path, sig):
    """SIGTERM (a scheduler's pre-emption) and Ctrl-C: Tune saves, the sweep is "interrupted", --resume ends it."""
    t0 = time.time()
    space = space_file(tmp_path)
    folder = tmp_path / "runs" / "args"
    proc = driver(tmp_path, space)
    deadline = time.time() + 240
    log = tmp_path / "driver-0.log"
    while "[1/6]" not in log.read_text():  # one trial done, others running
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    os.kill(proc.pid, sig)
    finish(proc, timeout=120)
    out = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]  # not 134 (a native stack dump)
    first = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    assert first["stopped"] == sig.name
    assert json.loads((folder / "sweep.json").read_text())["status"] == "interrupted"

    proc = driver(tmp_path, space, resume=True)
    finish(proc, timeout=300)
    out = (tmp_path / "driver-1.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    second = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    assert second["stopped"] is None and len(second["rows"]) == 6
    assert all(status == "completed" for _, status in second["rows"]), second[
        "rows"
    ]  # no early stopping here
    assert {t for t, _ in first["rows"]} <= {t for t, _ in second["rows"]}  # the same trials, continued
    assert json.loads((folder / "sweep.json").read_text())["status"] == "finished"
    record(
        "stop_signal", count="1 SIGTERM + 1 SIGINT (one test each)", trials=6, completed="6 after --resume",
        failed_recorded=0, duplicates=0, lost_points=0, tracebacks=0, seconds=round(time.time() - t0),
    )  # fmt: skip


@pytest.mark.reliability
def test_ctrl_c_on_the_cli_says_interrupted_and_exits_130(tmp_path):
    """The command line: Ctrl-C with trials running prints "interrupted" and the --resume command, exit 130."""
    space = space_file(
        tmp_path,
        base={"model": {"pretrained": None}, "train": {"iterations": 400, "batch_size": 8}, "eval": {"evals": 4},
              "data": {"shots": 2, "test_per_class": 2}},
        trials=4,
        resources={"cpu": 1, "gpu": 0},
    )  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    args = [sys.executable, "-m", "ranksearch", "sweep", str(space), "--name", "cli", "--no-live"]
    proc = subprocess.Popen([*args, "--runs-dir", str(tmp_path / "runs")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)  # fmt: skip
    folder = tmp_path / "runs" / "cli"
    deadline = time.time() + 300
    while not any((folder / "tune").glob("*/result.json")):  # a trial is running and has reported
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted by SIGINT: continue with" in out and "--resume" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert json.loads((folder / "sweep.json").read_text())["status"] == "interrupted"
