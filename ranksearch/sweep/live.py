"""What the driver shows: a live table while the sweep runs, a leaderboard and where to look when it ends.

``LiveView`` is a Tune ``Callback`` (Tune's own reporter is silenced with ``verbose=0``). On a terminal it
redraws a rich ``Live`` panel (counts of pending/running/completed/pruned/failed trials, the best so far, the
running trials); elsewhere (CI logs, tests) it prints one line per finished trial.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback
from rich import box
from rich.console import Console, Group
from rich.table import Table

from ranksearch.sweep.results import best_trial, pareto_front, trial_rows, trial_status

log = logging.getLogger(__name__)


class LiveView(Callback):
    """Live progress of a sweep (see module docstring)."""

    def __init__(self, space: Any, name: str, total: int, live: bool | None = None):
        self.space, self.name, self.total, self.live = space, name, total, live
        self._console: Console | None = None
        self._live: Any = None
        self._start = time.time()
        self._last_draw = 0.0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_console=None, _live=None)
        return state

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(stderr=True)
        return self._console

    def setup(self, **info: Any) -> None:
        self._start = time.time()
        use_live = self.console.is_terminal if self.live is None else self.live
        if use_live:
            from rich.live import Live

            self._live = Live(console=self.console, refresh_per_second=2, transient=False)
            self._live.start()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._live is not None and time.time() - self._last_draw > 0.5:
            self._last_draw = time.time()
            self._safely(lambda: self._live.update(self.render(trials)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(lambda: self._announce(trials, trial, "TERMINATED"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(lambda: self._announce(trials, trial, "ERROR"))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._live is not None:
            self._safely(lambda: self._live.update(self.render(trials)))
            self._stop_live()

    def _safely(self, draw: Callable[[], None]) -> None:
        """Run a display update; a display bug must never fail a trial or the sweep (Tune treats an exception
        in a callback as fatal), so it switches to plain progress lines with one warning instead."""
        try:
            draw()
        except Exception as e:
            log.warning("live view switched off after a display error: %s: %s", type(e).__name__, e)
            self._stop_live()
            self.live = False

    def _stop_live(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            with contextlib.suppress(Exception):  # already broken: the plain lines take over
                live.stop()

    def _announce(self, trials: list, trial: Any, ended: str) -> None:
        # Tune calls this before it sets the trial's own status: the ended map says how it is ending
        ended_map = {trial.trial_id: ended}
        if self._live is not None:
            self._live.update(self.render(trials, ended_map))
            return
        first = self.space.spec.objectives[0].metric
        value = (trial.last_result or {}).get(first)
        shown = f"{value:.4g}" if isinstance(value, int | float) else "-"
        done = sum(trial_status(t, ended_map.get(t.trial_id)) not in ("running", "pending") for t in trials)
        self.console.print(
            f"[{done}/{self.total}] trial {trial.trial_id} {trial_status(trial, ended)}: {first} = {shown}",
            highlight=False,
        )

    def render(self, trials: list, ended: dict[str, str] | None = None) -> Group:
        """The live panel; ``ended`` maps trial ids to the Tune status they are ending with."""
        rows = trial_rows(trials, self.space, ended)
        counts = {s: 0 for s in ("pending", "running", "completed", "pruned", "failed", "error")}
        for r in rows:
            counts[r["status"]] += 1
        first = self.space.spec.objectives[0]
        best = best_trial(rows, self.space)
        elapsed = time.time() - self._start
        head = (
            f"[bold]sweep {self.name}[/bold]  {elapsed:5.0f} s  trials {len(rows)}/{self.total}  "
            + "  ".join(f"{k} {v}" for k, v in counts.items() if v)
        )
        best_line = (
            f"best {first.metric} ({first.mode}): {best[first.metric]:.4g}  trial {best['trial_id']}  "
            + _params_text(best)
            if best
            else "best: none finished yet"
        )
        table = Table(title="running", show_header=True, expand=False)
        for col in ("trial", "reports", first.metric, "parameters"):
            table.add_column(col)
        for r in rows:
            if r["status"] == "running":
                v = r.get(first.metric)
                table.add_row(
                    r["trial_id"],
                    str(r["reports"]),
                    f"{v:.4g}" if isinstance(v, float) else "-",
                    _params_text(r),
                )
        return Group(head, best_line, table)


def _params_text(row: dict[str, Any], limit: int = 90) -> str:
    text = " ".join(f"{k[6:]}={_short(v)}" for k, v in row.items() if k.startswith("param:"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def short_names(keys: list[str]) -> dict[str, str]:
    """Parameter columns (``param:lora:adapter.r``) -> what the leaderboard calls them: the last part of the
    path (``r``) when no other parameter ends the same way, else the path (``adapter.r``). The family prefix
    goes: a row holds one family's parameters only."""
    paths = {k: k[len("param:") :].split(":", 1)[-1] for k in keys}
    last: dict[str, set[str]] = {}
    for p in paths.values():
        last.setdefault(p.rsplit(".", 1)[-1], set()).add(p)
    return {
        k: (p.rsplit(".", 1)[-1] if len(last[p.rsplit(".", 1)[-1]]) == 1 else p) for k, p in paths.items()
    }


def _metric(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _header(metric: str, mode: str, compact: bool) -> str:
    arrow = "↑" if mode == "max" else "↓"
    return f"{'trainable' if compact and metric == 'trainable_params' else metric} {arrow}"


def leaderboard(rows: list[dict[str, Any]], space: Any, top: int = 10, width: int | None = None) -> Table:
    """The best completed trials by the first objective (Pareto-optimal ones marked with *, several objectives).

    Nothing is broken mid-word: the first of these layouts that fits ``width`` (the terminal's) is used: the
    parameters of a trial on one line; one parameter per line; that with the test metrics in one column
    (``base/new/hm``). Parameters have short names (``lr=0.0141``, ``towers=vision``).
    """
    objs = space.spec.objectives
    first = objs[0]
    done = [r for r in rows if r["status"] == "completed" and isinstance(r.get(first.metric), int | float)]
    done.sort(key=lambda r: r[first.metric], reverse=first.mode == "max")
    done = done[:top]
    front = {r["trial_id"] for r in pareto_front(rows, space)} if len(objs) > 1 else set()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    # the report metrics on test: base / new / HM under base-to-new, else the first objective's test twin
    test_keys = [k for k in ("test/base", "test/new", "test/hm") if any(k in r for r in done)]
    test_keys = test_keys or [first.metric.replace("val/", "test/", 1)]
    families = len({r.get("family") for r in done}) > 1
    # the family has its own column (several families) or is the same for all: not a parameter to repeat
    names = short_names(
        sorted({k for r in done for k in r if k.startswith("param:") and k != "param:adapter.family"})
    )
    order = {f"param:{n}": i for i, n in enumerate(space.all_param_names())}  # as the space file lists them
    keys = sorted(names, key=lambda k: (order.get(k, len(order)), k))
    params = [[f"{names[k]}={_short(r[k])}" for k in keys if r.get(k) is not None] for r in done]
    zero_shot = next((r for r in done if isinstance(r.get(f"zs/{test_keys[0]}"), float)), None)

    def tests(r: dict[str, Any], prefix: str, merged: bool) -> list[str]:
        vals = [f"{r[prefix + k]:.1f}" if isinstance(r.get(prefix + k), float) else "-" for k in test_keys]
        return ["/".join(vals)] if merged else vals

    def build(sep: str, compact: bool) -> Table:
        merged = compact and len(test_keys) > 1
        table = Table(title=f"leaderboard by {first.metric} (validation; test: reported, not selected on)",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)  # fmt: skip
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("trial", no_wrap=True)
        if families:
            table.add_column("family", no_wrap=True)
        for o in objs:
            table.add_column(_header(o.metric, o.mode, compact), justify="right", no_wrap=True)
        if merged:
            table.add_column("test", justify="right", no_wrap=True)
        else:
            for key in test_keys:
                table.add_column(key, justify="right", no_wrap=True)
        table.add_column("parameters", overflow="fold")
        for i, (r, p) in enumerate(zip(done, params, strict=True), 1):
            vals = []
            for o in objs:
                std = r.get(f"{o.metric}_std")
                std_text = f" ± {std:.2g}" if isinstance(std, float) and std > 0 else ""
                vals.append(f"{_metric(r[o.metric])}{std_text}")
            mark = "*" if r["trial_id"] in front else ""
            fam = [str(r.get("family", ""))] if families else []
            table.add_row(str(i), r["trial_id"] + mark, *fam, *vals, *tests(r, "", merged), sep.join(p))
        # every trial adapts the same frozen model: its zero-shot numbers are the baseline to beat
        if zero_shot is not None:
            zs_obj = [_metric(zero_shot[f"zs/{o.metric}"]) if isinstance(zero_shot.get(f"zs/{o.metric}"), float)
                      else "-" for o in objs]  # fmt: skip
            fam = [""] if families else []
            table.add_row("", "zero-shot", *fam, *zs_obj, *tests(zero_shot, "zs/", merged), "no adapter",
                          style="dim")  # fmt: skip
        table.caption = (
            ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            + ("; * = on the Pareto front" if front else "")
            + (f"; test = {'/'.join(k.split('/', 1)[-1] for k in test_keys)}" if merged else "")
        )
        return table

    layouts = [("  ", False), ("\n", False), ("\n", True)]
    if width is None:
        return build(*layouts[0])
    measure = Console(width=10_000).measure
    for sep, compact in layouts:
        table = build(sep, compact)
        if measure(table).maximum <= width:
            return table
    return table  # narrower than every layout: the most compact one, squeezed by rich
