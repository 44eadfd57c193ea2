"""Export a trial's adapter as a plain open_clip model folder that open_clip alone can load.

The folder follows open_clip's ``local-dir:`` layout (``open_clip_config.json`` with the model config embedded,
``open_clip_pytorch_model.bin``), so ``open_clip.create_model("local-dir:DIR")`` rebuilds the adapted model
without ranksearch installed. Mergeable families are folded into the weights (zero inference overhead); a
family that cannot merge (DRA-style) is exported as the frozen base model plus the adapter file, which only
``load_export`` (ranksearch) puts together; the manifest's ``load_with`` says which.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from ranksearch.errors import RanksearchError

log = logging.getLogger(__name__)


def rebuild_adapted_model(trial_dir: Path, device: str = "cpu"):
    """The trial's model with its saved adapter attached (unmerged), and its config."""
    from ranksearch.config import load_trial_config
    from ranksearch.models.clip import build_model

    trial_dir = Path(trial_dir)
    for name in ("config.yaml", "adapter.safetensors"):
        if not (trial_dir / name).is_file():
            raise RanksearchError(f"{trial_dir} is not a finished trial folder: {name} is missing")
    config = load_trial_config(trial_dir / "config.yaml")
    torch.manual_seed(config.seed)
    model, _ = build_model(config.model.name, config.model.pretrained, device=device)
    family = _attach_saved(model, config, trial_dir / "adapter.safetensors")
    return model, config, family


def _attach_saved(model, config, adapter_file: Path):
    """Attach ``config``'s adapter to ``model`` at its placement and load the saved weights; eval mode."""
    from ranksearch.adapters import get_family
    from ranksearch.adapters.inject import attach_adapters
    from ranksearch.adapters.io import load_adapter
    from ranksearch.adapters.placement import resolve_sites
    from ranksearch.models.clip import tower_blocks

    p = config.placement
    depths = {t: len(b) for t, b in tower_blocks(model).items()}
    family = get_family(config.adapter.family)(config.adapter, config.train.total_steps(config.data.shots))
    attach_adapters(model, family, resolve_sites(p.towers, p.layers, p.matrices, depths))
    load_adapter(model, adapter_file)
    model.eval()
    return family


def load_export(export_dir: Path, device: str = "cpu"):
    """The model of an export folder as the trial ran it.

    A merged export is the stock open_clip model (``open_clip.create_model("local-dir:DIR")`` gives the same).
    A family that cannot merge (DRA-style) is the frozen base from the folder with ``adapter.safetensors``
    attached by ranksearch: open_clip alone would load the base without the adapter.
    """
    import open_clip

    from ranksearch.config import load_trial_config

    export_dir = Path(export_dir)
    try:
        manifest = json.loads((export_dir / "export.json").read_text())
    except (OSError, ValueError) as e:
        raise RanksearchError(f"{export_dir} is not a ranksearch export (export.json: {e})") from None
    model = open_clip.create_model(f"local-dir:{export_dir}", device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    if not manifest.get("merged", True):
        _attach_saved(
            model, load_trial_config(export_dir / "config.yaml"), export_dir / "adapter.safetensors"
        )
    return model.eval()


def export_trial(trial_dir: Path, out_dir: Path) -> dict:
    """Write ``out_dir`` with the merged open_clip model, the adapter-only weights and the rank pattern.

    Returns the manifest (also written as ``out_dir/export.json``). ``out_dir`` must not exist or be empty:
    an export never overwrites earlier results.
    """
    import open_clip

    from ranksearch.adapters.inject import merge_to_stock
    from ranksearch.models.clip import activation_of

    trial_dir, out_dir = Path(trial_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RanksearchError(f"--out {out_dir} exists and is not empty; choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    model, config, family = rebuild_adapted_model(trial_dir)
    merged = family.mergeable
    if merged:
        merge_to_stock(model)
    else:
        log.warning(
            "%s adapters are input-dependent and cannot be merged: exporting base model + adapter",
            family.name,
        )
        model, _ = rebuild_base(config)
    model_cfg = open_clip.get_model_config(config.model.name)
    if model_cfg is None:
        raise RanksearchError(f"no open_clip config found for {config.model.name!r}")
    if activation_of(model) == "quick_gelu":  # OpenAI weights: the folder must rebuild QuickGELU, not nn.GELU
        model_cfg = {**model_cfg, "quick_gelu": True}
    preprocess = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    (out_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2)
    )
    torch.save(model.state_dict(), out_dir / "open_clip_pytorch_model.bin")
    for name in ("adapter.safetensors", "rank_pattern.json", "config.yaml"):
        if (trial_dir / name).is_file():
            shutil.copy2(trial_dir / name, out_dir / name)
    manifest = {
        "model": config.model.name,
        "family": family.name,
        "merged": merged,
        "load_with": f'open_clip.create_model("local-dir:{out_dir.resolve()}")'
        if merged
        else f'ranksearch.export.load_export("{out_dir.resolve()}")',
        "note": "adapter folded into the weights: a stock open_clip model"
        if merged
        else "not mergeable (the update depends on the input): open_clip_pytorch_model.bin is the frozen base, "
        "which open_clip.create_model('local-dir:...') loads without the adapter; load_export attaches "
        "adapter.safetensors to it",
        "source_trial": str(trial_dir.resolve()),
    }
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def rebuild_base(config):
    from ranksearch.models.clip import build_model

    torch.manual_seed(config.seed)
    return build_model(config.model.name, config.model.pretrained)


# ------------------------------------------------------------------------------------------------- MLflow
def trial_run(source: str, trial_dir: Path, tracking_uri: str | None = None) -> tuple[str, str] | None:
    """(tracking URI, run id) of the MLflow run the exported trial belongs to, or None when none is known.

    A sweep trial's child run (found by its ``ranksearch.trial_id`` tag), the run id the export was pointed at
    (a sweep's parent run: its best trial's run), or the run ``ranksearch trial`` recorded in the folder.
    """
    from ranksearch.report.locate import RUN_ID, _candidate_uris, _holds_run
    from ranksearch.tracking.mlflow_model import trial_run_of

    recorded = trial_run_of(trial_dir)
    if recorded is not None:
        return recorded
    if RUN_ID.match(source):
        uri = next((u for u in _candidate_uris(tracking_uri) if _holds_run(u, source)), None)
        if uri is None:
            return None
        from mlflow.tracking import MlflowClient

        tags = MlflowClient(tracking_uri=uri).get_run(source).data.tags
        if tags.get("ranksearch.kind") == "sweep":  # a sweep's parent run: its best trial's run
            return uri, tags.get("best.run_id") or source
        return uri, source
    trial_dir = Path(trial_dir).resolve()
    sweep = next((p for p in trial_dir.parents if (p / "sweep.json").is_file()), None)
    if sweep is None or "trials" not in trial_dir.relative_to(sweep).parts[:1]:
        return None
    from ranksearch.report.data import open_sweep
    from ranksearch.report.detail import run_ids

    data = open_sweep(sweep, tracking_uri)
    run = run_ids(data)[0].get(trial_dir.relative_to(sweep).parts[1])
    return (data.manifest.tracking_uri, run) if run else None


def log_export(
    export_dir: Path, run: tuple[str, str], register: str | None = None, alias: str = "champion"
) -> dict:
    """Log an export folder as a ``LoggedModel`` of the trial run ``run`` (reusing one an earlier export of
    that run logged) and, with ``register``, register it under that name with ``alias``.

    Returns:
        {"run_id", "model_id", "model_uri", "tracking_uri"} and, when registered, "registered" (name, version,
        alias, uri).
    """
    from mlflow.tracking import MlflowClient

    from ranksearch.config import load_trial_config
    from ranksearch.tracking.mlflow_model import log_exported_model, logged_model_of
    from ranksearch.tracking.mlflow_model import register as do_register

    uri, run_id = run
    model = logged_model_of(uri, run_id)
    if model is None:
        config = load_trial_config(Path(export_dir) / "config.yaml")
        metrics = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
        model = log_exported_model(Path(export_dir), uri, run_id, config, metrics)
    out = {
        "run_id": run_id,
        "model_id": model.model_id,
        "model_uri": f"models:/{model.model_id}",
        "tracking_uri": uri,
    }
    if register:
        tags = {k: v for k, v in (model.tags or {}).items() if k.startswith("ranksearch.")}
        version = do_register(uri, model.model_id, register, alias, tags)
        out["registered"] = {"name": register, "version": int(version.version), "alias": alias,
                             "uri": f"models:/{register}@{alias}"}  # fmt: skip
    return out
