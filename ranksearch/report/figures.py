"""Plotly figures of a loaded sweep (``SweepData``); each returns a ``go.Figure`` or None when there is no data.

Sizes stay bounded for 1,000-trial sweeps: scatter plots draw one point per trial (SVG, no WebGL, so a
headless browser without a GPU renders them), learning curves draw only the top trials plus a median band,
and allocation heatmaps read the allocation tables of the top trials only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ranksearch.report.data import SweepData, final_allocation

MODULE_ORDER = ("q", "k", "v", "o", "fc", "proj", "ln_1", "ln_2")
# no named template: plotly deep-copies a template into every figure (~0.1 s each); a few plain properties instead
_LAYOUT = {
    "template": "none",
    "plot_bgcolor": "white",
    "font": {"size": 12},
    "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
    "height": 420,
}
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def style(fig: go.Figure) -> go.Figure:
    """Light grid lines on every cartesian axis (what plotly_white would give)."""
    fig.update_xaxes(showgrid=True, gridcolor="#e5e5e5", zeroline=False, linecolor="#999")
    fig.update_yaxes(showgrid=True, gridcolor="#e5e5e5", zeroline=False, linecolor="#999")
    return fig


def _color(families: list[str]) -> dict[str, str]:
    return {f: _PALETTE[i % len(_PALETTE)] for i, f in enumerate(families)}


def _hover(df: pd.DataFrame) -> list[str]:
    return [f"trial {t} ({f})" for t, f in zip(df["trial_id"], df["family"], strict=True)]


def pareto_mask(values: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """Rows of ``values`` (n × k) that no other row dominates. O(n² k) in numpy: fine for thousands."""
    v = np.where(np.asarray(maximize), values, -values)  # all "higher is better"
    ge = (v[:, None, :] >= v[None, :, :]).all(-1)  # ge[i, j]: i at least as good as j everywhere
    gt = (v[:, None, :] > v[None, :, :]).any(-1)
    dominated = (ge & gt).any(0)
    return ~dominated


def pareto_axes(data: SweepData) -> list[tuple[str, str]]:
    """(metric, mode) pairs for the Pareto plot: the first two objectives, else the first vs trainable params."""
    objs = [(o.metric, o.mode) for o in data.objectives]
    if len(objs) >= 2:
        return objs[:2]
    return [objs[0], ("trainable_params", "min")]


def pareto(data: SweepData) -> go.Figure | None:
    """Completed trials on the first objective vs the second (or trainable parameters); the front as a line."""
    axes = pareto_axes(data)
    cols = [m for m, _ in axes]
    done = data.completed()
    if any(c not in done.columns for c in cols):
        return None
    done = done.dropna(subset=cols)
    if done.empty:
        return None
    mask = pareto_mask(done[cols].to_numpy(float), [mode == "max" for _, mode in axes])
    (ym, ymode), (xm, xmode) = axes
    fig = go.Figure()
    colors = _color(sorted(done["family"].unique()))
    for fam, sub in done.groupby("family"):
        fig.add_trace(
            go.Scatter(
                x=sub[xm], y=sub[ym], mode="markers", name=str(fam), text=_hover(sub),
                marker={"color": colors[fam], "size": 7, "opacity": 0.6},
            )
        )  # fmt: skip
    front = done[mask].sort_values(xm)
    fig.add_trace(
        go.Scatter(
            x=front[xm], y=front[ym], mode="lines+markers", name=f"Pareto front ({len(front)})",
            text=_hover(front), line={"color": "black", "shape": "hv"},
            marker={"symbol": "star", "size": 11, "color": "gold", "line": {"color": "black", "width": 1}},
        )
    )  # fmt: skip
    fig.update_layout(
        **_LAYOUT, title=f"Pareto front: {ym} ({ymode}) vs {xm} ({xmode})", xaxis_title=xm, yaxis_title=ym
    )
    if xm == "trainable_params" and (done[xm] > 0).all():
        fig.update_xaxes(type="log")
    return fig


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
    fig.update_layout(
        **_LAYOUT, title="base vs new accuracy (validation; dotted: equal harmonic mean)",
        xaxis_title="val/base (%)", yaxis_title="val/new (%)",
    )  # fmt: skip
    return fig


def importances(values: dict[str, float] | None, metric: str) -> go.Figure | None:
    """Horizontal bars of Optuna's parameter importances."""
    if not values:
        return None
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(
            x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
            text=[f"{v:.3f}" for _, v in items], textposition="auto", marker={"color": "#1f77b4"},
        )
    )  # fmt: skip
    layout = {**_LAYOUT, "height": max(260, 40 + 32 * len(items)), "margin": {**_LAYOUT["margin"], "l": 200}}
    fig.update_layout(**layout, title=f"parameter importance for {metric} (Optuna)", xaxis_title="importance")
    return fig


def parallel(data: SweepData, limit: int = 300) -> go.Figure | None:
    """Parallel coordinates of completed trials: shared parameters (log10 for log-scaled ones), family,
    objectives; coloured by the first objective. Only the best ``limit`` trials: parcoords draws with WebGL,
    which a browser without a GPU (headless CI) emulates slowly, and 1,000 lines are unreadable anyway."""
    done = data.completed()
    if data.first.metric not in done.columns:
        return None
    done = done.dropna(subset=[data.first.metric])
    if done.empty:
        return None
    ranked = done.sort_values(data.first.metric, ascending=data.first.mode == "min").head(limit)
    dims = []
    for col in data.param_columns:
        s = ranked[col]
        if s.isna().any():
            continue  # a family's own parameter: undefined for other families' trials
        dims.append(_dimension(col[len("param:") :], s, _is_log(data, col[len("param:") :])))
    for o in data.objectives:
        if o.metric in ranked.columns and ranked[o.metric].notna().all():
            dims.append({"label": o.metric, "values": ranked[o.metric].astype(float).tolist()})
    if len(dims) < 2:
        return None
    color = ranked[data.first.metric].astype(float)
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={"color": color.tolist(), "colorscale": "Viridis", "showscale": True,
                  "reversescale": data.first.mode == "min", "colorbar": {"title": data.first.metric}},
        )
    )  # fmt: skip
    fig.update_layout(**{**_LAYOUT, "margin": {"l": 80, "r": 80, "t": 80, "b": 40}})
    fig.update_layout(title=f"parallel coordinates (best {len(ranked)} of {len(done)} completed trials)")
    return fig


def _is_log(data: SweepData, name: str) -> bool:
    if data.space is None:
        return False
    path = name.split(":", 1)[-1]
    spec = data.space.spec.params.get(path)
    for fam in data.space.spec.families.values():
        spec = spec or fam.params.get(path)
    return bool(getattr(spec, "log", False))


def _dimension(label: str, s: pd.Series, log: bool) -> dict[str, Any]:
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        values = s.astype(float)
        if log and (values > 0).all():
            return {"label": f"log10 {label}", "values": np.log10(values).tolist()}
        return {"label": label, "values": values.tolist()}
    cats = sorted(s.astype(str).unique())
    codes = s.astype(str).map({c: i for i, c in enumerate(cats)})
    return {"label": label, "values": codes.tolist(), "tickvals": list(range(len(cats))), "ticktext": cats}


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
    fig.update_layout(
        **_LAYOUT, title=f"learning curves: {metric} per report (top {len(ids)} trials)",
        xaxis_title="report (validation evaluation)", yaxis_title=metric,
    )  # fmt: skip
    return fig


def _modules(df: pd.DataFrame) -> list[str]:
    present = set(df["module"])
    return [m for m in MODULE_ORDER if m in present] + sorted(present - set(MODULE_ORDER))


def _grid(
    df: pd.DataFrame, tower: str, modules: list[str], value: str
) -> tuple[list[int], list[list[float]]]:
    sub = df[df["tower"] == tower]
    layers = sorted(int(v) for v in sub["layer"].unique())
    pivot = sub.pivot_table(index="layer", columns="module", values=value, aggfunc="mean")
    pivot = pivot.reindex(index=layers, columns=modules)
    z = [[None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in row]
         for row in pivot.to_numpy().tolist()]  # fmt: skip
    return layers, z


def allocation_heatmap(df: pd.DataFrame, title: str) -> go.Figure:
    """Layer × module heatmap of one trial's final rank, one panel per tower."""
    towers = [t for t in ("vision", "text") if t in set(df["tower"])]
    modules = _modules(df)
    fig = make_subplots(rows=1, cols=len(towers), subplot_titles=towers, horizontal_spacing=0.12)
    zmax = float(df["max_rank"].max() or 1)
    for i, tower in enumerate(towers, 1):
        layers, z = _grid(df, tower, modules, "rank")
        fig.add_trace(
            go.Heatmap(
                z=z, x=modules, y=[f"L{ly}" for ly in layers], zmin=0, zmax=zmax, colorscale="Viridis",
                text=[[("" if v is None else f"{v:.0f}") for v in row] for row in z], texttemplate="%{text}",
                showscale=i == len(towers), colorbar={"title": "rank"},
            ),
            row=1, col=i,
        )  # fmt: skip
    fig.update_layout(**{**_LAYOUT, "height": 320}, title=title)
    return fig


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
        title = f"#{len(out) + 1} trial {row.trial_id} ({row.family}), {data.first.metric} {value}"
        out.append((row.trial_id, allocation_heatmap(df, title)))
    return out


def rank_where(data: SweepData, quantile: float = 0.2, cap: int = 50) -> tuple[go.Figure | None, int]:
    """Where rank goes in good trials: mean share of each trial's total final rank per tower × layer × module,
    over the top ``quantile`` of completed trials (at most ``cap`` tables read). Returns (figure, trials used)."""
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
        return None, 0
    all_ = pd.concat(frames)
    # a site a trial did not adapt counts as 0 % of its rank
    mean = all_.groupby(["tower", "layer", "module"])["share"].sum().reset_index()
    mean["share"] = 100 * mean["share"] / len(frames)
    towers = [t for t in ("vision", "text") if t in set(mean["tower"])]
    modules = _modules(mean)
    fig = make_subplots(rows=1, cols=len(towers) + 1, subplot_titles=[*towers, "by module"],
                        horizontal_spacing=0.1, column_widths=[1.0] * len(towers) + [0.8])  # fmt: skip
    zmax = float(mean["share"].max())
    for i, tower in enumerate(towers, 1):
        layers, z = _grid(mean, tower, modules, "share")
        fig.add_trace(
            go.Heatmap(
                z=z, x=modules, y=[f"L{ly}" for ly in layers], zmin=0, zmax=zmax, colorscale="Magma",
                text=[[("" if v is None else f"{v:.1f}") for v in row] for row in z], texttemplate="%{text}",
                showscale=i == len(towers), colorbar={"title": "% of rank", "x": 0.72},
            ),
            row=1, col=i,
        )  # fmt: skip
    by = mean.groupby(["tower", "module"])["share"].sum().reset_index()
    for tower in towers:
        sub = by[by["tower"] == tower].set_index("module").reindex(modules)
        fig.add_trace(go.Bar(x=modules, y=sub["share"], name=tower), row=1, col=len(towers) + 1)
    fig.update_layout(
        **{**_LAYOUT, "height": 360}, barmode="group",
        title=f"where rank goes in the top {len(frames)} trials (mean % of each trial's total final rank)",
    )  # fmt: skip
    return fig, len(frames)


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
    fig.update_layout(**{**_LAYOUT, "height": 360}, title=f"{m} of completed trials by family", yaxis_title=m)
    return table, fig
