"""What ``validate`` can know about a model without building it: its name and the depth of its towers.

Read from the open_clip architecture JSON files (ranksearch's own ``models/configs`` and open_clip's
``model_configs``), located without importing open_clip or torch.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

TINY_CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs"


@functools.lru_cache(maxsize=1)
def _config_files() -> dict[str, Path]:
    """Model name -> architecture JSON, for every model ``ranksearch.models.build_model`` can build by name."""
    folders = [TINY_CONFIGS]
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        folders.insert(0, Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    return {f.stem: f for folder in folders if folder.is_dir() for f in sorted(folder.glob("*.json"))}


def known_models() -> list[str]:
    """Every open_clip model name (``open_clip.list_models()`` plus the ranksearch tiny models)."""
    return sorted(_config_files())


@functools.lru_cache(maxsize=64)
def tower_depths(name: str) -> dict[str, int] | None:
    """Blocks per adaptable transformer tower of model ``name`` ({"vision": 12, "text": 12}); None if unknown.

    A tower that is not an open_clip transformer (a ResNet or timm image tower, a Hugging Face text tower) is
    left out: its depth is only known once the model is built.
    """
    path = _config_files().get(name)
    if path is None:
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    depths = {}
    for tower, key in (("vision", "vision_cfg"), ("text", "text_cfg")):
        sub = cfg.get(key) or {}
        layers = sub.get("layers")
        if isinstance(layers, int) and not sub.get("timm_model_name") and not sub.get("hf_model_name"):
            depths[tower] = layers
    return depths
