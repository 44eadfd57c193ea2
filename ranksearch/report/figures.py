"""Plotly figures of a loaded sweep (``SweepData``); each returns a ``go.Figure`` or None when there is no data.

Sizes stay bounded for 1,000-trial sweeps: scatter plots draw one point per trial (SVG, no WebGL, so a
headless browser without a GPU renders them), learning curves draw only the top trials plus a median band,
and allocation heatmaps read the allocation tables of the top trials only.

Layout rules every figure follows (checked in a browser by tests/test_report.py): the title sits below the
band where plotly's toolbar appears, colour bars sit in the right margin beside the last panel, and axes of
counts (reports, trials, ranks) have whole-number ticks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ranksearch.pareto import pareto_mask
from ranksearch.report.data import SweepData, final_allocation

MODULE_ORDER = ("q", "k", "v", "o", "fc", "proj", "ln_1", "ln_2")
TOOLBAR_PX = 30  # height of the band at the top of a figure that plotly's toolbar covers on hover
_MARGIN = {"l": 60, "r": 30, "t": 36 + TOOLBAR_PX, "b": 50}
# no named template: plotly deep-copies a template into every figure (~0.1 s each); a few plain properties instead
_LAYOUT = {
    "template": "none",
    "plot_bgcolor": "white",
    "font": {"size": 12},
    "margin": _MARGIN,
    "height": 420,
}
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
FEW_TRIALS = 20  # below this many completed trials, importances and slices are a first impression only


def layout_dict(title: str, height: int = _LAYOUT["height"], margin: dict | None = None) -> dict[str, Any]:
    """The shared layout as a plain dict, the title left-aligned under the toolbar band (never covered by it)."""
    return {
        **_LAYOUT, "height": height, "margin": {**_MARGIN, **(margin or {})},
        "title": {"text": title, "x": 0, "xref": "paper", "xanchor": "left", "yref": "container",
                  "y": 1 - (TOOLBAR_PX + 4) / height, "yanchor": "top", "font": {"size": 15}},
    }  # fmt: skip


def layout(fig: go.Figure, title: str, **kw: Any) -> go.Figure:
    """Apply ``layout_dict`` (and any other layout properties in ``kw``) to a figure."""
    base = layout_dict(title, kw.pop("height", _LAYOUT["height"]), kw.pop("margin", None))
    fig.update_layout(**base, **kw)
    return fig


AXIS = {"showgrid": True, "gridcolor": "#e5e5e5", "zeroline": False, "linecolor": "#999"}


def style(fig: go.Figure) -> go.Figure:
    """Light grid lines on every cartesian axis (what plotly_white would give)."""
    fig.update_xaxes(**AXIS)
    fig.update_yaxes(**AXIS)
    return fig


def whole_ticks(n: int) -> dict[str, Any]:
    """Axis settings for a count axis 1..n: whole-number ticks only (never 1.5, 2.5)."""
    return {"tickmode": "linear", "tick0": 1 if n > 1 else 0, "dtick": max(1, math.ceil(n / 12)),
            "tickformat": "d"}  # fmt: skip


def param_label(column: str) -> str:
    """``param:lora:adapter.r`` -> ``adapter.r (lora)``; ``param:train.lr`` -> ``train.lr``."""
    name = column[len("param:") :] if column.startswith("param:") else column
    if ":" in name:
        family, path = name.split(":", 1)
        return f"{path} ({family})"
    return name


def param_spec(data: SweepData, column: str) -> Any:
    """The space's spec of a ``param:`` column (FloatParam, IntParam, CategoricalParam) or None."""
    if data.space is None:
        return None
    name = column[len("param:") :] if column.startswith("param:") else column
    if ":" in name:
        family, path = name.split(":", 1)
        sub = data.space.spec.families.get(family)
        return sub.params.get(path) if sub is not None else None
    spec = data.space.spec.params.get(name)
    if spec is None:  # a one-family space names its family's parameters without a prefix
        for sub in data.space.spec.families.values():
            spec = spec or sub.params.get(name)
    return spec


def is_log(data: SweepData, column: str) -> bool:
    return bool(getattr(param_spec(data, column), "log", False))


def cat_text(v: Any) -> str:
    """A categorical value as shown: 4, not 4.0 (a column with another family's NaN holds floats)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _cat_series(s: pd.Series) -> pd.Series:
    return s.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else cat_text(v))


def _categories(data: SweepData, column: str, values: pd.Series) -> list[str]:
    """A categorical parameter's values in the order the space lists them (else sorted)."""
    spec = param_spec(data, column)
    seen = set(_cat_series(values).dropna())
    if spec is not None and hasattr(spec, "encoded"):
        order = [cat_text(c) for c in spec.encoded()]
        return [c for c in order if c in seen] + sorted(seen - set(order))
    return sorted(seen)


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _color(families: list[str]) -> dict[str, str]:
    return {f: _PALETTE[i % len(_PALETTE)] for i, f in enumerate(families)}


def _hover(df: pd.DataFrame) -> list[str]:
    return [f"trial {t} ({f})" for t, f in zip(df["trial_id"], df["family"], strict=True)]


def fmt_number(v: float) -> str:
    """A tick label for a parameter value: 0.003, 0.01, 2e-05, 150."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.3g}"


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 values between ``lo`` and ``hi`` (> 0), at most ~7 of them, for a log-scaled axis."""
    out: list[float] = []
    for steps in ((1, 2, 5), (1, 3), (1,)):
        out = [m * 10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
               for m in steps if lo <= m * 10.0**e <= hi]  # fmt: skip
        if len(out) <= 7:
            break
    return out or [lo, hi]


# ------------------------------------------------------------------------------------------------- Pareto
# pareto_mask: ranksearch.pareto (Optuna's non-dominated sort)
def multi_objective(data: SweepData) -> bool:
    return len(data.objectives) >= 2


def pareto_axes(data: SweepData) -> list[tuple[str, str]]:
    """(metric, mode) pairs of the trade-off plot: the first two objectives, else the first vs trainable params."""
    objs = [(o.metric, o.mode) for o in data.objectives]
    if len(objs) >= 2:
        return objs[:2]
    return [objs[0], ("trainable_params", "min")]


def front_ids(data: SweepData, df: pd.DataFrame) -> set[str]:
    """Trial ids on the Pareto front among the completed rows of ``df`` (empty for a single objective)."""
    if not multi_objective(data):
        return set()
    axes = pareto_axes(data)
    cols = [m for m, _ in axes]
    if any(c not in df.columns for c in cols):
        return set()
    done = df[df["status"] == "completed"].dropna(subset=cols)
    if done.empty:
        return set()
    mask = pareto_mask(done[cols].to_numpy(float), [mode == "max" for _, mode in axes])
    return set(done["trial_id"][mask].astype(str))


def tradeoff(data: SweepData) -> go.Figure | None:
    """Completed trials on the first objective against the second (multi-objective: with the Pareto front) or
    against trainable parameters (single objective: a cost view, no front, since only one value is optimised)."""
    (ym, ymode), (xm, xmode) = pareto_axes(data)
    done = data.completed()
    if ym not in done.columns or xm not in done.columns:
        return None
    done = done.dropna(subset=[ym, xm])
    if done.empty:
        return None
    fig = go.Figure()
    colors = _color(sorted(done["family"].unique()))
    for fam, sub in done.groupby("family"):
        fig.add_trace(
            go.Scatter(
                x=sub[xm], y=sub[ym], mode="markers", name=str(fam), text=_hover(sub),
                marker={"color": colors[fam], "size": 7, "opacity": 0.6},
            )
        )  # fmt: skip
    if multi_objective(data):
        ids = front_ids(data, done)
        front = done[done["trial_id"].astype(str).isin(ids)].sort_values(xm)
        fig.add_trace(
            go.Scatter(
                x=front[xm], y=front[ym], mode="lines+markers", name=f"Pareto front ({len(front)})",
                text=_hover(front), line={"color": "black", "shape": "hv"},
                marker={"symbol": "star", "size": 11, "color": "gold", "line": {"color": "black", "width": 1}},
            )
        )  # fmt: skip
        title = f"Pareto front: {ym} ({ymode}) vs {xm} ({xmode})"
    else:
        title = f"{ym} vs trainable parameters"
    layout(fig, title, xaxis_title=xm, yaxis_title=ym)
    if xm == "trainable_params" and (done[xm] > 0).all():
        fig.update_xaxes(type="log")
    return fig


# ---------------------------------------------------------------------------------- optimisation history
def trial_compute(data: SweepData) -> pd.DataFrame:
    """Per trial: ``number`` (1-based, in the order the sweep created trials), ``compute`` (training seconds
    from Tune's ``time_total_s``, else reports), ``finished`` (finish order key) and ``value`` (the first
    objective's final value for completed trials, best report for the others)."""
    t = data.trials.reset_index(drop=True)
    out = pd.DataFrame({"trial_id": t["trial_id"].astype(str), "family": t["family"], "status": t["status"]})
    out["number"] = np.arange(1, len(t) + 1)
    m = data.first.metric
    final = t[m] if m in t.columns else pd.Series(math.nan, index=t.index)
    best = t["best_value"] if "best_value" in t.columns else final
    out["value"] = np.where(t["status"] == "completed", final, best)
    h = data.history
    unit = "reports"
    if not h.empty and "time_total_s" in h.columns and h["time_total_s"].notna().any():
        g = h.groupby("trial_id")
        out["compute"] = out["trial_id"].map(g["time_total_s"].max())
        ts = g["timestamp"].max() if "timestamp" in h.columns else None
        out["finished"] = out["trial_id"].map(ts) if ts is not None else out["number"]
        unit = "seconds"
    else:
        reports = t["reports"] if "reports" in t.columns else pd.Series(math.nan, index=t.index)
        out["compute"] = reports.astype(float).to_numpy()
        out["finished"] = out["number"]
    out["compute"] = out["compute"].fillna(0.0)
    out["finished"] = out["finished"].fillna(out["number"].max() + 1)
    out.attrs["unit"] = unit
    return out


def history(data: SweepData) -> go.Figure | None:
    """Optimisation history: every finished trial's value and the best so far, against the trial number and
    against the compute spent (training time summed over trials in the order they finished, pruned trials
    included: early stopping saves exactly this)."""
    c = trial_compute(data)
    c = c[c["status"].isin(["completed", "pruned", "failed", "error"])]
    done = c[(c["status"] == "completed") & c["value"].notna()]
    if done.empty:
        return None
    first = data.first
    better = np.fmax if first.mode == "max" else np.fmin
    seconds = c.attrs["unit"] == "seconds"
    scale, unit = (3600.0, "h") if seconds and c["compute"].sum() > 3 * 3600 else (60.0, "min")
    if not seconds:
        scale, unit = 1.0, "reports"
    by_finish = c.sort_values("finished")
    spent = by_finish["compute"].cumsum() / scale
    c = c.assign(spent=spent.reindex(c.index))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["by trial number", f"by compute spent ({unit}, all trials)"])  # fmt: skip
    for col, x in ((1, "number"), (2, "spent")):
        order = c.sort_values(x)
        for status, color, symbol in (("completed", "#1f77b4", "circle"), ("pruned", "#bbbbbb", "x")):
            sub = order[(order["status"] == status) & order["value"].notna()]
            if sub.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=sub[x], y=sub["value"], mode="markers", name=status, legendgroup=status,
                    showlegend=col == 1, text=_hover(sub),
                    marker={"color": color, "size": 7, "symbol": symbol, "opacity": 0.8},
                ),
                row=1, col=col,
            )  # fmt: skip
        comp = order[(order["status"] == "completed") & order["value"].notna()]
        fig.add_trace(
            go.Scatter(
                x=comp[x], y=better.accumulate(comp["value"].to_numpy(float)), mode="lines",
                name="best so far", legendgroup="best", showlegend=col == 1, line={"color": "#d62728", "shape": "hv"},
            ),
            row=1, col=col,
        )  # fmt: skip
    layout(fig, f"optimisation history: {first.metric} ({first.mode})", yaxis_title=first.metric,
           legend={"orientation": "h", "y": -0.18})  # fmt: skip
    fig.update_xaxes(title_text="trial", row=1, col=1, **whole_ticks(int(c["number"].max())))
    fig.update_xaxes(title_text=f"{'training time' if seconds else 'reports'} ({unit})", row=1, col=2)
    return fig


# ------------------------------------------------------------------------------------------ base vs new
def base_vs_new(data: SweepData) -> go.Figure | None:
    """Validation base vs new accuracy per trial (completed, and pruned at their last report), iso-HM lines."""
    t = data.trials
    if "val/base" not in t.columns or "val/new" not in t.columns:
        return None
    t = t[t["status"].isin(["completed", "pruned"])].dropna(subset=["val/base", "val/new"])
    if t.empty:
        return None
    fig = go.Figure()
    lo = float(min(t["val/base"].min(), t["val/new"].min()))
    hi = float(max(t["val/base"].max(), t["val/new"].max()))
    for hm in np.linspace(lo, hi, 5)[1:-1]:  # iso-harmonic-mean curves: new = hm·b / (2b − hm)
        b = np.linspace(max(hm / 2 + 1e-3, lo), hi, 50)
        n = hm * b / (2 * b - hm)
        keep = (n >= lo) & (n <= hi)
        fig.add_trace(
            go.Scatter(
                x=b[keep], y=n[keep], mode="lines", line={"dash": "dot", "color": "#bbb", "width": 1},
                name=f"HM {hm:.0f}", hoverinfo="skip", showlegend=False,
            )
        )  # fmt: skip
    colors = _color(sorted(t["family"].unique()))
    for (fam, status), sub in t.groupby(["family", "status"]):
        fig.add_trace(
            go.Scatter(
                x=sub["val/base"], y=sub["val/new"], mode="markers", name=f"{fam} ({status})",
                text=_hover(sub),
                marker={"color": colors[fam], "size": 7, "opacity": 0.7 if status == "completed" else 0.25,
                        "symbol": "circle" if status == "completed" else "x"},
            )
        )  # fmt: skip
    return layout(
        fig, "base vs new accuracy (validation)", xaxis_title="val/base (%)", yaxis_title="val/new (%)"
    )


# ------------------------------------------------------------------------------------ parameter effects
def importances(values: dict[str, float] | None, metric: str, trials: int | None = None) -> go.Figure | None:
    """Horizontal bars of Optuna's parameter importances; pale, with the trial count in the title, when they
    come from fewer than ``FEW_TRIALS`` completed trials."""
    if not values:
        return None
    items = sorted(values.items(), key=lambda kv: kv[1])
    few = trials is not None and trials < FEW_TRIALS
    fig = go.Figure(
        go.Bar(
            x=[v for _, v in items], y=[param_label(k) for k, _ in items], orientation="h",
            text=[f"{v:.3f}" for _, v in items], textposition="auto",
            marker={"color": "#1f77b4", "opacity": 0.45 if few else 1.0},
        )
    )  # fmt: skip
    title = f"importance for {metric}" + (f" ({trials} trials)" if trials is not None else "")
    return layout(fig, title + (": rough" if few else ""), height=max(280, 110 + 30 * len(items)),
                  margin={"l": 190}, xaxis_title="importance (Optuna)")  # fmt: skip


def _dimension(data: SweepData, col: str, s: pd.Series) -> dict[str, Any]:
    """One parallel-coordinates axis. Log-scaled parameters are drawn on log10 but labelled with the values
    themselves; trials without the parameter (another family's) sit on an "n/a" tick below the range."""
    label = param_label(col)
    missing = s.isna()
    if _is_numeric(s):
        v = s.astype(float)
        log = is_log(data, col) and (v.dropna() > 0).all()
        lo, hi = float(v.min()), float(v.max())
        if log:
            ticks = log_ticks(lo, hi)
            values, tickvals = np.log10(v), [math.log10(t) for t in ticks]
            ticktext = [fmt_number(t) for t in ticks]
            label += " (log)"
        else:
            values = v
            ticks = np.unique(v.dropna()) if v.nunique() <= 8 else np.linspace(lo, hi, 5)
            tickvals, ticktext = [float(t) for t in ticks], [fmt_number(float(t)) for t in ticks]
        top, bottom = float(np.nanmax(values)), float(np.nanmin(values))
        if missing.any():
            na = bottom - max(0.15 * (top - bottom), 1e-9)
            values = values.fillna(na)
            tickvals, ticktext = [na, *tickvals], ["n/a", *ticktext]
            bottom = na
        pad = 0.02 * max(top - bottom, 1e-9)
        return {"label": label, "values": values.tolist(), "tickvals": tickvals, "ticktext": ticktext,
                "range": [bottom - pad, top + pad]}  # fmt: skip
    cats = _categories(data, col, s)
    if missing.any():
        cats = ["n/a", *cats]
    codes = _cat_series(s).where(~missing, "n/a").map({c: i for i, c in enumerate(cats)})
    return {"label": label, "values": codes.tolist(), "tickvals": list(range(len(cats))), "ticktext": cats,
            "range": [-0.3, len(cats) - 0.7]}  # fmt: skip


def parallel(data: SweepData, limit: int = 300) -> go.Figure | None:
    """Parallel coordinates of completed trials: every parameter (a family's own ones show "n/a" for other
    families' trials), then the objectives; coloured by the first objective. Only the best ``limit`` trials:
    parcoords draws with WebGL, which a browser without a GPU (headless CI) emulates slowly, and 1,000 lines
    are unreadable anyway."""
    done = data.completed()
    if data.first.metric not in done.columns:
        return None
    done = done.dropna(subset=[data.first.metric])
    if done.empty:
        return None
    ranked = done.sort_values(data.first.metric, ascending=data.first.mode == "min").head(limit)
    dims = [_dimension(data, col, ranked[col]) for col in data.param_columns if ranked[col].notna().any()]
    for o in data.objectives:
        if o.metric in ranked.columns and ranked[o.metric].notna().all():
            dims.append({"label": o.metric, "values": ranked[o.metric].astype(float).tolist()})
    if len(dims) < 2:
        return None
    color = ranked[data.first.metric].astype(float)
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims, labelangle=0, labelside="top",
            line={"color": color.tolist(), "colorscale": "Viridis", "showscale": True,
                  "reversescale": data.first.mode == "min", "colorbar": {"title": {"text": data.first.metric}}},
        )
    )  # fmt: skip
    n = f"best {len(ranked)} of {len(done)}" if len(ranked) < len(done) else f"{len(done)}"
    return layout(fig, f"parallel coordinates ({n} completed trials)", height=460,
                  margin={"l": 70, "r": 70, "t": 110, "b": 40})  # fmt: skip


def slices(data: SweepData, cols_per_row: int = 3) -> go.Figure | None:
    """One panel per parameter: the first objective of each completed trial against that parameter's value
    (log axis for log-scaled parameters; categories with a little jitter), coloured by trial number."""
    done = data.completed().reset_index(drop=True)
    m = data.first.metric
    if m not in done.columns or done[m].dropna().empty:
        return None
    params = [c for c in data.param_columns if done[c].notna().any() and done[c].nunique() > 0]
    if not params:
        return None
    number = data.trials.reset_index(drop=True)
    number = pd.Series(np.arange(1, len(number) + 1), index=number["trial_id"].astype(str))
    rows = math.ceil(len(params) / cols_per_row)
    cols = min(cols_per_row, len(params))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[param_label(p) for p in params],
                        horizontal_spacing=0.07, vertical_spacing=0.22 / max(1, rows - 1) if rows > 1 else 0.1,
                        shared_yaxes=True)  # fmt: skip
    rng = np.random.default_rng(0)
    total = int(number.max()) if len(number) else 1
    for i, col in enumerate(params):
        r, c = i // cols + 1, i % cols + 1
        sub = done[done[col].notna() & done[m].notna()]
        nums = sub["trial_id"].astype(str).map(number).to_numpy()
        s = sub[col]
        axis: dict[str, Any] = {}
        if _is_numeric(s) and s.nunique() > 8:
            x = s.astype(float)
            if is_log(data, col) and (x > 0).all():
                axis = {"type": "log", "tickvals": log_ticks(float(x.min()), float(x.max())),
                        "ticktext": [fmt_number(t) for t in log_ticks(float(x.min()), float(x.max()))]}  # fmt: skip
        else:
            cats = _categories(data, col, s)
            x = _cat_series(s).map({k: j for j, k in enumerate(cats)}) + rng.uniform(-0.15, 0.15, len(s))
            axis = {"tickvals": list(range(len(cats))), "ticktext": cats, "range": [-0.5, len(cats) - 0.5]}
        fig.add_trace(
            go.Scatter(
                x=x, y=sub[m], mode="markers", showlegend=False, text=_hover(sub),
                customdata=_cat_series(s), hovertemplate="%{text}<br>%{customdata}: %{y:.4g}<extra></extra>",
                marker={"color": nums, "colorscale": [[0, "#c6dbef"], [1, "#08306b"]], "cmin": 1, "cmax": total, "size": 7,
                        "showscale": i == 0,
                        "colorbar": {"title": {"text": "trial"}, "tickformat": "d", "len": 0.8}},
            ),
            row=r, col=c,
        )  # fmt: skip
        fig.update_xaxes(row=r, col=c, **axis)
    fig.update_yaxes(title_text=m, col=1)
    few = len(done) < FEW_TRIALS
    return layout(fig, f"{m} by parameter ({len(done)} completed trials{': few' if few else ''})",
                  height=110 + 270 * rows, margin={"t": 90})  # fmt: skip


# ------------------------------------------------------------------------------------------ learning curves
def learning_curves(data: SweepData, top: int = 10) -> go.Figure | None:
    """The first objective per report for the top trials, over the median (and 25–75 % band) of all trials."""
    h, metric = data.history, data.first.metric
    if h.empty or metric not in h.columns:
        return None
    h = h.dropna(subset=[metric])
    if h.empty:
        return None
    fig = go.Figure()
    band = h.groupby("report")[metric].quantile([0.25, 0.5, 0.75]).unstack()
    x = band.index.tolist()
    fig.add_trace(
        go.Scatter(x=x, y=band[0.75], mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip")
    )
    fig.add_trace(
        go.Scatter(
            x=x, y=band[0.25], mode="lines", line={"width": 0}, fill="tonexty", fillcolor="rgba(150,150,150,0.25)",
            name="all trials: 25–75 %",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=x, y=band[0.5], mode="lines", line={"color": "#777", "dash": "dash"}, name="median")
    )
    ids = data.ranked()["trial_id"].head(top).tolist()
    for i, tid in enumerate(ids):
        sub = h[h["trial_id"] == tid].sort_values("report")
        fig.add_trace(
            go.Scatter(
                x=sub["report"], y=sub[metric], mode="lines+markers", name=f"#{i + 1} {tid}",
                line={"color": _PALETTE[i % len(_PALETTE)]},
            )
        )  # fmt: skip
    layout(fig, f"learning curves: {metric} (top {len(ids)} trials)", xaxis_title="report (validation evaluation)",
           yaxis_title=metric, legend={"traceorder": "normal"})  # fmt: skip
    fig.update_xaxes(**whole_ticks(int(h["report"].max())))
    return fig


# ------------------------------------------------------------------------------------------ allocation
def _modules(df: pd.DataFrame) -> list[str]:
    present = set(df["module"])
    return [m for m in MODULE_ORDER if m in present] + sorted(present - set(MODULE_ORDER))


def _grid(
    df: pd.DataFrame, tower: str, modules: list[str], value: str
) -> tuple[list[int], list[list[float | None]]]:
    """(layers, z[layer][module]): the mean of ``value`` per site of one tower; None where no row is.

    A plain loop: allocation tables have a few hundred rows, and pandas' pivot_table costs ~50 ms a call."""
    sums: dict[tuple[int, str], list[float]] = {}
    sel = df["tower"] == tower
    for layer, module, v in zip(df["layer"][sel], df["module"][sel], df[value][sel], strict=True):
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            acc = sums.setdefault((int(layer), str(module)), [0.0, 0])
            acc[0] += float(v)
            acc[1] += 1
    layers = sorted({int(x) for x in df["layer"][sel]})
    z = [
        [(sums[(ly, m)][0] / sums[(ly, m)][1]) if (ly, m) in sums else None for m in modules] for ly in layers
    ]
    return layers, z


def _towers(df: pd.DataFrame) -> list[str]:
    present = set(df["tower"])
    return [t for t in ("vision", "text") if t in present] + sorted(present - {"vision", "text"})


def allocation_heatmap(df: pd.DataFrame, title: str, height: int = 340) -> dict[str, Any]:
    """Layer × module heatmap of one trial's final rank, one panel per tower; whole-number colour bar.

    A plain figure dict (plotly's graph objects cost ~0.2 s per subplot figure, and the drill-down draws one
    per trial): panels side by side, the colour bar in the right margin beside the last one.
    """
    towers = _towers(df)
    modules = _modules(df)
    zmax = float(df["max_rank"].max() or 1)
    gap, n = 0.12, len(towers)
    width = (1 - gap * (n - 1)) / n
    data, lay = [], layout_dict(title, height, {"t": 90})
    lay["annotations"] = []
    for i, tower in enumerate(towers):
        layers, z = _grid(df, tower, modules, "rank")
        suffix = "" if i == 0 else str(i + 1)
        data.append({
            "type": "heatmap", "z": z, "x": modules, "y": [f"L{ly}" for ly in layers], "zmin": 0, "zmax": zmax,
            "colorscale": "Viridis", "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
            "text": [[("" if v is None else f"{v:.0f}") for v in row] for row in z], "texttemplate": "%{text}",
            "showscale": i == n - 1,
            "colorbar": {"title": {"text": "rank"}, "tickformat": "d", "dtick": max(1, math.ceil(zmax / 8))},
        })  # fmt: skip
        lo = i * (width + gap)
        lay[f"xaxis{suffix}"] = {"domain": [lo, lo + width], "anchor": f"y{suffix}", "type": "category"}
        lay[f"yaxis{suffix}"] = {"anchor": f"x{suffix}", "type": "category"}
        lay["annotations"].append({"text": tower, "x": lo + width / 2, "y": 1.0, "xref": "paper", "yref": "paper",
                                   "xanchor": "center", "yanchor": "bottom", "showarrow": False,
                                   "font": {"size": 14}})  # fmt: skip
    return {"data": data, "layout": lay}


def top_allocations(data: SweepData, top: int = 4) -> list[tuple[str, go.Figure]]:
    """(trial id, heatmap) for the best completed trials that have an allocation table."""
    out = []
    for row in data.ranked().itertuples():
        if len(out) >= top:
            break
        if row.status != "completed":
            continue
        df = final_allocation(data.folder, row.trial_id)
        if df is None or df.empty:
            continue
        value = f"{row.rank_value:.4g}" if isinstance(row.rank_value, float) else ""
        title = f"#{len(out) + 1} {row.trial_id} ({row.family}), {data.first.metric} {value}"
        out.append((row.trial_id, go.Figure(allocation_heatmap(df, title))))
    return out


def rank_where(
    data: SweepData, quantile: float = 0.2, cap: int = 50
) -> tuple[go.Figure | None, go.Figure | None, int]:
    """Where rank goes in good trials: mean share of each trial's total final rank per tower × layer × module
    over the top ``quantile`` of completed trials (at most ``cap`` tables read). Returns (heatmap, per-module
    bars, trials used): two figures, so the heatmap's colour bar never sits on the bars."""
    done = data.ranked()
    done = done[done["status"] == "completed"]
    n = min(cap, max(1, math.ceil(len(done) * quantile)))
    frames = []
    for tid in done["trial_id"].head(n):
        df = final_allocation(data.folder, tid)
        if df is None or df.empty or df["rank"].sum() <= 0:
            continue
        frames.append(df.assign(share=df["rank"] / df["rank"].sum(), trial_id=tid))
    if not frames:
        return None, None, 0
    all_ = pd.concat(frames)
    # a site a trial did not adapt counts as 0 % of its rank
    mean = all_.groupby(["tower", "layer", "module"])["share"].sum().reset_index()
    mean["share"] = 100 * mean["share"] / len(frames)
    towers = _towers(mean)
    modules = _modules(mean)
    heat = make_subplots(rows=1, cols=len(towers), subplot_titles=towers, horizontal_spacing=0.12)
    zmax = float(mean["share"].max())
    for i, tower in enumerate(towers, 1):
        layers, z = _grid(mean, tower, modules, "share")
        heat.add_trace(
            go.Heatmap(
                z=z, x=modules, y=[f"L{ly}" for ly in layers], zmin=0, zmax=zmax, colorscale="Magma",
                text=[[("" if v is None else f"{v:.1f}") for v in row] for row in z], texttemplate="%{text}",
                showscale=i == len(towers), colorbar={"title": {"text": "% of rank"}},
            ),
            row=1, col=i,
        )  # fmt: skip
    layout(heat, f"where rank goes: mean % per site, top {len(frames)} trials", height=360, margin={"t": 90})
    by = mean.groupby(["tower", "module"])["share"].sum().reset_index()
    bars = go.Figure()
    for tower in towers:
        sub = by[by["tower"] == tower].set_index("module").reindex(modules)
        bars.add_trace(go.Bar(x=modules, y=sub["share"], name=tower))
    layout(bars, "by module (% of rank)", height=360, barmode="group", yaxis_title="% of total rank",
           xaxis_title="module")  # fmt: skip
    return heat, bars, len(frames)


# ------------------------------------------------------------------------------------------ families
def family_summary(data: SweepData) -> tuple[pd.DataFrame, go.Figure | None]:
    """Per-family table (trials by state, best, median, mean trainable params) and a box plot of the first
    objective over completed trials."""
    t, m = data.trials, data.first.metric
    rows = []
    for fam, sub in t.groupby("family"):
        done = sub[sub["status"] == "completed"]
        vals = done[m].dropna() if m in done.columns else pd.Series(dtype=float)
        best = (vals.max() if data.first.mode == "max" else vals.min()) if len(vals) else math.nan
        rows.append(
            {"family": fam, "trials": len(sub),
             **{s: int((sub["status"] == s).sum()) for s in ("completed", "pruned", "failed", "error")},
             f"best {m}": best, f"median {m}": vals.median() if len(vals) else math.nan,
             "mean trainable params": done["trainable_params"].mean() if "trainable_params" in done else math.nan}
        )  # fmt: skip
    table = pd.DataFrame(rows)
    done = t[t["status"] == "completed"]
    if m not in done.columns or done[m].dropna().empty:
        return table, None
    colors = _color(sorted(t["family"].unique()))
    fig = go.Figure()
    for fam, sub in done.groupby("family"):
        fig.add_trace(
            go.Box(
                y=sub[m], name=str(fam), boxpoints="outliers", marker={"color": colors[fam]}, text=_hover(sub)
            )
        )
    return table, layout(fig, f"{m} of completed trials by family", height=360, yaxis_title=m)
