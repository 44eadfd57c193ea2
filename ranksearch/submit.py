"""``ranksearch submit``: run a sweep on a Ray cluster as a Ray job, from a machine outside it (a laptop).

The sweep's driver then runs on the cluster's head (``ranksearch sweep SPACE --address auto``), so closing the
laptop does not stop it. What travels: the search-space file only (a Ray ``working_dir`` holding that one file);
ranksearch itself must be installed on the cluster (the recipes in ``cluster/`` do that). The client talks to
the Jobs API (the dashboard, port 8265: a port-forward or SSH tunnel to the head, never a public address) with
Ray's token authentication, which is turned on for this client unless ``RAY_AUTH_MODE`` says otherwise.

What a job's entrypoint holds is readable by everyone who can list the cluster's jobs, so a URL with a password
is refused here: the cluster gets its database credentials from its own environment (``PGPASSWORD`` from a
secret, ``~/.pgpass``), see ``cluster/README.md``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ranksearch.errors import ConfigError, RanksearchError

ENV_ADDRESS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class Submitted:
    """A submitted sweep job: its id, the Jobs API address, the sweep folder on the cluster, its final status
    (with ``follow``; else None)."""

    job_id: str
    address: str
    sweep: str
    folder: str
    entrypoint: str
    status: str | None = None


def dashboard_address(address: str | None) -> str:
    """The Jobs API URL: ``address``, else ``$RAY_API_SERVER_ADDRESS`` / an http ``$RAY_ADDRESS``.

    ``HOST:PORT`` gets ``http://``; a GCS address (port 6379, ``ray://``) is refused with the fix.
    """
    if not address:
        address = next((os.environ[k] for k in ENV_ADDRESS if os.environ.get(k, "").startswith("http")), None)
    if not address:
        raise ConfigError([("--address", "the cluster's Jobs API URL is needed, e.g. http://127.0.0.1:8265 "
                                         "(a port-forward or SSH tunnel to the head's dashboard)")])  # fmt: skip
    if address.startswith("ray://") or address in ("auto", "local"):
        raise ConfigError([("--address", f"{address!r} is a Ray client/GCS address; submit needs the dashboard "
                                         "URL, e.g. http://127.0.0.1:8265")])  # fmt: skip
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise ConfigError([("--address", f"{address!r}: use http://HOST:PORT (the head's dashboard)")])
    return address.rstrip("/")


def secret_problems(values: dict[str, str | None]) -> list[tuple[str, str]]:
    """Options whose URL carries a password (it would be readable in the job's entrypoint)."""
    from ranksearch.tracking.credentials import has_password, redact

    return [
        (option, f"{redact(value)}: a password in the URL would be visible to everyone who can list the "
                 "cluster's jobs; give the cluster PGPASSWORD (from a secret) or ~/.pgpass instead")
        for option, value in values.items()
        if value and has_password(value)
    ]  # fmt: skip


def sweep_command(
    space_name: str, *, name: str, runs_dir: str, trials: int | None = None, resume: bool = False,
    tracking_uri: str | None = None, storage: str | None = None, warm_start: str | None = None,
    overrides: list[str] | tuple[str, ...] = (), debug: bool = False,
) -> list[str]:  # fmt: skip
    """The ``ranksearch sweep`` command the job runs on the head (joining the cluster it runs in)."""
    cmd = ["ranksearch", "sweep", space_name, "--address", "auto", "--no-live", "--name", name,
           "--runs-dir", runs_dir]  # fmt: skip
    if trials is not None:
        cmd += ["--trials", str(trials)]
    if resume:
        cmd.append("--resume")
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    if storage:
        cmd += ["--storage", storage]
    if warm_start:
        cmd += ["--warm-start", warm_start]
    for o in overrides:
        cmd += ["--set", o]
    if debug:
        cmd.append("--debug")
    return cmd


def submit_sweep(
    space_file: str | Path,
    *,
    address: str | None = None,
    runs_dir: str,
    name: str | None = None,
    trials: int | None = None,
    resume: bool = False,
    tracking_uri: str | None = None,
    storage: str | None = None,
    warm_start: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    follow: bool = False,
    debug: bool = False,
    echo: Any = print,
) -> Submitted:
    """Submit ``ranksearch sweep`` as a Ray job (see module docstring); with ``follow``, stream its output until
    it ends.

    Args:
        space_file: the search-space YAML (validated here first, with every problem at once).
        address: the Jobs API URL (``http://HOST:8265``); default ``$RAY_API_SERVER_ADDRESS``.
        runs_dir: the parent folder of sweep folders *on the cluster* (shared storage every node mounts).
        name, trials, resume, tracking_uri, storage, warm_start, overrides, debug: as ``ranksearch sweep``;
            ``warm_start`` is a path on the cluster.
        follow: wait for the job and stream its logs (Ctrl-C stops following, not the job).
        echo: where progress lines go (the CLI passes its console).

    Raises:
        ConfigError: a bad space, option or address; RanksearchError: the cluster refused or did not answer.
    """
    from ranksearch.config.base import check_name
    from ranksearch.space import load_space

    address = dashboard_address(address)
    problems = secret_problems({"--tracking-uri": tracking_uri, "--storage": storage})
    if not runs_dir or not str(runs_dir).startswith("/"):
        problems.append(("--runs-dir", f"{runs_dir!r}: an absolute path on the cluster's shared storage "
                                       "(e.g. /shared/ranksearch), the same on every node"))  # fmt: skip
    space_path = Path(space_file).expanduser()
    if not space_path.is_file():
        problems.append(("SPACE", f"{space_file}: no such file"))
    if problems:
        raise ConfigError(problems)
    space = load_space(space_path, overrides)  # bad input fails here, before anything reaches the cluster
    name = name or space.spec.name or space_path.stem
    try:
        name = check_name(name, folder=True, limit=100)
    except ValueError as e:
        raise ConfigError([("--name", str(e))]) from None
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when Ray's client loads; "disabled" is respected
    client = _client(address)
    job_id = f"ranksearch-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = sweep_command(
        space_path.name, name=name, runs_dir=str(runs_dir), trials=trials, resume=resume,
        tracking_uri=tracking_uri, storage=storage, warm_start=warm_start, overrides=overrides, debug=debug,
    )  # fmt: skip
    entrypoint = shlex.join(cmd)
    with tempfile.TemporaryDirectory(prefix="ranksearch-submit-") as upload:
        shutil.copy2(space_path, Path(upload) / space_path.name)  # the space file travels, nothing else
        _call(lambda: client.submit_job(
            entrypoint=entrypoint, submission_id=job_id, runtime_env={"working_dir": upload},
            metadata={"ranksearch.sweep": name},
        ), address)  # fmt: skip
    result = Submitted(job_id, address, name, f"{str(runs_dir).rstrip('/')}/{name}", entrypoint)
    echo(f"submitted job {job_id} to {address}: {entrypoint}")
    echo(f"  sweep folder on the cluster: {result.folder}")
    if follow:
        result.status = _follow(client, job_id, address, echo)
    else:
        echo(f"  follow it:  ray job logs --follow --address {address} {job_id}")
        echo(f"  stop it:    ray job stop --address {address} {job_id}")
    return result


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return _call(lambda: JobSubmissionClient(address), address)


def _call(fn: Any, address: str) -> Any:
    """Run one Jobs API call; the cluster's refusals and silences become one-line errors."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return fn()
    except AuthenticationError as e:
        first = str(e).strip().splitlines()[0]
        raise RanksearchError(
            f"the cluster at {address} refused the request ({first}): set RAY_AUTH_TOKEN_PATH to the cluster's "
            "token file (or RAY_AUTH_TOKEN), see cluster/README.md"
        ) from None
    except (requests.exceptions.ConnectionError, ConnectionError) as e:
        raise ConfigError([("--address", f"nothing answers at {address} ({type(e).__name__}): is the "
                                         "port-forward or tunnel to the head's dashboard up?")]) from None  # fmt: skip
    except RuntimeError as e:  # the Jobs API answered with an error (e.g. the id exists, a bad runtime env)
        message = str(e).strip().splitlines()
        raise RanksearchError(
            f"the cluster at {address} rejected the job: {message[-1] if message else e}"
        ) from None


def _follow(client: Any, job_id: str, address: str, echo: Any) -> str:
    """Stream the job's logs until it ends; its final status. Ctrl-C leaves the job running."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            echo(chunk.rstrip("\n"))

    try:
        asyncio.run(tail())
        status = _wait_status(client, job_id, address)
    except KeyboardInterrupt:
        echo(
            f"stopped following; the job keeps running. Stop it with:  ray job stop --address {address} {job_id}"
        )
        raise
    echo(f"job {job_id} {status}")
    return status


def _wait_status(client: Any, job_id: str, address: str, timeout_s: float = 60) -> str:
    """The job's terminal status (the log stream can end a moment before the status is final)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(_call(lambda: client.get_job_status(job_id), address)).rsplit(".", 1)[-1]
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------------ CLI
def submit(
    space: Annotated[Path, typer.Argument(help="search-space YAML (validated here first)", metavar="SPACE")],
    runs_dir: Annotated[
        str,
        typer.Option(
            help="parent folder of sweep folders ON THE CLUSTER: shared storage mounted on every node"
        ),
    ],
    address: Annotated[
        str | None,
        typer.Option(
            help="the cluster's Jobs API URL, e.g. http://127.0.0.1:8265 (default $RAY_API_SERVER_ADDRESS)"
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="sweep name (default: the space's name)")] = None,
    trials: Annotated[int | None, typer.Option(min=1, max=100_000, help="number of trials")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the interrupted sweep of this name")
    ] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI as the cluster sees it (e.g. http://mlflow:5000)")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL as the cluster sees it (postgresql://user@host/db)")
    ] = None,
    warm_start: Annotated[
        str | None, typer.Option(help="a sweep folder or optuna.journal on the cluster to seed the sampler")
    ] = None,
    set_: Annotated[
        list[str], typer.Option("--set", help="fix a trial-config field: section.field=value (repeatable)")
    ] = [],  # noqa: B006
    follow: Annotated[
        bool,
        typer.Option("--follow/--no-follow", help="stream the job's output until it ends (Ctrl-C detaches)"),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="the sweep shows library output and tracebacks")
    ] = False,
) -> None:
    """Run a sweep on a Ray cluster as a Ray job, from outside it: the driver runs on the cluster's head.

    Only the space file is uploaded; ranksearch must be installed on the cluster. Token authentication is on
    (RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN names the cluster's token). Exit status with --follow: 0 when the job
    succeeded.

    Example:

        kubectl port-forward svc/ranksearch-head-svc 8265:8265 &

        ranksearch submit search_spaces/dra.yaml --address http://127.0.0.1:8265 --runs-dir /shared/ranksearch --tracking-uri http://mlflow:5000 --follow

        ranksearch submit search_spaces/dra.yaml --address http://127.0.0.1:8265 --runs-dir /shared/ranksearch --resume
    """
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    result = submit_sweep(
        space, address=address, runs_dir=runs_dir, name=name, trials=trials, resume=resume,
        tracking_uri=tracking_uri, storage=storage, warm_start=warm_start, overrides=set_, follow=follow,
        debug=debug, echo=lambda line: out.print(line, markup=False),
    )  # fmt: skip
    if result.status is not None and result.status != "SUCCEEDED":
        with contextlib.suppress(Exception):
            out.print(f"the job ended {result.status}: ray job logs --address {result.address} {result.job_id}",
                      markup=False)  # fmt: skip
        raise typer.Exit(1)
