"""The report's per-trial drill-down: each top trial's parameters, final metrics, config, learning curves,
allocation heatmap and a link to its MLflow run.

The page draws a trial's figures only when it is opened (``dashboards/templates/report.html.j2``), so a large
sweep pays for the details of ``top`` trials in bytes, not in drawing time. MLflow run ids come from the sweep's
tracking store: a sqlite file is read directly (no MLflow import, no migration); a server is asked once.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

import ranksearch.report.figures as F
from ranksearch.report.data import SweepData, final_allocation

log = logging.getLogger(__name__)

DEFAULT_MLFLOW_URL = "http://127.0.0.1:5000"  # where `ranksearch ui` serves by default
TOP = 30


def run_ids(data: SweepData) -> tuple[dict[str, str], str | None]:
    """({trial id: MLflow run id}, experiment id) of the sweep's child runs; empty when the store is unknown
    or unreachable (a report never waits for, or fails on, a tracking server)."""
    uri = str(getattr(data.manifest, "tracking_uri", "") or "")
    parent = getattr(data.manifest, "parent_run_id", None)
    if not uri or not parent:
        return {}, None
    if uri.startswith("sqlite:///"):
        return _sqlite_runs(Path(uri[len("sqlite:///") :]), parent)
    try:
        return _client_runs(uri, parent)
    except Exception as e:  # a server that is down must not cost the report
        log.info("MLflow run ids not read from %s: %s", uri, e)
        return {}, None


def _sqlite_runs(db: Path, parent: str) -> tuple[dict[str, str], str | None]:
    if not db.is_file():
        return {}, None
    query = """
        SELECT r.run_uuid, r.experiment_id, t.value FROM runs r
        JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'ranksearch.trial_id'
        JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = 'mlflow.parentRunId' AND p.value = ?
        WHERE r.lifecycle_stage = 'active'
    """
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute(query, (parent,)).fetchall()
            exp = con.execute("SELECT experiment_id FROM runs WHERE run_uuid = ?", (parent,)).fetchone()
    except sqlite3.Error as e:
        log.info("MLflow run ids not read from %s: %s", db, e)
        return {}, None
    return {tid: run for run, _, tid in rows}, (str(exp[0]) if exp else None)


def _client_runs(uri: str, parent: str) -> tuple[dict[str, str], str | None]:
    from ranksearch.sweep.mlflow_buffer import _fail_fast

    with _fail_fast():  # one try, no minutes of retries: a report does not wait for a tracking server
        return _search_runs(uri, parent)


def _search_runs(uri: str, parent: str) -> tuple[dict[str, str], str | None]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs(
        [exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=50_000
    )
    return {
        r.data.tags["ranksearch.trial_id"]: r.info.run_id
        for r in runs
        if "ranksearch.trial_id" in r.data.tags
    }, exp


def run_url(base: str, experiment: str | None, run_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def links(
    data: SweepData, mlflow_url: str | None = None
) -> tuple[dict[str, dict[str, str]], dict[str, str] | None]:
    """({trial id: {"id": run id, "url": UI address}}, the parent run's {"id", "url"} or None).

    The UI address is on ``mlflow_url``, default the tracking server itself (an http store) or where
    ``ranksearch ui`` serves a sqlite store (127.0.0.1:5000).
    """
    parent = getattr(data.manifest, "parent_run_id", None)
    if not parent:
        return {}, None
    uri = str(getattr(data.manifest, "tracking_uri", "") or "")
    base = mlflow_url or (uri if uri.startswith(("http://", "https://")) else DEFAULT_MLFLOW_URL)
    runs, experiment = run_ids(data)
    if experiment is None:
        return {t: {"id": r, "url": ""} for t, r in runs.items()}, {"id": parent, "url": ""}
    trials = {t: {"id": r, "url": run_url(base, experiment, r)} for t, r in runs.items()}
    return trials, {"id": parent, "url": run_url(base, experiment, parent)}


def _config_text(folder: Path, trial_id: str) -> str | None:
    """The trial's config.yaml as the trial wrote it (last seed replicate), or None."""
    from ranksearch.report.data import inside, is_plain_id

    root = folder / "trials" / str(trial_id)
    ok = is_plain_id(trial_id) and root.is_dir() and inside(folder, root)
    found = sorted(p for p in root.rglob("config.yaml") if inside(folder, p)) if ok else []
    if not found:
        return None
    try:
        return found[-1].read_text(encoding="utf-8")[:20_000]
    except (OSError, UnicodeDecodeError):
        return None


def curves(data: SweepData, trial_id: str) -> dict[str, Any] | None:
    """Every validation metric of one trial per report, training loss on a second axis (a figure dict: see
    ``figures.allocation_heatmap`` for why not graph objects)."""
    h = data.history
    if h.empty:
        return None
    sub = h[h["trial_id"] == trial_id].sort_values("report")
    if sub.empty:
        return None
    first = data.first.metric
    metrics = [
        c for c in sub.columns if c.startswith("val/") and not c.endswith("_std") and sub[c].notna().any()
    ]
    metrics = sorted(metrics, key=lambda c: (c != first, c))[:6]
    x = sub["report"].astype(int).tolist()
    traces = [
        {"type": "scatter", "x": x, "y": _values(sub[m]), "mode": "lines+markers", "name": m,
         "line": {"color": F._PALETTE[i % len(F._PALETTE)], "width": 3 if m == first else 1.5}}
        for i, m in enumerate(metrics)
    ]  # fmt: skip
    lay = F.layout_dict(f"trial {trial_id}: validation per report", 340, {"r": 60})
    lay.update(xaxis={**F.AXIS, "title": {"text": "report"}, **F.whole_ticks(max(x))}, yaxis=dict(F.AXIS),
               legend={"orientation": "h", "y": -0.25})  # fmt: skip
    if "train/loss" in sub.columns and sub["train/loss"].notna().any():
        traces.append({"type": "scatter", "x": x, "y": _values(sub["train/loss"]), "mode": "lines",
                       "name": "train/loss", "yaxis": "y2", "line": {"color": "#999", "dash": "dot"}})  # fmt: skip
        lay["yaxis2"] = {
            "title": {"text": "train/loss"},
            "overlaying": "y",
            "side": "right",
            "showgrid": False,
        }
    return {"data": traces, "layout": lay} if traces else None


def _values(s: pd.Series) -> list[float | None]:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in s.tolist()]


def _shown(v: Any) -> str:
    if isinstance(v, float):
        return F.fmt_number(v) if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def trial_details(
    data: SweepData, top: int = TOP, runs: dict[str, dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """The drill-down records of the ``top`` ranked trials (completed first), best first. ``runs``: the trials'
    MLflow runs, as ``links`` returns them."""
    ranked = data.ranked().head(top)
    if ranked.empty:
        return []
    runs = runs or {}
    numbers = {str(t): i for i, t in enumerate(data.trials["trial_id"].astype(str), 1)}
    metric_keys = [o.metric for o in data.objectives] + [
        "val/base", "val/new", "val/hm", "test/base", "test/new", "test/hm", "trainable_params", "alloc/total_rank",
    ]  # fmt: skip
    out = []
    for rank, r in enumerate(ranked.to_dict("records"), 1):
        tid = str(r["trial_id"])
        params = {F.param_label(k): _shown(v) for k, v in r.items()
                  if k.startswith("param:") and v is not None and not (isinstance(v, float) and math.isnan(v))}  # fmt: skip
        metrics = {}
        for k in dict.fromkeys(metric_keys):
            v = r.get(k)
            if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)):
                metrics[k] = _shown(float(v))
        figs: dict[str, dict] = {}
        fig = curves(data, tid)
        if fig is not None:
            figs["curves"] = fig
        alloc = final_allocation(data.folder, tid) if r.get("status") == "completed" else None
        if alloc is not None and not alloc.empty:
            figs["alloc"] = F.allocation_heatmap(alloc, f"trial {tid}: final rank per site", height=320)
        out.append({
            "id": tid, "rank": rank, "number": numbers.get(tid), "family": str(r.get("family", "")),
            "status": str(r.get("status", "")), "error": str(r["error"]) if isinstance(r.get("error"), str) else None,
            "value": _shown(r["rank_value"]) if isinstance(r.get("rank_value"), float) else "",
            "best_report": int(r["best_report"]) if _finite(r.get("best_report")) else None,
            "params": params, "metrics": metrics, "config": _config_text(data.folder, tid),
            "run": runs.get(tid),
            "figures": figs,
        })  # fmt: skip
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
