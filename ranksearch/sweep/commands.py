"""``ranksearch sweep`` and ``ranksearch schema``: typer-compatible functions, registered by ``ranksearch.cli``.

No heavy imports at module level (ray, optuna, mlflow, torch load inside the functions) so ``--help`` is fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def _check_name(value: str | None) -> str | None:
    from ranksearch.config.base import check_name

    try:
        return check_name(value, folder=True, limit=100)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def sweep(
    space: Annotated[Path, typer.Argument(help="search-space YAML (see search_spaces/)", metavar="SPACE")],
    gpus: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=4096,
            help="logical GPUs of the local Ray (default: detected); fractional trials pack onto them",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="join an existing Ray cluster ('auto', HOST:PORT) instead of starting one"),
    ] = None,
    trials: Annotated[
        int | None, typer.Option(min=1, max=100_000, help="number of trials (default: the space's `trials`)")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="sweep name: folder and MLflow experiment (default: the space's name)", callback=_check_name
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="continue the interrupted sweep of this name (no trial lost or re-run)"
        ),
    ] = False,
    extend: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=100_000,
            metavar="N",
            help="add N trials to the finished sweep of this name (same Optuna study, MLflow parent run, folder)",
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite in the sweep folder)"
        ),
    ] = None,
    runs_dir: Annotated[
        Path | None,
        typer.Option(
            help="parent folder of sweep folders (default: ./ranksearch-runs/sweeps); on a cluster: "
            "shared storage every node mounts at the same path"
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="the Optuna study's database (postgresql://USER@HOST/DB; password from PGPASSWORD or "
            "~/.pgpass), shared by every sweep on that server; default: optuna.journal in the sweep folder. "
            "A folder here is the older spelling of --runs-dir"
        ),
    ] = None,
    warm_start: Annotated[
        Path | None,
        typer.Option(help="earlier sweep folder or optuna.journal: its completed trials seed the sampler"),
    ] = None,
    live: Annotated[
        bool | None,
        typer.Option("--live/--no-live", help="live table (default: when attached to a terminal)"),
    ] = None,
    set_: Annotated[
        list[str],
        typer.Option(
            "--set", help="fix a trial-config field for every trial: section.field=value (repeatable)"
        ),
    ] = [],  # noqa: B006
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="show the libraries' start-up output (MLflow, Ray, Tune) and tracebacks"
        ),
    ] = False,
    trust_state: Annotated[
        bool,
        typer.Option(
            "--trust-state",
            help="with --resume: accept (and sign as yours) Tune state your key did not sign, e.g. a folder "
            "you wrote on another machine; its pickles run code, so only for folders you trust",
        ),
    ] = False,
) -> None:
    """Run a sweep: Ray Tune trials sampled by Optuna, early-stopped by ASHA, logged to MLflow (one parent run).

    Results land in ./ranksearch-runs/sweeps/NAME (sweep.json, optuna.journal, mlflow.db, trials/). Stop it with
    Ctrl-C (or lose the driver) and continue with --resume.

    Example:

        ranksearch sweep search_spaces/quickstart.yaml

        ranksearch sweep search_spaces/lora.yaml --gpus 8 --name lora-b16

        ranksearch sweep search_spaces/lora.yaml --name lora-b16 --resume

        ranksearch sweep search_spaces/lora.yaml --name lora-b16 --extend 20

        ranksearch sweep search_spaces/dra.yaml --gpus 8 --set model.name=ViT-B-16 --set model.pretrained=openai
    """
    import logging

    from rich.console import Console

    from ranksearch.quiet import configure_logging
    from ranksearch.sweep.live import leaderboard
    from ranksearch.sweep.tuner import run_sweep

    study_storage = storage if storage and "://" in storage else None  # run_sweep checks it is a database
    if study_storage is None and storage is not None:
        runs_dir = runs_dir or Path(storage)  # the older spelling of --runs-dir

    configure_logging(debug)  # ranksearch's progress lines as plain messages, as every other command
    # Tune's INFO lines ("Wrote the latest version of all result files ...") would break into the live view
    logging.getLogger("ray.tune").setLevel(logging.INFO if debug else logging.WARNING)
    result = run_sweep(
        space, gpus=gpus, address=address, trials=trials, name=name, resume=resume, extend=extend,
        tracking_uri=tracking_uri, storage=runs_dir, study_storage=study_storage, warm_start=warm_start,
        live=live, overrides=set_, debug=debug, trust_state=trust_state,
    )  # fmt: skip
    out = Console()
    if result.oneshot is not None:  # one-shot search: estimate vs retrained per allocation, Kendall tau
        from ranksearch.oneshot.report import oneshot_table

        out.print(oneshot_table(result.oneshot))
        out.print(f"sweep folder: {result.folder}  ({result.wall_s:.0f} s)", highlight=False)
        target = result.name if (runs_dir or storage) is None else _shortest(result.folder)
        out.print(f"front: {_shortest(result.folder / 'search')}", highlight=False, soft_wrap=True)
        # a command of its own line, unwrapped, so it copies whole
        out.print(
            f"export one: ranksearch export {target} --allocation N --out DIR",
            highlight=False,
            soft_wrap=True,
        )
        return
    out.print(leaderboard(result.rows, result.space, width=out.width))
    out.print(f"sweep folder: {result.folder}  ({result.wall_s:.0f} s)", highlight=False)
    out.print(
        f"MLflow: experiment {result.experiment!r}, parent run {result.parent_run_id or 'not created yet'}\n"
        f"Optuna: optuna-dashboard {_study_location(result.folder)}",
        highlight=False,
    )
    if result.tracking_pending:  # the server did not answer: the journal keeps them, `sync` delivers them
        out.print(
            f"[yellow]{result.tracking_pending} MLflow writes wait in {_shortest(result.folder)}/mlflow.journal.jsonl"
            f"[/yellow] (the tracking server did not answer); deliver them with  ranksearch sync "
            f"{_shortest(result.folder)}", highlight=False, soft_wrap=True,
        )  # fmt: skip
    failed = [r for r in result.rows if r["status"] in ("failed", "error")]
    if failed:  # the sweep went on without them; say which and why (one line each, no traceback)
        out.print(
            f"[yellow]{len(failed)} trial(s) failed[/yellow] (recorded in MLflow and Optuna with the reason):"
        )
        for r in failed:
            out.print(
                f"  {r['trial_id']} {r['status']}: {r.get('error') or 'no reason recorded'}", highlight=False
            )
    unfinished = [r for r in result.rows if r["status"] in ("pending", "running")]
    short = extend is None and len(result.rows) < (trials or result.space.spec.trials)
    if unfinished or short or result.stopped_by:
        by = f" by {result.stopped_by}" if result.stopped_by else ""
        out.print(
            f"[yellow]interrupted{by}[/yellow]: continue with  ranksearch sweep {space} --name {result.name} "
            "--resume", highlight=False, soft_wrap=True,
        )  # fmt: skip
    # last, so it is what the terminal shows: the two commands to look at the results
    target = result.name if runs_dir is None else _shortest(result.folder)
    out.print("look at the results:", highlight=False)
    # never wrapped by rich (a wrapped command does not paste); short enough to fit as a rule
    out.print(f"  ranksearch report {target}\n  ranksearch ui {target}", highlight=False, soft_wrap=True)
    if result.stopped_by:  # stopped by a signal: the shell learns it (130 Ctrl-C, 143 SIGTERM), resumable
        from ranksearch.sweep.stop_signals import Stop

        raise typer.Exit(Stop(result.stopped_by).exit_code)
    interrupted = bool(unfinished) or len(result.rows) < (trials or result.space.spec.trials)
    problem = None if interrupted else nothing_completed(result.rows)
    if problem:  # a sweep with no usable result is a failure, not "done" (exit 1)
        from ranksearch.errors import SweepError

        raise SweepError(problem)


def sync(
    sweep_folder: Annotated[
        str, typer.Argument(help="sweep folder, or a sweep name under --runs-dir", metavar="SWEEP")
    ],
    runs_dir: Annotated[
        Path | None, typer.Option(help="parent folder of sweep folders (default: ./ranksearch-runs/sweeps)")
    ] = None,
    wait: Annotated[
        float,
        typer.Option(min=0, max=86_400, help="seconds to keep retrying while the server does not answer"),
    ] = 60.0,
) -> None:
    """Deliver a sweep's buffered MLflow writes (mlflow.journal.jsonl) to its tracking server.

    A sweep whose tracking server was down (at its start too) keeps every run, metric point, tag and artifact in
    its folder's journal; a finished sweep's leftovers are delivered by this command, in order, each exactly once
    (points MLflow already holds are skipped). Only for a folder your own sweep wrote; not while a driver runs it.

    Example:  ranksearch sync my-sweep --wait 600
    """
    from rich.console import Console

    from ranksearch.sweep.tuner import sync_tracking

    sent, pending, parent = sync_tracking(sweep_folder, runs_dir, wait)
    out = Console()
    if pending:
        out.print(f"[yellow]{pending} MLflow writes still pending[/yellow] (delivered {sent}); the server did not "
                  f"answer within {wait:.0f} s: run it again later", highlight=False)  # fmt: skip
        raise typer.Exit(1)
    out.print(f"MLflow: all {sent} buffered writes delivered; parent run {parent}", highlight=False)


def nothing_completed(rows: list[dict]) -> str | None:
    """One line saying why no trial of a finished sweep completed, or None when one did."""
    from collections import Counter

    if any(r["status"] == "completed" for r in rows):
        return None
    counts = Counter(r["status"] for r in rows)
    summary = ", ".join(f"{n} {status}" for status, n in counts.most_common())
    reasons = Counter(r.get("error") for r in rows if r.get("error"))
    why = f"; most often: {reasons.most_common(1)[0][0]}" if reasons else ""
    return f"no trial completed ({summary or 'no trials'}){why}"


def _study_location(folder: Path) -> str:
    """What optuna-dashboard opens: the study's database URL (password masked) or the sweep's journal."""
    from ranksearch.sweep.folder import Manifest

    return Manifest.load(folder).study_storage or _shortest(folder / "optuna.journal")


def _shortest(path: Path) -> str:
    """``path`` relative to the working directory when that is shorter (what a user would type)."""
    import os

    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


def schema(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the JSON Schema here (default: print it)")
    ] = None,
) -> None:
    """Export the JSON Schema of the search-space format, for editor autocompletion and checks.

    Then make this the first line of a space file (yaml-language-server, e.g. VS Code's YAML extension):

    `# yaml-language-server: $schema=./ranksearch-space.schema.json`
    """
    from ranksearch.space.load import space_json_schema

    text = json.dumps(space_json_schema(), indent=2)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")
        typer.echo(f"wrote {out}")
