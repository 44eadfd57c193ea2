"""One driver per sweep folder: a lock held for the whole run, with the holder's host and PID beside it.

Two drivers on one folder would both restore the same Tune experiment, tell Optuna the same trials twice and
race on every state file. ``filelock.FileLock`` (``flock``) on ``sweep.lock`` excludes the second driver; the
operating system drops the lock when its holder dies, however it dies, so a lock left by a killed driver is
taken over by the next one without any clean-up. ``sweep.lock.json`` records who holds it (host, PID, start
time, command) so the refusal can name the holder; after a takeover it names the previous, dead holder in the
log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ranksearch.errors import RanksearchError

log = logging.getLogger(__name__)

LOCK_FILE, HOLDER_FILE = "sweep.lock", "sweep.lock.json"


class SweepBusy(RanksearchError):
    """Another driver runs this sweep."""

    exit_code = 2


class SweepLock:
    """Hold the sweep folder's driver lock (``with SweepLock(folder): ...``); ``SweepBusy`` when it is taken."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock: Any = None

    def acquire(self) -> SweepLock:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.folder / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise SweepBusy(f"sweep {self.folder.name} is already running: {describe(holder(self.folder))}; "
                            "wait for it to end (or stop it), then --resume") from None  # fmt: skip
        self._lock = lock
        previous = holder(self.folder)
        if previous and not _is_me(previous):
            log.info("took over the lock of a driver that is gone (%s)", describe(previous))
        record = {
            "host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
            "command": " ".join(sys.argv)[:500],
        }  # fmt: skip
        tmp = self.folder / (HOLDER_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self.folder / HOLDER_FILE)
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        with contextlib.suppress(OSError):  # the folder is gone (a failed start removed it)
            (self.folder / HOLDER_FILE).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(folder: Path) -> dict[str, Any] | None:
    """The recorded holder of ``folder``'s lock (or its last holder), or None."""
    try:
        data = json.loads((Path(folder) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "its holder is not recorded"
    since = record.get("since")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, int | float) else "?"
    )
    return f"PID {record.get('pid', '?')} on host {record.get('host', '?')} since {when}"


def _is_me(record: dict[str, Any]) -> bool:
    return record.get("pid") == os.getpid() and record.get("host") == socket.gethostname()
