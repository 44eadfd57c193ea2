"""``ranksearch ui``: a real ``mlflow server`` process on a sweep's store; the parent run over REST; clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from ranksearch.report.fixture import write_fake_sweep
from ranksearch.report.ui import free_port, is_loopback
from ranksearch.sweep.folder import Manifest


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_ui_serves_the_sweep_parent_run(tmp_path):
    folder = write_fake_sweep(tmp_path / "uisweep", 5, seed=4, mlflow=True)
    parent = Manifest.load(folder).parent_run_id
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ranksearch", "ui", str(folder), "--port", str(port), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        url = proc.stdout.readline().strip()  # printed once /health answers
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/#/experiments/\d+/runs/{parent}", url), (
            url, proc.stderr.read() if proc.poll() is not None else "",
        )  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={parent}") as r:
            run = json.loads(r.read())["run"]
        assert run["info"]["run_id"] == parent
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["ranksearch.kind"] == "sweep" and tags["ranksearch.sweep"] == "uisweep"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, proc.stderr.read()
    deadline = time.monotonic() + 10
    while _port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _port_open(port), "the mlflow server outlived `ranksearch ui`"


def test_ui_refuses_a_taken_port(tmp_path, capsys):
    from ranksearch.cli import main

    folder = write_fake_sweep(tmp_path / "busy", 2, seed=5, journal=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(SystemExit) as e:
            main(["ui", str(folder), "--port", str(s.getsockname()[1])])
    assert e.value.code == 1 and "already in use" in capsys.readouterr().err
