"""``ranksearch replay``: a typer-compatible function, registered by ``ranksearch.cli`` (heavy imports inside)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

REPLAY_EPILOG = (
    "Examples:\n\n"
    "  ranksearch replay bench/data/world/table.parquet --space bench/spaces/world.yaml\n\n"
    "  ranksearch replay hpolib.parquet --space bench/spaces/hpolib.yaml --seeds 50 --budget 100x --out replay/\n\n"
    "  ranksearch replay table.parquet --space space.yaml --methods random,default --json"
)


def replay(
    table: Annotated[
        Path, typer.Argument(help="replay table (parquet; format: docs/replay.md)", metavar="TABLE")
    ],
    space: Annotated[
        Path, typer.Option("--space", help="search-space YAML whose parameters are table columns")
    ],
    seeds: Annotated[int, typer.Option(help="sweep seeds per method (medians and CIs over them)")] = 50,
    workers: Annotated[
        int | None, typer.Option(help="trials at once (default: the space's concurrency)")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            help="compute per sweep: seconds (3600, 3600s), 90m, 2h, or 50x (full runs); default 50x"
        ),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="comma-separated: random, random+asha, tpe, tpe+asha, default, ray-stock, nsga2, "
            "tpe+asha-complete (default: all but the last)"
        ),
    ] = None,
    grace: Annotated[
        str | None,
        typer.Option(
            help="ASHA grace period for every ASHA method: evaluations, or auto (from the table's early/final "
            "rank correlation); default the space's"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="folder for summary.json, regret.png, hypervolume.png")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON on stdout")] = False,
) -> None:
    """Replay sweeps against a recorded table in simulated time: the real searcher and Ray scheduler, no training.

    Compares random search, random+ASHA, TPE, TPE+ASHA, ranksearch's default (the space as `sweep` runs it), Ray
    Tune's stock OptunaSearch+ASHA and, with several objectives, NSGA-II, at equal compute. Prints the table's
    noise gate first, then regret (and hypervolume) with 95 % bootstrap intervals over the sweep seeds.
    """
    from rich.console import Console

    from ranksearch.replay.run import _json, report_lines, run_replay

    err = Console(stderr=True)
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    g: int | str | None = grace
    if grace is not None and grace != "auto":
        g = int(grace) if grace.isdigit() else grace  # anything else: run_replay names the problem
    show = err.is_terminal and not as_json
    if show:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("replaying", total=None)

            def progress(method: str, done: int, total: int) -> None:
                bar.update(task, total=total, completed=done, description=f"replaying {method}")

            _, summary = run_replay(table, space, seeds=seeds, workers=workers, budget=budget, methods=names,
                                    grace=g, out=out, progress=progress)  # fmt: skip
    else:
        _, summary = run_replay(
            table, space, seeds=seeds, workers=workers, budget=budget, methods=names, grace=g, out=out
        )
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=1, default=_json) + "\n")
        return
    Console().print("\n".join(report_lines(summary)), highlight=False, soft_wrap=True)
    if out is not None:
        err.print(f"wrote {out}/summary.json and plots", highlight=False)
