"""``ranksearch report | ui | status | best``: typer-compatible functions, registered by ``ranksearch.cli``.

Heavy imports (pandas, plotly, mlflow, optuna) happen inside the functions so ``ranksearch --help`` stays fast.
Every command takes a sweep folder or a sweep name (looked up under ./ranksearch-runs/sweeps, or ``--storage``).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ranksearch.errors import RanksearchError

log = logging.getLogger(__name__)
out, err = Console(), Console(stderr=True)

SweepArg = Annotated[
    str, typer.Argument(help="sweep folder, or a sweep name under --storage", metavar="SWEEP")
]
Storage = Annotated[
    Path | None, typer.Option(help="parent folder of sweep folders (default: ./ranksearch-runs/sweeps)")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print only the essential line (a path or URL)")]
AsJson = Annotated[bool, typer.Option("--json", help="print the result as JSON, for scripts")]
# a folder's sweep.json may name any server: its store is contacted only for a folder this user's sweep wrote
TrackingUri = Annotated[
    str | None,
    typer.Option(
        help="MLflow store of the sweep (confirms the one sweep.json names, for a folder you did not create)"
    ),
]
# read by ranksearch.cli.main (tracebacks instead of one-line errors); declared so each command accepts it
Debug = Annotated[bool, typer.Option("--debug", help="show the full traceback on errors")]


def _sweep(sweep: str | None, storage: Path | None) -> Path:
    from ranksearch.report.data import find_sweep

    return find_sweep(sweep, storage)


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def report(
    sweep: SweepArg,
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file to write (default: SWEEP/report.html)")
    ] = None,
    top: Annotated[int, typer.Option(min=1, max=50, help="trials in the learning curves")] = 10,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="keep rebuilding it while the sweep runs; the open page reloads itself"),
    ] = False,
    every: Annotated[
        float, typer.Option(min=5, help="with --watch: seconds between rebuilds (and page reloads)")
    ] = 30,
    mlflow_url: Annotated[
        str | None,
        typer.Option(
            help="MLflow UI address for run links (default: the tracking server, or 127.0.0.1:5000)"
        ),
    ] = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="log the report to the parent run")
    ] = True,
    tracking_uri: TrackingUri = None,
    storage: Storage = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Write the sweep's comparison dashboard: one self-contained HTML file (works offline).

    Leaderboard (best report per trial), optimisation history (best so far by trial and by compute), the
    Pareto front (or accuracy vs size), base vs new accuracy, Optuna parameter importances, parallel
    coordinates, slice plots, learning curves, per-layer rank allocation of the top trials, per-family
    summaries, and a drill-down per top trial (config, curves, allocation, MLflow run link). Reads the sweep's
    files, not MLflow run by run, so it stays fast for thousands of trials. Logged to the sweep's parent
    MLflow run under report/. With --watch it is rebuilt as trials report until the sweep ends.
    """
    from ranksearch.report.html import build_report, log_to_parent

    folder = _sweep(sweep, storage)
    t0 = time.perf_counter()
    options = {"mlflow_url": mlflow_url, "tracking_uri": tracking_uri}
    if watch:
        result = _watch(folder, out_file, top, every, options, quiet or as_json)
    elif quiet or as_json:
        result = build_report(folder, out_file, top, **options)
    else:
        with err.status("report") as status:
            result = build_report(folder, out_file, top, progress=lambda msg: status.update(f"report: {msg}"),
                                  **options)  # fmt: skip
    logged = None
    if mlflow:
        try:
            logged = log_to_parent(folder, result.path, tracking_uri)
        except Exception as e:  # the report exists either way; a tracking hiccup must not hide it
            err.print(f"[yellow]warning:[/yellow] report not logged to MLflow: {e}", highlight=False)
    seconds = round(time.perf_counter() - t0, 2)
    if as_json:
        _print_json({"path": str(result.path), "bytes": result.bytes, "seconds": seconds,
                     "stages": result.seconds, "sections": result.sections, "mlflow_run": logged})  # fmt: skip
        return
    if not quiet:
        empty = [k for k, v in result.sections.items() if not v]
        err.print(
            f"{result.bytes / 1e6:.1f} MB in {seconds:.1f} s"
            + (f"; logged to MLflow run {logged}" if logged else "")
            + (f"; no data yet for: {', '.join(empty)}" if empty else ""),
            highlight=False,
        )
    out.print(str(result.path), highlight=False, soft_wrap=True)


def _watch(folder: Path, out_file: Path | None, top: int, every: float, options: dict, silent: bool) -> Any:
    """``report --watch``: rebuild whenever the sweep's files change, until the sweep is no longer running."""
    from ranksearch.report.html import watch_report

    def built(result: Any, final: bool) -> None:
        if silent:
            return
        when = time.strftime("%H:%M:%S")
        if final:
            err.print(f"{when} sweep no longer running: final report written", highlight=False)
        else:
            err.print(f"{when} report rebuilt ({result.trials} trials): {result.path}  (reloads every {every:.0f} s; "
                      "Ctrl-C stops watching)", highlight=False, soft_wrap=True)  # fmt: skip

    try:
        return watch_report(folder, out_file, top, every, on_build=built, **options)
    except KeyboardInterrupt:
        from ranksearch.report.html import REPORT_FILE, Report

        path = Path(out_file) if out_file else folder / REPORT_FILE
        if not silent:
            err.print("stopped watching", highlight=False)
        return Report(path, path.stat().st_size if path.is_file() else 0)


REPORT_EPILOG = (
    "Examples:\n\n  ranksearch report ranksearch-runs/sweeps/quickstart\n\n"
    "  ranksearch report quickstart --watch        # while the sweep runs; the page reloads itself\n\n"
    "  ranksearch report quickstart --out /tmp/quickstart.html --no-mlflow\n\n"
    "  ranksearch report quickstart --json    # path, size, timings"
)


def ui(
    sweep: Annotated[
        str | None,
        typer.Argument(help="sweep folder or name (default: the latest sweep)", metavar="[SWEEP]"),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to bind; anything but loopback exposes the UI")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: pick a free one)")] = 5000,
    tracking_uri: Annotated[
        str | None, typer.Option(help="backend store to serve instead of the sweep's")
    ] = None,
    storage: Storage = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Start the MLflow UI on the sweep's tracking backend and print the URL of the sweep's parent run.

    Runs until Ctrl-C, then stops the server. Bound to 127.0.0.1 by default: MLflow's server has no login
    unless started with --app-name basic-auth, so expose it (--host 0.0.0.0) only on a trusted network.
    """
    import ranksearch.report.ui as server_mod

    run_id, uri, name = None, tracking_uri, None
    if tracking_uri is None or sweep is not None:
        try:
            folder = _sweep(sweep, storage)
        except RanksearchError:
            if sweep is not None or tracking_uri is not None:
                raise
            folder = None
        if folder is not None:
            from ranksearch.report.data import tracking_store
            from ranksearch.sweep.folder import Manifest

            manifest = Manifest.load(folder)
            run_id, name = manifest.parent_run_id, manifest.name
            uri = tracking_store(folder, manifest.tracking_uri, tracking_uri)
            if not uri:
                from ranksearch.sweep.signing import TrustError

                raise TrustError(
                    f"{folder} was not created by you (sweep.json is not signed by your ranksearch key): pass "
                    f"--tracking-uri {manifest.tracking_uri} to serve the store it names"
                )
    if uri is None:
        from ranksearch.tracking.mlflow_log import default_tracking_uri

        uri = default_tracking_uri()
    if not server_mod.is_loopback(host):
        err.print(
            f"[yellow]warning:[/yellow] binding {host}: anyone who can reach this machine can read and change the "
            "runs (MLflow has no login by default)",
            highlight=False,
        )
    port = port or server_mod.free_port()
    if not (quiet or as_json):
        err.print(f"starting mlflow server on {uri} ...", highlight=False)
    server = server_mod.start_server(uri, host, port)
    # SIGTERM (a supervisor, a test) stops the server like Ctrl-C does
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        url = server_mod.run_url(server.url, run_id) if run_id else server.url
        if as_json:
            _print_json({"url": url, "server": server.url, "tracking_uri": uri, "parent_run_id": run_id,
                         "sweep": name, "pid": server.process.pid})  # fmt: skip
        elif quiet:
            out.print(url, highlight=False, soft_wrap=True)
        else:
            out.print(f"MLflow UI: {url}" + (f"  (sweep {name}, parent run)" if run_id else ""), highlight=False,
                      soft_wrap=True)  # fmt: skip
            err.print("press Ctrl-C to stop", highlight=False)
        out.file.flush()
        server.process.wait()
        raise RanksearchError(f"mlflow server stopped by itself (status {server.process.returncode})")
    except KeyboardInterrupt:
        if not (quiet or as_json):
            err.print("stopping mlflow server", highlight=False)
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


UI_EPILOG = (
    "Examples:\n\n  ranksearch ui ranksearch-runs/sweeps/quickstart\n\n"
    "  ranksearch ui quickstart --port 0          # any free port\n\n"
    "  ranksearch ui --tracking-uri sqlite:///$PWD/ranksearch-runs/mlflow.db"
)


def status(
    sweep: SweepArg,
    storage: Storage = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Show a sweep's progress: trials by state, the best so far, elapsed time and an ETA.

    Read from the sweep folder's files (no MLflow, no Ray), so it works while the sweep runs and after. The
    table is rewritten whenever a trial ends, so "running" counts lag behind trials that started since.
    """
    from ranksearch.report.data import load_sweep, status_summary

    data = load_sweep(_sweep(sweep, storage), history=False)
    s = status_summary(data)
    first = data.first
    best = s["best"]
    if as_json:
        keep = ("trial_id", "family", first.metric, *[o.metric for o in data.objectives])
        s["best"] = {k: best[k] for k in keep if k in best} | {"params": _params(best)} if best else None
        _print_json(s)
        return
    done = f"{s['finished']}/{s['total'] or '?'} finished"
    if quiet:
        out.print(f"{s['sweep']} {s['status']} {done}" + (f" best {best[first.metric]:.4g}" if best else ""))
        return
    from rich.table import Table

    out.print(
        f"[bold]sweep {s['sweep']}[/bold] ({s['status']}): {done}, {_duration(s['elapsed_s'])} elapsed"
        + (f", ETA {_duration(s['eta_s'])}" if s["eta_s"] is not None else ""),
        highlight=False,
    )
    table = Table()
    for col in ("state", "trials"):
        table.add_column(col, justify="right" if col == "trials" else "left")
    for k, v in s["counts"].items():
        if v:
            table.add_row(k, str(v))
    out.print(table)
    if best:
        out.print(f"best {first.metric} ({first.mode}): {best[first.metric]:.4g}  trial {best['trial_id']} "
                  f"({best.get('family', '')})  {_params(best)}", highlight=False, soft_wrap=True)  # fmt: skip
    else:
        out.print("best: no completed trial yet")
    out.print(
        f"  full config: ranksearch best {sweep}    dashboard: ranksearch report {sweep}", highlight=False
    )


STATUS_EPILOG = "Examples:\n\n  ranksearch status quickstart\n\n  ranksearch status ranksearch-runs/sweeps/lora-b16 --json"


def best(
    sweep: SweepArg,
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the YAML here (default: print)")
    ] = None,
    trial: Annotated[str | None, typer.Option(help="this trial instead of the best one")] = None,
    register: Annotated[
        str | None,
        typer.Option(help="put the trial's merged model in the MLflow model registry under this name"),
    ] = None,
    alias: Annotated[
        str, typer.Option(help="with --register: the alias pointed at the new version")
    ] = "champion",
    tracking_uri: TrackingUri = None,
    storage: Storage = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Print the best configuration of a sweep as a ready-to-run trial YAML (every field spelled out).

    The best trial is the completed trial with the best final value of the first objective, as the sweep
    itself reports it. Run it again with: ranksearch trial best.yaml
    """
    from ranksearch.config import dump_trial_config
    from ranksearch.report.data import best_row, load_sweep, trial_params
    from ranksearch.space import load_space

    data = load_sweep(_sweep(sweep, storage), history=False, tracking_uri=tracking_uri)
    row = best_row(data, trial)
    if row is None:
        raise RanksearchError(
            f"sweep {data.folder} has no completed trial yet (see: ranksearch status {sweep})"
        )
    params = trial_params(data.folder, row["trial_id"])
    space = load_space(data.folder / "space.yaml")
    if space.spec.one_shot:  # a retrained allocation: its config (the rank pattern) is in its trial folder
        from ranksearch.config import load_trial_config

        config = load_trial_config(data.folder / "trials" / row["trial_id"] / "config.yaml")
    else:
        config = space.trial_config(params)
    metrics = {o.metric: row.get(o.metric) for o in data.objectives}
    header = (
        f"# trial {row['trial_id']} ({row.get('status')}) of sweep {data.manifest.name}: "
        + ", ".join(f"{k} = {v:.6g}" for k, v in metrics.items() if isinstance(v, int | float))
        + f"\n# parameters: {json.dumps(params, default=str)}\n# run it again: ranksearch trial "
        + (str(out_file) if out_file else "best.yaml")
        + "\n"
    )
    text = header + dump_trial_config(config)
    if out_file:
        out_file.write_text(text)
    registered = _register(data, row, register, alias, quiet or as_json) if register else None
    if as_json:
        _print_json({"trial_id": row["trial_id"], "metrics": metrics, "params": params,
                     "config": config.model_dump(mode="json"), "path": str(out_file) if out_file else None,
                     "registered": registered})  # fmt: skip
    elif registered:
        reg = registered["registered"]
        out.print(reg["uri"] if quiet else f"registered trial {row['trial_id']} as {reg['name']} version "
                  f"{reg['version']} (alias {reg['alias']}): {reg['uri']}\n  load with MLflow: "
                  f"mlflow.pyfunc.load_model({reg['uri']!r})", highlight=False, soft_wrap=True)  # fmt: skip
    elif out_file:
        out.print(str(out_file) if quiet else f"wrote {out_file} (trial {row['trial_id']})", highlight=False)
    else:
        typer.echo(text if not quiet else dump_trial_config(config), nl=False)


def _register(data: Any, row: dict[str, Any], name: str, alias: str, silent: bool) -> dict[str, Any]:
    """Export the trial into SWEEP/exports/<trial> (once), log it as its run's MLflow model, register it."""
    from ranksearch.export import export_trial, log_export
    from ranksearch.report.data import trial_folder
    from ranksearch.report.detail import run_ids

    tid = str(row["trial_id"])
    if row.get("status") != "completed":
        raise RanksearchError(
            f"trial {tid} did not complete ({row.get('status')}): it has no model to register"
        )
    if not data.manifest.tracking_uri:
        from ranksearch.sweep.signing import TrustError

        raise TrustError(
            f"{data.folder} was not created by you (sweep.json is not signed by your ranksearch key): pass "
            "--tracking-uri to name the MLflow store to register in"
        )
    source = trial_folder(data.folder, tid)
    if source is None:
        raise RanksearchError(f"trial {tid} has no adapter.safetensors under {data.folder / 'trials' / tid}")
    run = run_ids(data)[0].get(tid)
    if run is None:
        raise RanksearchError(
            f"trial {tid} has no MLflow run in {data.manifest.tracking_uri}: nothing to link to"
        )
    target = data.folder / "exports" / tid
    if not (target / "export.json").is_file():
        if not silent:
            err.print(f"exporting trial {tid} to {target}", highlight=False)
        export_trial(source, target)
    return log_export(target, (data.manifest.tracking_uri, run), name, alias)


BEST_EPILOG = (
    "Examples:\n\n  ranksearch best quickstart > best.yaml && ranksearch trial best.yaml\n\n"
    "  ranksearch best quickstart --trial 3f2a1b0c --out trial.yaml\n\n"
    "  ranksearch best quickstart --register quickstart-clip   # the champion in the MLflow model registry"
)


def _params(row: dict[str, Any]) -> str:
    return " ".join(
        f"{k[6:]}={v:.3g}" if isinstance(v, float) else f"{k[6:]}={v}"
        for k, v in row.items()
        if k.startswith("param:")
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
