"""Export a trial's adapter as a plain open_clip model folder that open_clip alone can load.

The folder follows open_clip's ``local-dir:`` layout (``open_clip_config.json`` with the model config embedded,
``open_clip_pytorch_model.bin``), so ``open_clip.create_model("local-dir:DIR")`` rebuilds the adapted model
without ranksearch installed. Mergeable families are folded into the weights (zero inference overhead); a
family that cannot merge (DRA-style) is exported as the frozen base model plus the adapter file, and the
manifest says so.
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
    from ranksearch.adapters import get_family
    from ranksearch.adapters.inject import attach_adapters
    from ranksearch.adapters.io import load_adapter
    from ranksearch.adapters.placement import resolve_sites
    from ranksearch.config import load_trial_config
    from ranksearch.models.clip import build_model, tower_blocks

    trial_dir = Path(trial_dir)
    for name in ("config.yaml", "adapter.safetensors"):
        if not (trial_dir / name).is_file():
            raise RanksearchError(f"{trial_dir} is not a finished trial folder: {name} is missing")
    config = load_trial_config(trial_dir / "config.yaml")
    torch.manual_seed(config.seed)
    model, _ = build_model(config.model.name, config.model.pretrained, device=device)
    p = config.placement
    depths = {t: len(b) for t, b in tower_blocks(model).items()}
    family = get_family(config.adapter.family)(config.adapter, config.train.total_steps(config.data.shots))
    attach_adapters(model, family, resolve_sites(p.towers, p.layers, p.matrices, depths))
    load_adapter(model, trial_dir / "adapter.safetensors")
    model.eval()
    return model, config, family


def export_trial(trial_dir: Path, out_dir: Path) -> dict:
    """Write ``out_dir`` with the merged open_clip model, the adapter-only weights and the rank pattern.

    Returns the manifest (also written as ``out_dir/export.json``). ``out_dir`` must not exist or be empty:
    an export never overwrites earlier results.
    """
    import open_clip

    from ranksearch.adapters.inject import merge_to_stock

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
        "load_with": f'open_clip.create_model("local-dir:{out_dir.resolve()}")',
        "note": "adapter folded into the weights: a stock open_clip model"
        if merged
        else "not mergeable: open_clip_pytorch_model.bin is the frozen base; attach adapter.safetensors with ranksearch",
        "source_trial": str(trial_dir.resolve()),
    }
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def rebuild_base(config):
    from ranksearch.models.clip import build_model

    torch.manual_seed(config.seed)
    return build_model(config.model.name, config.model.pretrained)
