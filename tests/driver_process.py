"""Sweep drivers as subprocesses, each with its own local Ray in a new session, and how tests kill them.

A driver runs in a new session (``start_new_session``), so every process it starts (its Ray head, raylet and
workers: Ray may move some into their own process groups, never out of the session) is found by its session id,
which only the test created. Killing by session rather than by process group leaves no worker that finishes its
trial after the "kill".
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_driver(script: str, args: list[str], log: Path) -> subprocess.Popen:
    """``python -c script <args> <ray temp dir>`` in a new session, its output in ``log``."""
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    out = open(log, "w")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-c", script, *args, ray_tmp],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def session_pids(session: int) -> list[int]:
    """The live processes of a session (field 6 of ``/proc/<pid>/stat``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
            if int(fields[3]) == session:
                pids.append(int(entry.name))
    return pids


def signal_session(proc: subprocess.Popen, sig: int) -> None:
    for pid in session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def freeze_session(proc: subprocess.Popen) -> None:
    """SIGSTOP the driver and every process of its session: nothing they write changes while the test looks."""
    signal_session(proc, signal.SIGSTOP)


def kill_session(proc: subprocess.Popen, driver_first: bool = True) -> None:
    """SIGKILL the driver (a dead driver, its workers still running: what a crash leaves), then whatever of its
    session outlived it; ``driver_first=False`` kills the whole session at once (nothing finishes after it)."""
    if driver_first:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
    else:
        signal_session(proc, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)
    signal_session(proc, signal.SIGKILL)
