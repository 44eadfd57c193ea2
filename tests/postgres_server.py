"""A private PostgreSQL server and an ``mlflow server`` on it, for tests (Debian's ``postgresql`` package).

``PostgresServer`` runs ``initdb`` in a temp folder and ``pg_ctl`` on a free port bound to 127.0.0.1 (its unix
socket in the same private folder); as root (this machine) the server runs as the ``postgres`` user, which
PostgreSQL requires. A role with a password owns one database per ``database()`` call; clients connect over TCP
with scram-sha-256. ``restart()`` is an immediate shutdown (a crash: no checkpoint) and a start on the same data.

``MlflowServer`` is ``mlflow server`` with its backend store on such a database and its artifacts in a folder
(the shared storage of a cluster), 127.0.0.1, one worker, in its own process group.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def pg_bin() -> Path | None:
    """The folder of Debian's PostgreSQL binaries (initdb, pg_ctl), or None when PostgreSQL is not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throw-away PostgreSQL cluster (see module docstring)."""

    def __init__(self, root: Path | None = None, user: str = "ranksearch", password: str | None = None):
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.root = Path(root or tempfile.mkdtemp(prefix="pg", dir="/tmp"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.data, self.sockets, self.log = self.root / "data", self.root / "sock", self.root / "postgres.log"
        self.port = free_port()
        self.user = user
        # URL-unsafe characters on purpose: the URL must percent-encode it, and redaction must still find it
        self.password = password or f"pw:{secrets.token_hex(8)}@/"
        self._owner = "postgres" if os.getuid() == 0 else None

    # --------------------------------------------------------------------------------------- lifecycle
    def _run(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self._owner:  # postgres refuses to run as root
            cmd = ["runuser", "-u", self._owner, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120, **kw)

    def start(self) -> PostgresServer:
        for d in (self.data, self.sockets):
            d.mkdir(mode=0o700, exist_ok=True)
        if self._owner:
            os.chmod(self.root, 0o755)  # the postgres user must reach its folders
            uid, gid = pwd.getpwnam(self._owner).pw_uid, pwd.getpwnam(self._owner).pw_gid
            for d in (self.data, self.sockets):
                os.chown(d, uid, gid)
            self.log.touch()
            os.chown(self.log, uid, gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")  # fmt: skip
        self._pg_ctl_start()
        self._psql(
            f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'", check=False
        )  # exists after a restart
        return self

    def _pg_ctl_start(self) -> None:
        opts = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=60"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", opts, "start")

    def _psql(self, sql: str, db: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        psql = self.bin / "psql"
        return self._run(psql, "-h", self.sockets, "-p", str(self.port), "-U", "postgres", "-d", db,
                         "-v", "ON_ERROR_STOP=1", "-qAtc", sql, check=check)  # fmt: skip

    def database(self, name: str) -> str:
        """Create database ``name`` owned by the role; its URL (with the password, percent-encoded)."""
        self._psql(f"CREATE DATABASE {name} OWNER {self.user}")
        return self.url(name)

    def url(self, db: str, driver: str = "postgresql") -> str:
        from urllib.parse import quote

        return f"{driver}://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{db}"

    def count(self, db: str, sql: str) -> int:
        return int(self._psql(sql, db=db).stdout.strip().splitlines()[-1])

    def stop(self, mode: str = "fast") -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def restart(self, down_s: float = 0.0) -> None:
        """Crash (immediate shutdown: no checkpoint, connections cut) and start again on the same data."""
        self.stop("immediate")
        time.sleep(down_s)
        self._pg_ctl_start()

    def close(self) -> None:
        self.stop("immediate")
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(
            OSError, ValueError
        ):  # pg_ctl could not stop it: its own pid file says which
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class MlflowServer:
    """``mlflow server`` on a PostgreSQL backend store, artifacts served from ``artifacts`` (see module docstring)."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path):
        self.backend_uri, self.artifacts, self.log = backend_uri, Path(artifacts), Path(log)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180) -> MlflowServer:
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
               "--artifacts-destination", str(self.artifacts), "--serve-artifacts", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                if r.status == 200:
                    return self
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer in {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
