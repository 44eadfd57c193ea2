"""Build any open_clip model: by pretrained tag, local checkpoint, ``local-dir:``, or random init.

The project's tiny architectures (``models/configs/*.json``) are registered with open_clip on import, so
``rs-tiny-clip`` is an ordinary open_clip model name. ``pretrained="shapeworld"`` resolves to the built-in
offline checkpoint, pretrained on first use and cached (``ranksearch.pretrain``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from ranksearch.errors import ModelLoadError
from ranksearch.models.builtin import BUILTIN_PRETRAINED, CONFIG_DIR, register_tiny_configs

__all__ = ["BUILTIN_PRETRAINED", "CONFIG_DIR", "build_model", "register_tiny_configs", "tower_blocks"]

log = logging.getLogger(__name__)


def build_model(name: str, pretrained: str | None = None, device: str = "cpu") -> tuple[nn.Module, int]:
    """Create an open_clip CLIP model in eval mode with all weights frozen.

    Args:
        name: open_clip model name (e.g. ``ViT-B-16``, ``rs-tiny-clip``).
        pretrained: ``None`` (random init), ``"shapeworld"`` (built-in checkpoint for the tiny models), an
            open_clip pretrained tag (``"openai"``), a checkpoint file path, or ``"local-dir:DIR"``.
        device: torch device string.

    Returns:
        (model, image_size): the model, and the square input resolution its vision tower expects.

    Raises:
        ModelLoadError: unknown model, missing file, or weights that cannot be fetched (offline).
    """
    import open_clip

    register_tiny_configs()
    model_name, weights = name, pretrained
    if pretrained == BUILTIN_PRETRAINED:
        from ranksearch.pretrain import ensure_checkpoint

        weights = str(ensure_checkpoint(name))
    elif pretrained and pretrained.startswith("local-dir:"):
        model_name, weights = pretrained, None  # open_clip reads config and weights from the folder
    elif (
        pretrained
        and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")))
        and not Path(pretrained).is_file()
    ):
        raise ModelLoadError(f"model.pretrained: checkpoint file {pretrained!r} does not exist")
    if not model_name.startswith("local-dir:") and model_name not in open_clip.list_models():
        raise ModelLoadError(f"model.name: unknown open_clip model {name!r} (see open_clip.list_models())")
    try:
        model = open_clip.create_model(model_name, pretrained=weights, device=device)
    except Exception as e:  # open_clip raises RuntimeError/HF errors for tags it cannot fetch
        hint = ""
        if weights and not Path(str(weights)).exists():
            hint = (
                " (pretrained tags download from the Hugging Face hub; offline, point model.pretrained at a "
                "local checkpoint file or 'local-dir:DIR' instead)"
            )
        raise ModelLoadError(f"could not load {name!r} with pretrained={pretrained!r}: {e}{hint}") from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    size = model.visual.image_size
    image_size = size[0] if isinstance(size, tuple | list) else int(size)
    return model, image_size


def tower_blocks(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The residual attention blocks of each tower: ``{"vision": [...], "text": [...]}``.

    A tower whose blocks are not open_clip ``ResidualAttentionBlock``s (e.g. a Hugging Face text tower) is
    left out, so placements on it fail with a clear message instead of silently doing nothing.
    """
    towers: dict[str, list[nn.Module]] = {}
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(getattr(visual, "transformer", None), "resblocks"):
        towers["vision"] = list(visual.transformer.resblocks)
    text = getattr(model, "transformer", None)
    if text is not None and hasattr(text, "resblocks"):
        towers["text"] = list(text.resblocks)
    return towers
