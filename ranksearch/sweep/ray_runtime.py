"""Start or join the Ray runtime a sweep runs on, failing fast where Ray would wait forever.

- ``--address HOST:PORT`` that nothing answers: Ray's client retries for minutes; a TCP probe says so at once.
- per-trial ``resources`` that no node of the runtime can ever hold (``gpu: 0.5`` without GPUs, ``cpu: 64`` on
  a 2-core machine): Tune would keep the trials pending forever; refused with the field and what there is.
- Ray's token file: a local Ray with token authentication creates ``~/.ray/auth_token`` with the process
  umask (0644: readable by every user of the machine); it is created 0600 here first, and an existing one
  that others can read is made 0600.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

from ranksearch.errors import ConfigError

log = logging.getLogger(__name__)
PROBE_S = 5.0  # how long --address gets to accept a TCP connection


def start_ray(address: str | None, gpus: int | None, ray_init: dict[str, Any] | None) -> None:
    """``ray.init`` for a sweep: a local runtime (``address=None``) or the cluster at ``address``."""
    import ray

    kw = {"include_dashboard": False, "log_to_driver": False, **(ray_init or {})}
    # Ray's dashboard and Jobs API run code for whoever reaches them: loopback unless the user says otherwise
    kw.setdefault("dashboard_host", "127.0.0.1")
    if address:
        probe_address(address)  # the cluster may have gone since run_sweep's first probe
        ray.init(address=address, **kw)
    else:
        private_token_file()
        ray.init(address="local", num_cpus=kw.pop("num_cpus", os.cpu_count()), num_gpus=gpus, **kw)


def probe_address(address: str) -> None:
    """Refuse at once when ``HOST:PORT`` (or ``ray://HOST:PORT``) accepts no TCP connection ("auto" is Ray's)."""
    target = address.split("://", 1)[-1]
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError([("--address", f"{address!r}: expected HOST:PORT, ray://HOST:PORT or 'auto'")])
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(
            [
                (
                    "--address",
                    f"no Ray cluster answers at {address} ({reason}): is its head running (ray status)?",
                )
            ]
        ) from None


def token_path() -> Path | None:
    """The token file a token-authenticated Ray reads: ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``;
    None when Ray's token comes from ``$RAY_AUTH_TOKEN`` or authentication is off."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"


def private_token_file() -> Path | None:
    """Make sure the token file a local Ray uses is readable by this user only (see module docstring)."""
    path = token_path()
    if path is None:
        return None
    if path.exists():
        st = path.stat()
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
            path.chmod(0o600)
            log.warning("Ray's token file %s was readable by others: made it 0600", path)
        return path
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:  # O_EXCL + 0600: never readable by others, not even for an instant; a concurrent creator wins
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())
    return path


def check_resources(cpu: float, gpu: float, where: str) -> None:
    """Refuse a per-trial (or per-pack) request that no node of the running Ray can hold.

    Raises:
        ConfigError: naming ``resources.cpu``/``resources.gpu``, what was asked and the largest node.
    """
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        return
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    most_cpu = max(n.get("CPU", 0) for n in nodes)
    most_gpu = max(n.get("GPU", 0) for n in nodes)
    if most_gpu < gpu:
        hint = (
            " (pass --gpus N for logical GPUs on a machine without any, or set resources.gpu: 0)"
            if most_gpu == 0
            else ""
        )
        problem = ("resources.gpu", f"{gpu:g} GPU(s) {where}, but no node of this Ray has more than "
                   f"{most_gpu:g}{hint}: the trials would wait forever")  # fmt: skip
    else:
        problem = ("resources.cpu", f"{cpu:g} CPU(s) {where}, but no node of this Ray has more than "
                   f"{most_cpu:g} (with {gpu:g} GPU(s)): the trials would wait forever")  # fmt: skip
    raise ConfigError([problem])
