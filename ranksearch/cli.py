"""The ``ranksearch`` command line. Each command parses its options and calls one library function.

Heavy libraries (torch, open_clip, ray, mlflow) are imported inside the commands so ``--help`` is instant.
Errors that are the user's to fix (bad config, missing data) print one clear message and exit 2; failures
while running exit 1; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ranksearch.errors import ConfigError, RanksearchError
from ranksearch.quiet import configure_logging

app = typer.Typer(
    name="ranksearch",
    help=(
        "Find which low-rank adapter, placed where, with how much rank, works best for a CLIP model.\n\n"
        "Examples:\n\n"
        "  ranksearch trial search_spaces/lora.yaml            # one trial in-process (debug mode, no Ray)\n\n"
        "  ranksearch trial search_spaces/lora.yaml --debug --set adapter.r=4\n\n"
        "  ranksearch validate search_spaces/lora.yaml\n\n"
        "  ranksearch pretrain                                 # build the offline tiny CLIP checkpoint"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True)
out = Console()


def load_config_file(path: Path, overrides: list[str], params_json: str | None):
    """A trial config from a trial file or a search-space file (each parameter's default, or ``--params``)."""
    from ranksearch.api import load_config

    params = None
    if params_json:
        try:
            params = json.loads(params_json)
        except json.JSONDecodeError as e:
            raise ConfigError([("--params", f"not valid JSON: {e}")]) from None
        if not isinstance(params, dict):
            raise ConfigError([("--params", "must be a JSON object of parameter name -> value")])
    return load_config(path, params=params, overrides=overrides)


def resolved_config_text(config) -> str:
    """The config as YAML, then (as YAML comments) every preset field with its source, marking overridden ones."""
    from ranksearch.config.load import dump_trial_config
    from ranksearch.config.presets import PRESETS

    text = dump_trial_config(config)
    if config.preset is None:
        return text
    preset = PRESETS[config.preset]
    lines = [f"# preset {preset.name}: {preset.summary}"]
    for path, (value, source) in preset.fields.items():
        node = config
        for part in path.split("."):
            node = getattr(node, part, None)
        same = node == value or (isinstance(value, tuple) and tuple(node or ()) == value)
        note = "" if same else f"  [overridden: preset {value!r}]"
        lines.append(f"#   {path} = {node!r}{note}  <- {source}")
    return text + "\n".join(lines)


def metrics_table(metrics: dict[str, float]) -> Table:
    """Zero-shot vs adapted, per split and metric."""
    table = Table(title="trial metrics", show_lines=False)
    table.add_column("split / metric")
    table.add_column("zero-shot", justify="right")
    table.add_column("adapted", justify="right")
    table.add_column("Δ", justify="right")
    keys = [k for k in metrics if k.startswith(("val/", "test/", "cl/")) and not k.endswith("_std")]
    for key in sorted(keys, key=lambda k: (k.startswith("test/"), k.startswith("cl/"), k)):
        zs, ad, std = metrics.get(f"zs/{key}"), metrics[key], metrics.get(f"{key}_std")
        delta = f"{ad - zs:+.1f}" if zs is not None else ""
        shown = f"{ad:.1f} ± {std:.1f}" if std is not None else f"{ad:.1f}"
        table.add_row(key, f"{zs:.1f}" if zs is not None else "-", shown, delta)
    table.caption = f"trainable parameters: {int(metrics.get('trainable_params', 0)):,}"
    return table


@app.command(
    epilog=(
        "Examples:\n\n"
        "  ranksearch trial search_spaces/lora.yaml\n\n"
        "  ranksearch trial search_spaces/dra.yaml --debug                   # 20 steps, verbose, raises\n\n"
        "  ranksearch trial search_spaces/codyra.yaml --show-config          # the resolved config, sources\n\n"
        '  ranksearch trial search_spaces/all.yaml --params \'{"adapter.family": "rlrr"}\'\n\n'
        "  ranksearch trial my_trial.yaml --set adapter.r=8 --set train.lr=1e-3 --no-track"
    )
)
def trial(
    config_file: Annotated[Path, typer.Argument(help="trial config or search-space YAML", metavar="FILE")],
    set_: Annotated[
        list[str], typer.Option("--set", help="override a field: section.field=value (repeatable)")
    ] = [],  # noqa: B006
    params: Annotated[
        str | None, typer.Option(help="search-space parameters as JSON (default: each default)")
    ] = None,
    debug: Annotated[
        bool, typer.Option(help="tiny budget, verbose logs, exceptions raised for a debugger")
    ] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="parent folder of the trial's output folder")] = Path(
        "ranksearch-runs/trials"
    ),
    track: Annotated[bool, typer.Option(help="log the trial to MLflow")] = True,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: sqlite file)")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="no progress bar; print only the metrics")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print final metrics as JSON")] = False,
    seeds: Annotated[
        str | None, typer.Option(help="comma-separated seeds: run the trial once per seed, report mean ± std")
    ] = None,
    show_config: Annotated[
        bool,
        typer.Option(
            "--show-config", help="print the resolved config (preset filled in, with its sources) and exit"
        ),
    ] = False,
) -> None:
    """Run ONE trial in this process, without Ray: the sweep's code path, quick and breakpoint-friendly.

    Prints zero-shot and adapted accuracy (base / new / harmonic mean under base-to-new) and logs the run,
    its per-step metrics, its rank-allocation table (parquet) and its adapter weights to MLflow. With
    --seeds, one run per seed and the mean ± std over them.
    """
    configure_logging(debug)
    config = load_config_file(config_file, set_, params)
    if show_config:
        if debug:
            from ranksearch.api import debug_budget

            config = debug_budget(config)
        typer.echo(resolved_config_text(config))
        return
    from ranksearch.api import trial as run

    result = run(
        config, seeds=_parse_seeds(seeds) if seeds else None, out_dir=out_dir, track=track,
        tracking_uri=tracking_uri, debug=debug, progress=not (quiet or as_json), source=config_file,
    )  # fmt: skip
    if as_json:
        out.print_json(json.dumps(result.metrics))
        return
    out.print(metrics_table(result.metrics))
    out.print(f"outputs: {result.folder}")
    for uri, run_id in result.runs:
        out.print(f"MLflow run {run_id} in {uri}")
    if result.runs:
        out.print(f"  view: mlflow ui --backend-store-uri {result.runs[0][0]}")


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError([("--seeds", f"expected comma-separated integers, got {text!r}")]) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError([("--seeds", f"expected distinct seeds, got {text!r}")])
    return seeds


@app.command(
    epilog="Examples:\n\n  ranksearch validate search_spaces/lora.yaml\n\n  ranksearch validate my_trial.yaml --set train.lr=0"
)
def validate(
    files: Annotated[list[Path], typer.Argument(help="trial configs or search spaces", metavar="FILE...")],
    set_: Annotated[list[str], typer.Option("--set", help="override a field: section.field=value")] = [],  # noqa: B006
) -> None:
    """Check configs without running anything; print every problem with its field path (exit 2 if any)."""
    from rich.markup import escape

    failed = 0
    for path in files:
        try:
            config = load_config_file(path, set_, None)
        except ConfigError as e:
            failed += 1
            console.print(
                f"[red]✗[/red] {escape(printable(str(path)))}: {escape(printable(e.describe(with_source=False)))}",
                highlight=False,
                soft_wrap=True,
            )
            continue
        out.print(
            f"[green]✓ {escape(printable(str(path)))}[/green]: {config.adapter.family} on {config.placement.towers} "
            f"{config.placement.layers} {','.join(config.placement.matrices)}, task {config.data.task}"
        )
    if failed:
        raise typer.Exit(2)


@app.command(epilog="Examples:\n\n  ranksearch pretrain\n\n  ranksearch pretrain --force")
def pretrain(
    model: Annotated[
        str, typer.Option(help="built-in model to pretrain: rs-tiny-clip | rs-small-clip")
    ] = "rs-tiny-clip",
    force: Annotated[bool, typer.Option(help="rebuild even if a cached checkpoint exists")] = False,
) -> None:
    """Pretrain the built-in tiny CLIP on the offline shape world (one-time, a few minutes) and cache it.

    Every command that uses ``model.pretrained: shapeworld`` builds it on first use; this command only makes
    that step explicit.
    """
    configure_logging(False)
    from ranksearch.pretrain import checkpoint_path, default_recipe, ensure_checkpoint

    cached = checkpoint_path(default_recipe(model))
    if force and cached.is_file():
        cached.rename(cached.with_suffix(".pt.old"))  # keep the previous checkpoint rather than delete it
    path = ensure_checkpoint(model)
    out.print(f"checkpoint: {path}")
    summary = path.with_suffix(".json")
    if summary.is_file():
        metrics = json.loads(summary.read_text()).get("metrics", {})
        shown = {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}
        out.print(f"pretraining metrics: {shown}")


@app.command(
    name="prepare-data",
    epilog="Examples:\n\n  ranksearch prepare-data eurosat --root ~/data\n\n  ranksearch prepare-data dtd --root $DATA",
)
def prepare_data(
    name: Annotated[str, typer.Argument(help="dataset name, e.g. eurosat, dtd, oxford_pets, fgvc_aircraft")],
    root: Annotated[Path, typer.Option(help="the $DATA folder the CoOp layout lives in")],
) -> None:
    """Download (where a public source exists), verify and arrange a dataset into the CoOp $DATA layout.

    Never called by training, evaluation or tests. Where official split files cannot be fetched it says so and
    tells you where to put them; ImageNet and its variants must be brought by you (licence).
    """
    configure_logging(False)
    from ranksearch.data.prepare import prepare_dataset

    folder = prepare_dataset(name, root.expanduser())
    out.print(f"ready: {folder}\n  use it with: --set data.task={name} --set data.root={root}")


@app.command(
    epilog=(
        "Examples:\n\n  ranksearch export ranksearch-runs/trials/20261122-080651-lora --out exported/\n\n"
        "  ranksearch export ranksearch-runs/sweeps/quickstart --out exported/         # the sweep's best trial\n\n"
        "  ranksearch export quickstart --trial 3f2a1b0c --out exported/\n\n"
        "  ranksearch export 5cabd3a535b14d719a57350ce3fcd0e9 --out exported/          # an MLflow run id\n\n"
        "  python -c 'import open_clip; m = open_clip.create_model(\"local-dir:exported\")'"
    )
)
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="a finished trial's folder, a sweep folder or name (its best trial), or an MLflow run id",
            metavar="TRIAL_DIR|SWEEP|RUN",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="new folder to write the export to")],
    trial_id: Annotated[
        str | None, typer.Option("--trial", help="with a sweep: export this trial instead of the best")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="with a run id: the MLflow store (default: local sweeps, $MLFLOW_TRACKING_URI)"),
    ] = None,
    mlflow: Annotated[
        bool,
        typer.Option("--mlflow/--no-mlflow", help="log the export as an MLflow model of the trial's run"),
    ] = True,
    register: Annotated[
        str | None, typer.Option(help="also register it in the MLflow model registry under this name")
    ] = None,
    alias: Annotated[
        str, typer.Option(help="with --register: the alias pointed at the new version")
    ] = "champion",
    allocation: Annotated[
        int | None,
        typer.Option(
            min=0, help="with a one-shot sweep: export this scored allocation (its evaluation number)"
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the export folder")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the export manifest as JSON")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show the full traceback on errors")] = False,
) -> None:
    """Merge a trial's adapter into a plain open_clip checkpoint that open_clip alone loads.

    Also writes the adapter-only weights and the rank allocation as a PEFT-style rank_pattern JSON. A family
    that cannot merge (DRA-style) is exported as base model + adapter, and the manifest says so. A sweep
    exports its best trial (or --trial); an MLflow run id downloads that run's artifacts first (a sweep's
    parent run id means its best trial).
    """
    configure_logging(False)
    from ranksearch.api import export as run

    manifest = run(
        source,
        out_dir,
        trial=trial_id,
        tracking_uri=tracking_uri,
        mlflow=mlflow,
        register=register,
        alias=alias,
        allocation=allocation,
    )
    what = manifest["exported"]
    if as_json:
        out.print_json(json.dumps(manifest))
        return
    if quiet:
        out.print(str(out_dir), highlight=False, soft_wrap=True)
        return
    out.print(
        f"exported {what} to {out_dir} "
        f"({'merged' if manifest['merged'] else 'NOT merged: ' + manifest['note']})",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    out.print(f"  load with: {manifest['load_with']}", highlight=False, soft_wrap=True)
    logged = manifest.get("mlflow")
    if logged:
        reg = logged.get("registered")
        where = (
            f"registered as {reg['name']} version {reg['version']}: {reg['uri']}"
            if reg
            else logged["model_uri"]
        )
        out.print(f"  MLflow model of run {logged['run_id']}: {where}", highlight=False, soft_wrap=True)
        out.print(f"  load with MLflow: mlflow.pyfunc.load_model({(reg or {}).get('uri', logged['model_uri'])!r})",
                  highlight=False, soft_wrap=True)  # fmt: skip


@app.command(epilog="Example:\n\n  ranksearch families")
def families() -> None:
    """List the registered adapter families."""
    from ranksearch.adapters import all_families

    table = Table(title="adapter families")
    for col in ("name", "mergeable", "parameter prefix", "description"):
        table.add_column(col)
    for name, fam in sorted(all_families().items()):
        table.add_row(name, "yes" if fam.mergeable else "no", fam.prefix, fam.description)
    out.print(table)


# Sweep dashboard and read-only sweep commands (ranksearch.report.commands; heavy imports inside them).
from ranksearch.report import commands as _report_cmds  # noqa: E402

app.command(epilog=_report_cmds.REPORT_EPILOG)(_report_cmds.report)
app.command(epilog=_report_cmds.UI_EPILOG)(_report_cmds.ui)
app.command(epilog=_report_cmds.STATUS_EPILOG)(_report_cmds.status)
app.command(epilog=_report_cmds.BEST_EPILOG)(_report_cmds.best)


from ranksearch.sweep.commands import schema, sweep, sync  # noqa: E402  (light: heavy imports happen inside)

app.command()(sweep)  # its docstring carries the examples
app.command()(sync)
from ranksearch.submit import submit  # noqa: E402  (light: ray loads inside the command)

app.command()(submit)
app.command(epilog="Examples:\n\n  ranksearch schema --out ranksearch-space.schema.json")(schema)

from ranksearch.replay.command import REPLAY_EPILOG, replay  # noqa: E402  (light: heavy imports happen inside)

app.command(epilog=REPLAY_EPILOG)(replay)


def _print_version(value: bool) -> None:
    if value:
        from ranksearch import __version__

        out.print(f"ranksearch {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the ranksearch version and exit", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    pass


def printable(text: str) -> str:
    """``text`` safe for any terminal: escapes lone surrogates (undecodable bytes in argv or file names)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _error(message: str) -> None:
    """One error for the user on stderr, never read as rich markup (``params[train.lr]`` stays as written)."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(printable(message))}", highlight=False, soft_wrap=True)


def _usage_message(e: Exception) -> str:
    """One line for a usage error: what is wrong, and where the command's help is."""
    from typer._click.exceptions import NoSuchOption

    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None else "ranksearch"
    if isinstance(e, NoSuchOption):
        message = f"no such option {e.option_name} for '{command}'"
        if e.possibilities:
            message += f" (did you mean {' or '.join(sorted(e.possibilities))}?)"
    else:
        message = e.format_message().strip()
    if not message.endswith((".", "?", ")")):
        message += "."
    return f"{message} See '{command} --help'."


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the app with one error path.

    Usage and input errors (a bad argument, option or config field) print one line naming it and exit 2; a
    failure while working prints one line and exits 1 (``RanksearchError`` subclasses choose); an unexpected
    exception is reported as an internal error (exit 1). Tracebacks only with ``--debug`` or
    ``RANKSEARCH_DEBUG=1``.
    """
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    from typer.exceptions import Abort

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("RANKSEARCH_DEBUG") == "1"
    try:
        rc = app(args=args, prog_name="ranksearch", standalone_mode=False)
    except NoArgsIsHelpError as e:  # bare `ranksearch`: the help is the answer
        e.show()
        sys.exit(2)
    except UsageError as e:
        if debug:
            raise
        _error(_usage_message(e))
        sys.exit(2)
    except ClickException as e:
        if debug:
            raise
        _error(e.format_message())
        sys.exit(e.exit_code)
    except RanksearchError as e:
        if debug:
            raise
        _error(str(e))
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, Abort):
        console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:  # the machine, not ranksearch: disk full, permission denied, a vanished file
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        _error(f"{e.strerror or e}{where}")
        sys.exit(1)
    except Exception as e:
        if debug:
            raise
        _error(
            f"internal error ({type(e).__name__}: {e}); rerun with --debug for the traceback and report it"
        )
        sys.exit(1)
    if isinstance(rc, int) and rc != 0:  # click returns (not raises) Exit codes when standalone_mode=False
        sys.exit(rc)
    return None
