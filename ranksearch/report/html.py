"""Render the sweep dashboard: one self-contained HTML file (plotly.js inlined once, no network to view it).

The Jinja2 template lives in ``dashboards/templates/report.html.j2``, which the wheel installs as the package
``ranksearch.dashboards`` (``$RANKSEARCH_DASHBOARDS`` points elsewhere). ``build_report`` writes ``<sweep folder>/report.html``; ``log_to_parent`` adds it to the sweep's
parent MLflow run.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import ranksearch.report.detail as detail
import ranksearch.report.figures as F
import ranksearch.report.importance as importance
from ranksearch.errors import RanksearchError
from ranksearch.report.data import SweepData, load_sweep, open_sweep

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
MAX_ROWS = 500  # leaderboard rows in the page; the rest stay in trials.parquet


def dashboards_dir() -> Path:
    """The ``dashboards/`` folder (templates, saved views): ``$RANKSEARCH_DASHBOARDS``, else the one installed with
    the package (``ranksearch.dashboards``, the repository's top-level ``dashboards/`` in an editable install)."""
    env = os.environ.get("RANKSEARCH_DASHBOARDS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "dashboards"
    if repo.is_dir():  # a checkout (editable install or PYTHONPATH): the working copy, never a stale install
        return repo
    from importlib.util import find_spec

    spec = find_spec(
        "ranksearch.dashboards"
    )  # data, not code: a namespace package; its location is the folder
    return Path(next(iter(spec.submodule_search_locations or []), repo)) if spec else repo


@dataclass
class Report:
    """What ``build_report`` made: the file, its size, per-stage seconds and the sections with data."""

    path: Path
    bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    sections: dict[str, int] = field(default_factory=dict)  # section id -> items shown (0: no data)
    trials: int = 0  # rows of trials.parquet


def build_report(
    folder: str | Path,
    out: Path | None = None,
    top: int = 10,
    progress: Any = None,
    *,
    refresh_s: float | None = None,
    mlflow_url: str | None = None,
    tracking_uri: str | None = None,
    details: int = detail.TOP,
) -> Report:
    """Load a sweep folder and write its dashboard (default ``<folder>/report.html``).

    Args:
        folder: the sweep folder (or name; see ``data.find_sweep``).
        out: output file (default: in the sweep folder).
        top: trials shown in the learning curves (allocation heatmaps show ``min(top, 4)``).
        progress: optional callable(str) told each stage, for a progress display.
        refresh_s: the page reloads itself every this many seconds while the sweep runs (``report --watch``).
        mlflow_url: base address of the MLflow UI for run links (default: the tracking server, or where
            ``ranksearch ui`` serves a sqlite store).
        details: trials with a drill-down panel (the best ones).
    """
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        times[name] = round(now - t0, 3)
        t0 = now

    say("reading the sweep folder")
    data = open_sweep(folder, tracking_uri)
    child = importance.start(data)  # overlaps with everything below (see report.importance)
    load_sweep(data)
    lap("load")
    say("figures")
    figs: dict[str, Any] = {}
    runs, parent = detail.links(data, mlflow_url)
    trials = detail.trial_details(data, details, runs)
    sections = _sections(data, figs, top, {t["id"] for t in trials})
    _add_details(sections, trials)
    lap("figures")
    say("parameter importances (Optuna)")
    imps, n_imp = importance.collect_with_count(child)
    _add_importance(data, sections, figs, imps, n_imp)
    lap("importances")
    say("writing HTML")
    live = refresh_s if refresh_s and data.manifest.status == "running" else None
    body = _render(data, sections, figs, trials, parent, live, pio, get_plotlyjs())
    path = Path(out) if out else data.folder / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)  # atomic: a browser reloading during --watch never reads half a page
    lap("render")
    return Report(path, path.stat().st_size, times, {s["id"]: s["items"] for s in sections}, len(data.trials))


def _signature(folder: Path) -> tuple:
    """What changes when a sweep makes progress: the manifest, the trials table and Tune's per-trial results."""

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    results = [mtime(p) for p in folder.glob("tune/*/result.json")]
    return (
        mtime(folder / "sweep.json"),
        mtime(folder / "trials.parquet"),
        len(results),
        max(results, default=0.0),
    )


def watch_report(
    folder: str | Path,
    out: Path | None = None,
    top: int = 10,
    every: float = 30.0,
    on_build: Any = None,
    *,
    mlflow_url: str | None = None,
    tracking_uri: str | None = None,
    poll_s: float = 2.0,
    max_s: float | None = None,
) -> Report:
    """Rebuild the report whenever the sweep's files change (at most every ``every`` seconds) until the sweep
    is no longer running; the page, built with ``refresh_s=every``, reloads itself meanwhile.

    Args:
        on_build: called as ``on_build(report, final)`` after each build.
        poll_s: how often to look at the sweep's files between rebuilds.
        max_s: stop after this many seconds even if the sweep still runs (tests).

    Returns:
        The last ``Report`` (built after the sweep stopped running, unless stopped by ``max_s``).
    """
    from ranksearch.report.data import find_sweep
    from ranksearch.sweep.folder import Manifest

    folder = find_sweep(folder)
    start = time.monotonic()
    seen, last_build, report = None, -math.inf, None
    while True:
        running = Manifest.load(folder).status == "running"
        sig = _signature(folder)
        due = time.monotonic() - last_build >= every or not running
        if sig != seen and due:
            report = build_report(
                folder, out, top, refresh_s=every, mlflow_url=mlflow_url, tracking_uri=tracking_uri
            )
            seen, last_build = sig, time.monotonic()
            if on_build is not None:
                on_build(report, not running)
        if not running and report is not None and sig == seen:
            return report
        if max_s is not None and time.monotonic() - start > max_s:
            return (
                report
                if report is not None
                else build_report(folder, out, top, mlflow_url=mlflow_url, tracking_uri=tracking_uri)
            )
        time.sleep(poll_s)


def _sections(data: SweepData, figs: dict[str, Any], top: int, linked: set[str]) -> list[dict]:
    """The page's sections in order; each names its figures (added to ``figs``) and/or an HTML table."""
    m = data.first.metric
    multi = F.multi_objective(data)
    out: list[dict] = []

    def add(sid: str, title: str, note: str, items: int, figures: list[tuple[str, Any]] = (), **kw: Any):
        names = []
        for name, fig in figures:
            if fig is not None:
                figs[name] = F.style(fig)
                names.append(name)
        out.append({"id": sid, "title": title, "note": note, "items": items, "figures": names, **kw})

    board = _leaderboard(data, linked)
    star = " * = on the Pareto front." if multi else ""
    add("leaderboard", "Leaderboard", f"Best report of {m} per trial (not its last); completed trials first. "
        f"Click a column to sort, a trial to open its details.{star}", board[1], table=board[0])  # fmt: skip
    _add_oneshot(data, add)
    hist = F.history(data)
    add("history", "Optimisation history", f"{m} of every finished trial and the best so far (completed trials), "
        "by trial number and by compute spent, pruned trials included.", _n(hist), [("fig-history", hist)],
        empty="no completed trial yet", wide=True)  # fmt: skip
    ax = F.pareto_axes(data)
    trade = F.tradeoff(data)
    if multi:
        title, note = (
            "Pareto front",
            f"{ax[0][0]} ({ax[0][1]}) against {ax[1][0]} ({ax[1][1]}), completed trials.",
        )
    else:
        title, note = (
            "Accuracy vs size",
            f"{m} against trainable parameters, completed trials (what each point costs).",
        )
    add("tradeoff", title, note, _n(trade), [("fig-tradeoff", trade)],
        empty="no completed trial with both metrics yet")  # fmt: skip
    bn = F.base_vs_new(data)
    add("base-new", "Base vs new accuracy", "Validation accuracy on base and on new classes (base-to-new); dotted: "
        "equal harmonic mean.", _n(bn), [("fig-base-new", bn)],
        empty="this sweep does not report val/base and val/new")  # fmt: skip
    add("importance", "Parameter importance", "Optuna's importance evaluator on the sweep's study "
        "(optuna.journal): how much of the first objective's variation each parameter explains.", 0, [],
        empty="no importances yet: they need an Optuna journal and at least 3 completed trials")  # fmt: skip
    par = F.parallel(data)
    add("parallel", "Parallel coordinates", "Every parameter of the completed trials, then the objectives; drag "
        "along an axis to filter (n/a: the parameter belongs to another family).", _n(par),
        [("fig-parallel", par)], empty="no completed trial yet", wide=True)  # fmt: skip
    sl = F.slices(data)
    add("slices", "Slice plots", f"{m} of each completed trial against each parameter (darker: later trials).",
        _n(sl), [("fig-slices", sl)], empty="no completed trial yet", wide=True)  # fmt: skip
    curves = F.learning_curves(data, top)
    add("curves", "Learning curves", f"{m} at every validation report of the top {top} trials, over all trials' "
        "median and interquartile band.", _n(curves), [("fig-curves", curves)],
        empty="no per-report history found (tune/*/result.json or trials/*/metrics.json)")  # fmt: skip
    heat = F.top_allocations(data, min(top, 4))
    where, bars, used = F.rank_where(data)
    add("allocation", "Rank allocation", "Final per-layer rank of the top trials, and where rank goes in good "
        f"trials (top 20 % of completed trials, {used} allocation tables).", len(heat) + (1 if where else 0),
        [(f"fig-alloc-{tid}", fig) for tid, fig in heat] + [("fig-rank-where", where), ("fig-rank-modules", bars)],
        empty="no allocation tables (trials/*/allocation.parquet) for completed trials")  # fmt: skip
    fam_table, fam_fig = F.family_summary(data)
    add("families", "Per-family summary", f"Trials by state and {m} per adapter family.", len(fam_table),
        [("fig-families", fam_fig)], table=_simple_table(fam_table) if len(fam_table) else None)  # fmt: skip
    return out


def _add_oneshot(data: SweepData, add: Any) -> None:
    """A one-shot sweep (``oneshot.json`` in its folder): the estimate vs retrained table, Kendall τ and the front."""
    from ranksearch.oneshot.pipeline import SEARCH, SUMMARY

    path = data.folder / SUMMARY
    if not path.is_file():
        return
    from ranksearch.oneshot.report import oneshot_figures, oneshot_html_table, oneshot_note

    summary = json.loads(path.read_text())
    evals = None
    if (data.folder / SEARCH / "evaluations.parquet").is_file():
        import pyarrow.parquet as pq

        evals = pq.read_table(data.folder / SEARCH / "evaluations.parquet").to_pylist()
    add("oneshot", "One-shot search: estimate vs retrained", oneshot_note(summary), len(summary["rows"]),
        oneshot_figures(summary, evals), table=oneshot_html_table(summary),
        empty="no allocation retrained yet")  # fmt: skip


def _add_details(sections: list[dict], trials: list[dict]) -> None:
    sections.append({
        "id": "trials", "title": "Trial details", "items": len(trials), "figures": [], "details": True,
        "note": f"Parameters, metrics, learning curves, final rank allocation and the MLflow run of the best "
                f"{len(trials)} trials. Pick one here or click it in the leaderboard.",
        "empty": "no trial has reported yet",
    })  # fmt: skip


def _add_importance(
    data: SweepData, sections: list[dict], figs: dict[str, Any], imps: dict | None, trials: int
) -> None:
    """Put the importance bars (computed last, in a child process) first in their section, with a caveat
    when they rest on few trials."""
    fig = F.importances(imps, data.first.metric, trials)
    if fig is None:
        return
    figs["fig-importance"] = F.style(fig)
    section = next(s for s in sections if s["id"] == "importance")
    section["figures"].insert(0, "fig-importance")
    section["items"] += len(imps or {})
    if trials < F.FEW_TRIALS:
        section["caveat"] = (
            f"Importances from only {trials} completed trials are a first impression: with this few points "
            f"the ranking changes from run to run (about {F.FEW_TRIALS} or more make it stable)."
        )


def _n(fig: Any) -> int:
    """Points/values drawn by a figure (for the section's data-items)."""
    if fig is None:
        return 0
    n = 0
    for trace in fig.data:
        for attr in ("x", "z", "dimensions", "y"):
            v = getattr(trace, attr, None)
            if v is not None and len(v):
                n += len(v)
                break
    return n


def _fmt(v: Any) -> tuple[str, str]:
    """(shown text, sort key) of a cell."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "", ""
    if isinstance(v, float):
        return (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"), repr(v)
    return str(v), str(v)


def _leaderboard(data: SweepData, linked: set[str] = frozenset()) -> tuple[str, int]:
    """The sortable leaderboard table (HTML) and its row count; trials in ``linked`` open their details."""
    ranked = data.ranked().head(MAX_ROWS)
    if ranked.empty:
        return "", 0
    m = data.first.metric
    front = F.front_ids(data, ranked)
    test = m.replace("val/", "test/", 1)
    metric_cols = [o.metric for o in data.objectives[1:]] + ["val/base", "val/new", test, "trainable_params"]
    metric_cols.append(
        "oneshot/estimate"
    )  # a one-shot sweep's retrains: the supernet's estimate beside the result
    metric_cols = [c for i, c in enumerate(metric_cols) if c in ranked.columns and c not in metric_cols[:i]]
    head = [
        "#",
        "trial",
        "family",
        "status",
        f"best {m}",
        "at report",
        f"final {m}",
        *metric_cols,
        "parameters",
    ]
    text_cols = {1, 2, 3, len(head) - 1}
    out = ["<div class='tablewrap'><table class='sortable' id='leaderboard-table'><thead><tr>"]
    out += [
        f"<th class='{'text' if i in text_cols else ''}'>{html.escape(h)}</th>" for i, h in enumerate(head)
    ]
    out.append("</tr></thead><tbody>")
    for i, r in enumerate(ranked.to_dict("records"), 1):
        # the family column says whose parameter it is ("adapter.r", not "lora:adapter.r"), and the family
        params = " ".join(
            f"{k[6:].split(':', 1)[-1]}={_param_text(v)}" for k, v in r.items()
            if k.startswith("param:") and k != "param:adapter.family" and _fmt(v)[0] != ""
        )  # fmt: skip
        tid = str(r["trial_id"])
        cells = [(str(i), str(i)), (tid + (" *" if tid in front else ""), tid), _fmt(r.get("family")),
                 _fmt(r.get("status")), _fmt(r.get("rank_value")), _fmt(r.get("best_report")), _fmt(r.get(m)),
                 *[_fmt(r.get(c)) for c in metric_cols]]  # fmt: skip
        row = [f"<tr class='{'pareto' if tid in front else ''}'>"]
        for j, (shown, key) in enumerate(cells):
            cls = "text" if j in text_cols else ""
            if j == 3:
                cls += f" status-{html.escape(shown)}"
            text = html.escape(shown)
            if j == 1 and tid in linked:
                text = f"<a class='trial-link' href='#trial-{html.escape(tid)}'>{text}</a>"
            row.append(f"<td class='{cls}' data-v='{html.escape(key)}'>{text}</td>")
        row.append(f"<td class='params' data-v='{html.escape(params)}'>{html.escape(params)}</td></tr>")
        out.append("".join(row))
    out.append("</tbody></table></div>")
    shown, total = len(ranked), len(data.ranked())
    if total > shown:
        out.append(
            f"<p class='note'>showing the best {shown} of {total} trials; all are in trials.parquet</p>"
        )
    return "".join(out), shown


def _param_text(v: Any) -> str:
    return F.fmt_number(v) if isinstance(v, float) else str(v)


def _simple_table(df: pd.DataFrame) -> str:
    out = ["<table class='sortable'><thead><tr>"]
    out += [
        f"<th class='{'text' if i == 0 else ''}'>{html.escape(str(c))}</th>" for i, c in enumerate(df.columns)
    ]
    out.append("</tr></thead><tbody>")
    for r in df.itertuples(index=False):
        cells = [_fmt(v) for v in r]
        out.append(
            "<tr>"
            + "".join(
                f"<td class='{'text' if i == 0 else ''}' data-v='{html.escape(k)}'>{html.escape(s)}</td>"
                for i, (s, k) in enumerate(cells)
            )
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _script_json(text: str) -> str:
    """JSON text made safe inside a <script> element: every "<" (only ever inside a JSON string) becomes its
    escape, so no value (a config, an error message) can close the element or open a comment."""
    return text.replace("<", "\\u003c")


def _render(
    data: SweepData, sections: list[dict], figs: dict[str, Any], trials: list[dict], parent: dict | None,
    refresh_s: float | None, pio: Any, plotly_js: str,
) -> str:  # fmt: skip
    from jinja2 import Environment, FileSystemLoader, TemplateNotFound, select_autoescape
    from markupsafe import Markup

    root = dashboards_dir() / "templates"
    env = Environment(loader=FileSystemLoader(str(root)), autoescape=select_autoescape(["html", "j2"]))
    try:
        template = env.get_template(TEMPLATE)
    except TemplateNotFound:
        raise RanksearchError(
            f"report template {root / TEMPLATE} not found (set $RANKSEARCH_DASHBOARDS to the dashboards/ folder)"
        ) from None
    # one JSON object of all figures (drawn on load), one of the trial details (drawn when a trial is opened)
    parts = [f"{json.dumps(k)}: {pio.to_json(f, validate=False)}" for k, f in figs.items()]
    figures_json = _script_json("{" + ", ".join(parts) + "}")
    records = []
    for t in trials:
        records.append(json.dumps(t, default=str, allow_nan=False))  # figure dicts of plain values
    trials_json = _script_json("[" + ", ".join(records) + "]")
    t = data.trials
    counts = t["status"].value_counts().to_dict() if len(t) else {}
    best = data.ranked()
    best = best[best["status"] == "completed"].head(1)
    summary = [("trials", len(t))] + [
        (s, int(counts.get(s, 0))) for s in ("completed", "pruned", "failed", "error")
    ]
    if len(best):
        summary.append(
            (f"best {data.first.metric}", f"{best['rank_value'].iloc[0]:.4g} ({best['trial_id'].iloc[0]})")
        )
    sweep = {
        "name": data.manifest.name, "status": data.manifest.status, "trials": len(t), "folder": str(data.folder),
        "objectives": ", ".join(f"{o.metric} ({o.mode})" for o in data.objectives),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "parent": parent, "refresh_s": refresh_s,
    }  # fmt: skip
    for s in sections:
        if s.get("table"):
            s["table"] = Markup(s["table"])
    return template.render(
        sweep=sweep, summary=summary, sections=sections, plotly_js=Markup(plotly_js),
        figures_json=Markup(figures_json), trials_json=Markup(trials_json),
    )  # fmt: skip


def log_to_parent(data_folder: Path, path: Path, tracking_uri: str | None = None) -> str | None:
    """Log the report to the sweep's parent MLflow run (artifact path ``report/``); returns the run id.

    Only to a store this user's sweep recorded, or the one ``tracking_uri`` names (``data.tracking_store``).
    """
    from ranksearch.report.data import tracking_store
    from ranksearch.sweep.folder import Manifest

    manifest = Manifest.load(data_folder)
    uri = tracking_store(data_folder, manifest.tracking_uri, tracking_uri)
    if not manifest.parent_run_id or not uri:
        return None
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).log_artifact(manifest.parent_run_id, str(path), "report")
    return manifest.parent_run_id
