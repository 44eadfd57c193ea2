"""What a trial reports and leaves behind: its tracker interface, evaluation events, result, progress bar and
artifacts. Shared by single-task trials (``ranksearch.trial``) and continual ones (``ranksearch.continual_run``),
which is why it sits below both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ranksearch.config.schema import TrialConfig


class Tracker(Protocol):
    """Where a trial's params, metrics and artifacts go (MLflow in debug mode; nothing in a sweep worker)."""

    def start(self, params: dict, tags: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def end(self, status: str) -> None: ...


def trial_params(config: TrialConfig) -> dict[str, Any]:
    """A trial's tracked params: its config, plus ``model.activation``, the MLP activation its model runs
    (``quick_gelu`` for OpenAI weights, see ``ranksearch.models.clip.needs_quick_gelu``)."""
    from ranksearch.models.clip import model_activation

    params = config.model_dump(mode="json")
    params["model"]["activation"] = model_activation(config.model.name, config.model.pretrained)
    return params


@dataclass
class EvalEvent:
    """Passed to ``on_eval`` after each validation evaluation; ``state()`` builds a resumable checkpoint."""

    step: int
    total_steps: int
    metrics: dict[str, float]
    state: Callable[[], dict]


@dataclass
class TrialResult:
    """Outcome of a trial. ``status`` is "completed" or "failed" (diverged / over its time budget)."""

    status: str
    metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    output_dir: Path | None = None
    error: str | None = None


def write_artifacts(
    output_dir: Path,
    model,
    config: TrialConfig,
    final,
    history,
    rows: list[dict],
    classes: dict | None = None,
) -> None:
    """metrics.json, the allocation table (parquet), the adapter (safetensors), rank pattern and plots."""
    import pyarrow.parquet as pq

    from ranksearch.adapters.io import save_adapter
    from ranksearch.tracking.allocation import allocation_table, rank_pattern
    from ranksearch.tracking.plots import plot_allocation_heatmap, plot_rank_over_time

    doc: dict[str, Any] = {"final": final, "history": history}
    if classes is not None:
        doc["classes"] = classes
    (output_dir / "metrics.json").write_text(json.dumps(doc, indent=2))
    pq.write_table(allocation_table(rows), output_dir / "allocation.parquet")
    (output_dir / "rank_pattern.json").write_text(json.dumps(rank_pattern(rows), indent=2))
    save_adapter(model, output_dir / "adapter.safetensors", {"config": config.model_dump(mode="json")})
    plot_allocation_heatmap(rows, output_dir / "allocation_heatmap.png")
    plot_rank_over_time(rows, output_dir / "rank_over_time.png")


class progress_bar:
    """A rich progress bar (step, loss, lr, it/s) or a no-op; used as ``with progress_bar(...) as update:``."""

    def __init__(self, enabled: bool, total: int, start: int, label: str):
        self.enabled, self.total, self.start, self.label = enabled, total, start, label

    def __enter__(self) -> Callable:
        if not self.enabled:
            return lambda stats: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.1f} it/s"),
            TimeRemainingColumn(), transient=False,
        )  # fmt: skip
        self.bar.start()
        self.task = self.bar.add_task(
            f"train {self.label}", total=self.total, completed=self.start, loss=0.0, lr=0.0, ips=0.0
        )
        self.t0, self.n = time.perf_counter(), 0

        def update(stats) -> None:
            self.n += 1
            ips = self.n / max(1e-9, time.perf_counter() - self.t0)
            self.bar.update(self.task, completed=stats.step, loss=stats.loss, lr=stats.lr, ips=ips)

        return update

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
