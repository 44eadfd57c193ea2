"""The project's own architectures (``models/configs/*.json``) and the name of their built-in weights.

Both ``ranksearch.models.clip`` (builds models) and ``ranksearch.pretrain`` (makes the built-in weights) need these,
so they live below both.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
BUILTIN_PRETRAINED = "shapeworld"
_registered = False


def register_tiny_configs() -> None:
    """Register the shipped tiny architectures with open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def builtin_model_names() -> list[str]:
    """The shipped architectures, by open_clip model name."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
