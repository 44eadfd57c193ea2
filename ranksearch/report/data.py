"""Load a sweep folder into tables: the trials table, per-report histories, allocations, the Optuna study.

Everything comes from files the sweep writes (see ``ranksearch.sweep.folder``), never from MLflow run by run,
so a 1,000-trial sweep loads in about a second:

- ``trials.parquet``: one row per trial (status, family, ``param:<name>`` columns, last metrics);
- per-report histories: Tune's ``tune/<trial>/result.json`` (every report, pruned trials included), else the
  ``history`` of ``trials/<trial>/**/metrics.json`` (completed trials only);
- ``trials/<trial>/**/allocation.parquet``: rank allocation snapshots (read for the top trials only);
- ``optuna.journal``: the study, for Optuna's parameter importances.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ranksearch.errors import RanksearchError

log = logging.getLogger(__name__)
DONE = ("completed", "pruned", "failed", "error")
# history columns worth keeping besides the objectives (the report's base-vs-new, curves, and the optimisation
# history's compute axis: Tune's time_total_s/timestamp)
_CURVE_KEYS = ("val/base", "val/new", "val/hm", "val/acc", "eval_step", "step", "train/loss")
_CURVE_KEYS += ("time_total_s", "timestamp")


@dataclass
class Objective:
    """One objective of the sweep: metric name and direction."""

    metric: str
    mode: str  # "max" | "min"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


@dataclass
class SweepData:
    """A sweep folder, loaded.

    Attributes:
        folder: the sweep folder; manifest: its sweep.json (a ``Manifest``); space: the recorded search space
            (None if space.yaml is missing or no longer valid).
        objectives: the space's objectives (first one ranks the leaderboard).
        trials: one row per trial, as in trials.parquet, plus ``best_value``/``best_report`` (best report of
            the first objective over the trial's history, not its last) for trials with a history.
        history: long table (trial_id, report, metrics...) of every report found.
    """

    folder: Path
    manifest: Any
    space: Any
    objectives: list[Objective]
    trials: pd.DataFrame
    history: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def first(self) -> Objective:
        return self.objectives[0]

    @property
    def param_columns(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith("param:")]

    def completed(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "completed"]

    def ranked(self) -> pd.DataFrame:
        """Trials with a value of the first objective, best first: completed ones (by best report), then the
        rest (pruned trials' best low-fidelity value)."""
        t = self.trials
        if t.empty or "best_value" not in t.columns:
            return t.assign(rank_value=pd.Series(dtype=float))
        value = t["best_value"].where(t["best_value"].notna(), t.get(self.first.metric))
        t = t.assign(rank_value=value, _done=(t["status"] == "completed").astype(int))
        t = t[t["rank_value"].notna()]
        t = t.sort_values(["_done", "rank_value"], ascending=[False, self.first.mode == "min"])
        return t.drop(columns=["_done"])


def find_sweep(arg: str | Path | None, root: Path | None = None) -> Path:
    """The sweep folder meant by ``arg``: a folder with sweep.json, a sweep name under ``root`` (default
    ./ranksearch-runs/sweeps), or None for the most recently started sweep there.

    Raises:
        RanksearchError: nothing matches (the message lists what was looked at).
    """
    from ranksearch.sweep.folder import DEFAULT_ROOT, MANIFEST

    root = Path(root or DEFAULT_ROOT)
    if arg is None:
        found = sorted(root.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise RanksearchError(f"no sweep found under {root}: pass a sweep folder")
        return found[-1].parent.resolve()
    path = Path(arg).expanduser()
    for candidate in (path, root / str(arg)):
        if (candidate / MANIFEST).is_file():
            return candidate.resolve()
    if path.is_dir():
        raise RanksearchError(f"{path} is not a sweep folder (no {MANIFEST})")
    raise RanksearchError(f"no sweep folder {path} (nor a sweep named {arg!r} under {root})")


def open_sweep(folder: str | Path, tracking_uri: str | None = None) -> SweepData:
    """The sweep's manifest, space and objectives only (no tables read yet: ``load_sweep`` reads them).

    ``manifest.tracking_uri`` is what the commands may contact: ``tracking_uri`` if given (the user's
    ``--tracking-uri``), else sweep.json's when this user's sweep wrote it, else "" (see ``tracking_store``).
    """
    from ranksearch.sweep.folder import Manifest

    folder = find_sweep(folder)
    space = _load_space(folder)
    objectives = (
        [Objective(o.metric, o.mode) for o in space.spec.objectives]
        if space is not None
        else [Objective("val/hm", "max")]
    )
    manifest = Manifest.load(folder)
    manifest.tracking_uri = tracking_store(folder, manifest.tracking_uri, tracking_uri)
    return SweepData(folder, manifest, space, objectives, pd.DataFrame())


def tracking_store(folder: Path, recorded: str, confirmed: str | None) -> str:
    """The MLflow store a read-only command may contact for this sweep folder.

    A folder is data: its sweep.json can name any server (or any sqlite file, whose artifact locations can
    point anywhere). So the recorded URI is used only when this user's key signed sweep.json (a folder this
    user's sweep wrote, ``ranksearch.sweep.signing``); otherwise only after ``--tracking-uri`` names a store
    (``confirmed``), and "" (no MLflow at all) until then, with one warning line saying so.
    """
    from ranksearch.sweep.signing import trusted_manifest

    if confirmed:
        return confirmed
    if not recorded or trusted_manifest(folder):
        return recorded
    if (str(folder), recorded) not in _WARNED:
        _WARNED.add((str(folder), recorded))
        log.warning(
        "%s was not created by you (sweep.json is not signed by your ranksearch key): its MLflow store %s is "
            "not contacted; pass --tracking-uri %s to use it",
            folder, recorded, recorded,
        )  # fmt: skip
    return ""


_WARNED: set[tuple[str, str]] = set()


def load_sweep(
    folder: str | Path | SweepData, history: bool = True, tracking_uri: str | None = None
) -> SweepData:
    """Read a sweep folder (see module docstring). ``history=False`` skips the per-report histories.

    ``folder`` may be the result of ``open_sweep``, which is then completed in place and returned;
    ``tracking_uri`` is passed on to ``open_sweep``.
    """
    data = folder if isinstance(folder, SweepData) else open_sweep(folder, tracking_uri)
    trials = read_trials(data.folder)
    data.history = (
        read_histories(data.folder, list(trials["trial_id"])) if history and len(trials) else pd.DataFrame()
    )
    data.trials = _with_best(trials, data.history, data.first)
    return data


def _load_space(folder: Path) -> Any:
    """The sweep's recorded space.yaml, parsed without the cross-checks ``load_space`` runs: they import every
    adapter family (torch, ~2 s) and the sweep already validated this file when it started."""
    if not (folder / "space.yaml").is_file():
        return None
    from pydantic import ValidationError

    from ranksearch.config.load import load_yaml
    from ranksearch.errors import ConfigError
    from ranksearch.space.space import SearchSpace
    from ranksearch.space.spec import SearchSpaceSpec

    path = folder / "space.yaml"
    try:
        spec = SearchSpaceSpec.model_validate(load_yaml(path))
    except (ConfigError, ValidationError):
        return None
    return SearchSpace(spec, str(path), path.read_text(encoding="utf-8"))


def read_trials(folder: Path) -> pd.DataFrame:
    """trials.parquet as a DataFrame (empty with the key columns when the sweep has not written it yet)."""
    import pyarrow.parquet as pq

    path = folder / "trials.parquet"
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ("trial_id", "status", "family")})
    table = pq.read_table(path)
    # Tune's nested "config" column duplicates the param: columns; a struct column only gets in the way
    keep = [n for n in table.column_names if n != "config"]
    trials = table.select(keep).to_pandas()
    if "trial_id" not in trials.columns:
        raise RanksearchError(f"{path} has no trial_id column: not a ranksearch trials table")
    ids = trials["trial_id"].astype(str)
    plain = ids.map(is_plain_id)
    if not plain.all():  # ids become paths (tune/<id>, trials/<id>): one like ../../x would leave the folder
        bad = list(ids[~plain])
        log.warning(
            "%s: skipped %d trial(s) whose id is not a plain name (e.g. %r): ids never address files outside "
            "the sweep folder", path, len(bad), bad[0],
        )  # fmt: skip
        trials = trials[plain.values].reset_index(drop=True)
    return trials


_PLAIN_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")


def is_plain_id(trial_id: object) -> bool:
    """Whether a trial id is one harmless path component (what ``sweep.folder.safe_name`` produces)."""
    return isinstance(trial_id, str) and bool(_PLAIN_ID.match(trial_id))


def inside(folder: Path, path: Path) -> bool:
    """Whether ``path``, links resolved, is within ``folder`` (a crafted folder may hold links that leave it)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def read_histories(folder: Path, trial_ids: list[str]) -> pd.DataFrame:
    """Every report of every trial as a long table: trial_id, report (1-based), step and metrics."""
    records: list[dict[str, Any]] = []
    for tid in trial_ids:
        if not is_plain_id(tid):
            continue
        result = folder / "tune" / tid / "result.json"
        reports = (_tune_reports(result) if inside(folder, result) else []) or _metrics_history(
            folder, folder / "trials" / tid
        )
        for i, rep in enumerate(reports, 1):
            rec = {k: v for k, v in rep.items() if _is_number(v) and (k in _CURVE_KEYS or _useful(k))}
            rec.update(trial_id=tid, report=i)
            records.append(rec)
    return pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=["trial_id", "report"])


def _useful(key: str) -> bool:
    return key.startswith("val/") or key == "trainable_params"


def _tune_reports(path: Path) -> list[dict[str, Any]]:
    """Tune's result.json: one JSON object per line, one line per report (final report included)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written by a live sweep
                break
    return out


def _metrics_history(folder: Path, trial_dir: Path) -> list[dict[str, Any]]:
    """The ``history`` of the trial's metrics.json files (one per seed replicate, in seed-folder order)."""
    out: list[dict[str, Any]] = []
    if not trial_dir.is_dir() or not inside(folder, trial_dir):
        return out
    for path in sorted(p for p in trial_dir.rglob("metrics.json") if inside(folder, p)):
        try:
            out += json.loads(path.read_text()).get("history", [])
        except (json.JSONDecodeError, OSError):
            continue
    return out


def _with_best(trials: pd.DataFrame, hist: pd.DataFrame, first: Objective) -> pd.DataFrame:
    """Add ``best_value`` and ``best_report``: the trial's best report of the first objective."""
    trials = trials.copy()
    if hist.empty or first.metric not in hist.columns:
        trials["best_value"] = trials.get(first.metric, pd.Series(math.nan, index=trials.index))
        trials["best_report"] = math.nan
        return trials
    h = hist[hist[first.metric].notna()]
    idx = h.groupby("trial_id")[first.metric].idxmax() if first.mode == "max" else None
    if idx is None:
        idx = h.groupby("trial_id")[first.metric].idxmin()
    best = h.loc[idx.values, ["trial_id", first.metric, "report"]]
    best = best.rename(columns={first.metric: "best_value", "report": "best_report"})
    trials = trials.merge(best, on="trial_id", how="left")
    # a completed trial's final row may be better than any report (e.g. seed means): never show worse
    if first.metric in trials.columns:
        final = trials[first.metric]
        worse = final.notna() & (
            trials["best_value"].isna()
            | ((final > trials["best_value"]) if first.mode == "max" else (final < trials["best_value"]))
        )
        trials.loc[worse, "best_value"] = final[worse]
    return trials


def trial_folder(folder: Path, trial_id: str) -> Path | None:
    """The folder holding the trial's adapter and config (its last seed replicate), or None."""
    root = folder / "trials" / str(trial_id)
    if not is_plain_id(trial_id) or not root.is_dir() or not inside(folder, root):
        return None
    found = sorted(p.parent for p in root.rglob("adapter.safetensors") if inside(folder, p))
    return found[-1] if found else None


def final_allocation(folder: Path, trial_id: str) -> pd.DataFrame | None:
    """The last snapshot of the trial's allocation table (last replicate), or None if it has none."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = folder / "trials" / str(trial_id)
    ok = is_plain_id(trial_id) and root.is_dir() and inside(folder, root)
    files = sorted(p for p in root.rglob("allocation.parquet") if inside(folder, p)) if ok else []
    if not files:
        return None
    cols = ["step", "tower", "layer", "module", "rank", "max_rank"]
    table = pq.read_table(files[-1], columns=cols)
    if table.num_rows == 0:
        return None
    last = table.filter(pc.equal(table["step"], pc.max(table["step"])))
    df = last.to_pandas()
    return df[df["max_rank"] > 0]


def param_importances(data: SweepData, objective: int = 0) -> dict[str, float] | None:
    """Optuna's parameter importances for one objective (see ``report.importance``); None without a journal
    or with too few completed trials."""
    from ranksearch.report.importance import collect, start

    return collect(start(data, objective))


def total_trials(data: SweepData) -> int | None:
    """The sweep's trial count: sweep.json's (it knows a ``--trials`` override), else the space's ``trials``."""
    recorded = getattr(data.manifest, "trials", None)
    if recorded is not None:
        return int(recorded)
    return int(data.space.spec.trials) if data.space is not None else None


def status_summary(data: SweepData) -> dict[str, Any]:
    """Counts by state, the best trial so far, elapsed time and an ETA (from the finished-trial rate)."""
    counts = {s: 0 for s in ("pending", "running", *DONE)}
    for s, n in data.trials["status"].value_counts().items():
        counts[str(s)] = int(n)
    total = total_trials(data)
    finished = sum(counts[s] for s in DONE)
    m = data.manifest
    # recorded times, never file times (a copied or moved folder keeps them); a running sweep is still going
    started = float(getattr(m, "started", None) or time.time())
    ended = getattr(m, "ended", None)
    end = time.time() if m.status == "running" else ended  # None: a folder from before end times were kept
    elapsed = None if end is None else max(0.0, float(end) - started)
    eta = None
    if m.status == "running" and elapsed is not None and total and finished and finished < total:
        eta = (total - finished) * elapsed / finished
    best = best_row(data)
    return {
        "sweep": m.name, "folder": str(data.folder), "status": m.status, "total": total,
        "counts": counts, "finished": finished, "elapsed_s": None if elapsed is None else round(elapsed, 1),
        "eta_s": None if eta is None else round(eta, 1), "best": best,
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in data.objectives],
    }  # fmt: skip


def best_row(data: SweepData, trial_id: str | None = None) -> dict[str, Any] | None:
    """The sweep's best trial, as the sweep itself picks it (``sweep.results.best_trial``: completed trials,
    first objective's final value), or the trial named ``trial_id``; as a plain dict without nulls."""
    t = data.trials
    if trial_id is not None:
        sel = t[t["trial_id"].astype(str) == str(trial_id)]
        if sel.empty:
            raise RanksearchError(f"no trial {trial_id!r} in {data.folder} (see: ranksearch status)")
        return _clean(sel.iloc[0].to_dict())
    if data.space is None or t.empty:
        return None
    from ranksearch.sweep.results import best_trial

    rows = [_clean(r) for r in t.to_dict("records")]
    return best_trial(rows, data.space)


def trial_params(folder: Path, trial_id: str) -> dict[str, Any]:
    """The Optuna parameter values of a trial (its set ``param:<name>`` columns), read with pyarrow so values
    keep their types (pandas turns an int column with nulls into floats)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "trials.parquet")
    rows = table.filter(pc.equal(table["trial_id"], str(trial_id))).to_pylist()
    if not rows:
        raise RanksearchError(f"no trial {trial_id!r} in {folder / 'trials.parquet'}")
    return {k[len("param:") :]: v for k, v in rows[0].items() if k.startswith("param:") and v is not None}


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        out[k] = v.item() if hasattr(v, "item") else v
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
