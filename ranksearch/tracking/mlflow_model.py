"""An exported trial as an MLflow model: a ``LoggedModel`` linked to its trial run, and the model registry.

``log_exported_model`` logs an export folder (``ranksearch.export.export_trial``) as a pyfunc model by
"models from code" (``openclip_pyfunc.py``: open_clip only, no ranksearch needed to load it), linked to the
trial's run, with the trial's validation metrics (the ones it was selected on) and test metrics attached to
the model and to the datasets they were measured on (``mlflow.data`` datasets with the split's definition).
``register`` puts a logged model in the model registry under a name, with an alias (``champion``).

The datasets are ``MetaDataset``s: a split is defined by the task, protocol, domain, shots and seed (the
shape world is generated, CoOp data lives in ``data.root``), so its digest is that definition's hash.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).with_name("openclip_pyfunc.py")
TRIAL_RUN_FILE = "mlflow_run.json"  # written by `ranksearch trial` next to the trial's outputs
DEFAULT_ALIAS = "champion"
# what the pyfunc needs at load time (the export is a stock open_clip model)
REQUIREMENTS = ("mlflow", "torch", "open_clip_torch", "numpy", "pillow")


@contextlib.contextmanager
def tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API (what model logging uses) pointed at ``uri`` for a while, then back as it was.

    ``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI`` (for subprocesses); setting the previous value
    back would leave that variable set to MLflow's default, and every later sweep in the process would log there.
    So the previous state (none set, or the user's variable) is restored exactly.
    """
    import os

    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    old_uri = getattr(tracking_utils, "_tracking_uri", None)
    old_env = os.environ.get("MLFLOW_TRACKING_URI")
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar for copying a local folder
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_uri)  # None: unset, as before
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)


def split_dataset(config: Any, split: str) -> Any:
    """The ``mlflow.data`` dataset of one split of the trial's task (metadata only; see module docstring)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.filesystem_dataset_source import FileSystemDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    d = config.data
    fields = {
        "task": d.task,
        "protocol": d.protocol,
        "split": split,
        "shots": str(d.shots),
        "seed": str(config.seed),
    }
    domain = getattr(d, "domain", None)
    if domain:
        fields["domain"] = str(domain)
    root = getattr(d, "root", None)
    source = FileSystemDatasetSource(str(Path(root).expanduser())) if root else CodeDatasetSource(fields)
    name = f"{d.task}{'/' + str(domain) if domain else ''} {d.protocol} {split}"
    return MetaDataset(source, name=name[:500])


def selection_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """A trial's final metrics by split: {"val": {...}, "test": {...}} (zero-shot baselines left out)."""
    out: dict[str, dict[str, float]] = {"val": {}, "test": {}}
    for k, v in metrics.items():
        split = k.split("/", 1)[0]
        if split in out and not k.endswith("_std") and isinstance(v, int | float):
            out[split][k] = float(v)
    return out


def trial_run_of(trial_dir: Path) -> tuple[str, str] | None:
    """(tracking URI, run id) that ``ranksearch trial`` recorded for this trial folder, if any."""
    import json

    path = Path(trial_dir) / TRIAL_RUN_FILE
    try:
        data = json.loads(path.read_text())
        return str(data["tracking_uri"]), str(data["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def logged_model_of(uri: str, run_id: str) -> Any | None:
    """The ranksearch export already logged from ``run_id`` (newest), so a second register reuses it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        experiment_ids=[experiment],
        filter_string=f"source_run_id = '{run_id}' AND tags.`ranksearch.export` = 'true'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=1,
    )
    return found[0] if found else None


def log_exported_model(
    export_dir: Path, uri: str, run_id: str, config: Any, metrics: dict[str, float]
) -> Any:
    """Log ``export_dir`` as a ``LoggedModel`` of run ``run_id``; returns the ``LoggedModel`` (READY).

    Args:
        export_dir: a folder written by ``export_trial`` (open_clip ``local-dir:`` layout + export.json).
        uri: the tracking store of the run.
        run_id: the trial's run: the model's source run, and where its metrics are logged.
        config: the trial's ``TrialConfig`` (model name, family, datasets).
        metrics: the trial's final metrics (val/* and test/* are attached to the model).
    """
    import json

    import mlflow
    from mlflow.entities import LoggedModelOutput
    from mlflow.tracking import MlflowClient

    export_dir = Path(export_dir)
    manifest = json.loads((export_dir / "export.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    params = {"model": config.model.name, "family": config.adapter.family, "merged": str(manifest["merged"]),
              "pretrained": str(config.model.pretrained)}  # fmt: skip
    tags = {"ranksearch.export": "true", "ranksearch.family": config.adapter.family,
            "ranksearch.merged": str(manifest["merged"]).lower()}  # fmt: skip
    for key in ("ranksearch.trial_id", "ranksearch.sweep"):
        if key in run.data.tags:
            tags[key] = run.data.tags[key]
    step = max(
        (m.step for k in ("val/hm", "val/acc") for m in client.get_metric_history(run_id, k)), default=0
    )
    with tracking(uri), warnings_quiet():
        model = mlflow.initialize_logged_model(
            name="open_clip", source_run_id=run_id, tags=tags, params=params, model_type="open_clip",
            experiment_id=run.info.experiment_id,
        )  # fmt: skip
        try:
            mlflow.pyfunc.log_model(
                name="open_clip", python_model=str(PYFUNC_CODE), artifacts={"open_clip": str(export_dir)},
                pip_requirements=list(REQUIREMENTS), model_id=model.model_id,
            )  # fmt: skip
            for split, values in selection_metrics(metrics).items():
                if values:
                    mlflow.log_metrics(values, step=step, run_id=run_id, model_id=model.model_id,
                                       dataset=split_dataset(config, split))  # fmt: skip
            client.log_outputs(run_id, models=[LoggedModelOutput(model.model_id, step=step)])
        except BaseException:
            mlflow.finalize_logged_model(model.model_id, "FAILED")
            raise
        return mlflow.finalize_logged_model(model.model_id, "READY")


def register(uri: str, model_id: str, name: str, alias: str = DEFAULT_ALIAS, tags: dict | None = None) -> Any:
    """Register the logged model under ``name`` (a new version) and point ``alias`` at it; returns the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    with tracking(uri), warnings_quiet():
        version = mlflow.register_model(
            f"models:/{model_id}", name, tags={k: str(v) for k, v in (tags or {}).items()}
        )
    client = MlflowClient(tracking_uri=uri)
    client.set_registered_model_alias(name, alias, version.version)
    return version


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """MLflow's model logging warns about things that do not apply here (no signature, no input example)."""
    import warnings

    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(max(level, logging.ERROR))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            mlflow_log.setLevel(level)
