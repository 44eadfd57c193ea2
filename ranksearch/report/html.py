"""Render the sweep dashboard: one self-contained HTML file (plotly.js inlined once, no network to view it).

The Jinja2 template lives in ``dashboards/templates/report.html.j2`` (``$RANKSEARCH_DASHBOARDS`` points
elsewhere). ``build_report`` writes ``<sweep folder>/report.html``; ``log_to_parent`` adds it to the sweep's
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

from ranksearch.errors import RanksearchError
from ranksearch.report import figures as F
from ranksearch.report import importance
from ranksearch.report.data import SweepData, load_sweep, open_sweep

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
MAX_ROWS = 500  # leaderboard rows in the page; the rest stay in trials.parquet


def dashboards_dir() -> Path:
    """The repository's ``dashboards/`` folder (templates, saved views), or ``$RANKSEARCH_DASHBOARDS``."""
    env = os.environ.get("RANKSEARCH_DASHBOARDS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "dashboards"


@dataclass
class Report:
    """What ``build_report`` made: the file, its size, per-stage seconds and the sections with data."""

    path: Path
    bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    sections: dict[str, int] = field(default_factory=dict)  # section id -> items shown (0: no data)


def build_report(folder: str | Path, out: Path | None = None, top: int = 10, progress: Any = None) -> Report:
    """Load a sweep folder and write its dashboard (default ``<folder>/report.html``).

    Args:
        folder: the sweep folder (or name; see ``data.find_sweep``).
        out: output file (default: in the sweep folder).
        top: trials shown in the learning curves (allocation heatmaps show ``min(top, 4)``).
        progress: optional callable(str) told each stage, for a progress display.
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
    data = open_sweep(folder)
    child = importance.start(data)  # overlaps with everything below (see report.importance)
    load_sweep(data)
    lap("load")
    say("figures")
    figs: dict[str, Any] = {}
    sections = _sections(data, figs, top)
    lap("figures")
    say("parameter importances (Optuna)")
    imps = importance.collect(child)
    _add_importance(data, sections, figs, imps)
    lap("importances")
    say("writing HTML")
    body = _render(data, sections, figs, pio, get_plotlyjs())
    path = Path(out) if out else data.folder / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)
    lap("render")
    return Report(path, path.stat().st_size, times, {s["id"]: s["items"] for s in sections})


def _sections(data: SweepData, figs: dict[str, Any], top: int) -> list[dict]:
    """The page's sections in order; each names its figures (added to ``figs``) and/or an HTML table."""
    m = data.first.metric
    out: list[dict] = []

    def add(sid: str, title: str, note: str, items: int, figures: list[tuple[str, Any]] = (), **kw: Any):
        names = []
        for name, fig in figures:
            if fig is not None:
                figs[name] = F.style(fig)
                names.append(name)
        out.append({"id": sid, "title": title, "note": note, "items": items, "figures": names, **kw})

    board = _leaderboard(data)
    add("leaderboard", "Leaderboard", f"Best report of {m} per trial (not its last); completed trials first. "
        "Click a column to sort. * = Pareto-optimal.", board[1], table=board[0])  # fmt: skip
    ax = F.pareto_axes(data)
    pareto = F.pareto(data)
    add("pareto", "Pareto front", f"{ax[0][0]} ({ax[0][1]}) against {ax[1][0]} ({ax[1][1]}), completed trials.",
        _n(pareto), [("fig-pareto", pareto)], empty="no completed trial with both metrics yet")  # fmt: skip
    bn = F.base_vs_new(data)
    add("base-new", "Base vs new accuracy", "Validation accuracy on base and on new classes (base-to-new).",
        _n(bn), [("fig-base-new", bn)], empty="this sweep does not report val/base and val/new")  # fmt: skip
    par = F.parallel(data)
    add("importance", "Parameter importance and parallel coordinates",
        "Optuna's importance evaluator on the sweep's study (optuna.journal); parallel coordinates over shared "
        "parameters of completed trials.", _n(par), [("fig-parallel", par)], empty="too few finished trials")  # fmt: skip
    curves = F.learning_curves(data, top)
    add("curves", "Learning curves", f"{m} at every validation report of the top {top} trials, over all trials' "
        "median and interquartile band.", _n(curves), [("fig-curves", curves)],
        empty="no per-report history found (tune/*/result.json or trials/*/metrics.json)")  # fmt: skip
    heat = F.top_allocations(data, min(top, 4))
    where, used = F.rank_where(data)
    add("allocation", "Rank allocation", "Final per-layer rank of the top trials, and where rank goes in good "
        f"trials (top 20 % of completed trials, {used} allocation tables).", len(heat) + (1 if where else 0),
        [(f"fig-alloc-{tid}", fig) for tid, fig in heat] + [("fig-rank-where", where)],
        empty="no allocation tables (trials/*/allocation.parquet) for completed trials")  # fmt: skip
    fam_table, fam_fig = F.family_summary(data)
    add("families", "Per-family summary", f"Trials by state and {m} per adapter family.", len(fam_table),
        [("fig-families", fam_fig)], table=_simple_table(fam_table) if len(fam_table) else None)  # fmt: skip
    return out


def _add_importance(data: SweepData, sections: list[dict], figs: dict[str, Any], imps: dict | None) -> None:
    """Put the importance bars (computed last, in a child process) first in their section."""
    fig = F.importances(imps, data.first.metric)
    if fig is None:
        return
    figs["fig-importance"] = fig
    section = next(s for s in sections if s["id"] == "importance")
    section["figures"].insert(0, "fig-importance")
    section["items"] += len(imps or {})


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


def _leaderboard(data: SweepData) -> tuple[str, int]:
    """The sortable leaderboard table (HTML) and its row count."""
    ranked = data.ranked().head(MAX_ROWS)
    if ranked.empty:
        return "", 0
    m = data.first.metric
    front: set[str] = set()
    cols = [o for o, _ in F.pareto_axes(data)]
    done = ranked[ranked["status"] == "completed"].dropna(subset=[c for c in cols if c in ranked.columns])
    if all(c in done.columns for c in cols) and len(done):
        mask = F.pareto_mask(done[cols].to_numpy(float), [md == "max" for _, md in F.pareto_axes(data)])
        front = set(done["trial_id"][mask])
    test = m.replace("val/", "test/", 1)
    metric_cols = [o.metric for o in data.objectives[1:]] + ["val/base", "val/new", test, "trainable_params"]
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
        params = " ".join(
            f"{k[6:]}={_fmt(v)[0]}" for k, v in r.items() if k.startswith("param:") and _fmt(v)[0] != ""
        )
        tid = str(r["trial_id"])
        cells = [(str(i), str(i)), (tid + (" *" if tid in front else ""), tid), _fmt(r.get("family")),
                 _fmt(r.get("status")), _fmt(r.get("rank_value")), _fmt(r.get("best_report")), _fmt(r.get(m)),
                 *[_fmt(r.get(c)) for c in metric_cols]]  # fmt: skip
        row = [f"<tr class='{'pareto' if tid in front else ''}'>"]
        for j, (shown, key) in enumerate(cells):
            cls = "text" if j in text_cols else ""
            if j == 3:
                cls += f" status-{html.escape(shown)}"
            row.append(f"<td class='{cls}' data-v='{html.escape(key)}'>{html.escape(shown)}</td>")
        row.append(f"<td class='params' data-v='{html.escape(params)}'>{html.escape(params)}</td></tr>")
        out.append("".join(row))
    out.append("</tbody></table></div>")
    shown, total = len(ranked), len(data.ranked())
    if total > shown:
        out.append(
            f"<p class='note'>showing the best {shown} of {total} trials; all are in trials.parquet</p>"
        )
    return "".join(out), shown


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


def _render(data: SweepData, sections: list[dict], figs: dict[str, Any], pio: Any, plotly_js: str) -> str:
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
    # one JSON object of all figures; "</" escaped so no figure text can close the <script> element
    parts = [f"{json.dumps(k)}: {pio.to_json(f, validate=False)}" for k, f in figs.items()]
    figures_json = ("{" + ", ".join(parts) + "}").replace("</", "<\\/")
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
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    for s in sections:
        if s.get("table"):
            s["table"] = Markup(s["table"])
    return template.render(
        sweep=sweep, summary=summary, sections=sections, plotly_js=Markup(plotly_js),
        figures_json=Markup(figures_json),
    )  # fmt: skip


def log_to_parent(data_folder: Path, path: Path) -> str | None:
    """Log the report to the sweep's parent MLflow run (artifact path ``report/``); returns the run id."""
    from ranksearch.sweep.folder import Manifest

    manifest = Manifest.load(data_folder)
    if not manifest.parent_run_id:
        return None
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=manifest.tracking_uri).log_artifact(manifest.parent_run_id, str(path), "report")
    return manifest.parent_run_id
