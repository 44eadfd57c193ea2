"""Build any open_clip model: by pretrained tag, local checkpoint, ``local-dir:``, or random init.

The project's tiny architectures (``models/configs/*.json``) are registered with open_clip on import, so
``rs-tiny-clip`` is an ordinary open_clip model name. ``pretrained="shapeworld"`` resolves to the built-in
offline checkpoint, pretrained on first use and cached (``ranksearch.pretrain``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from ranksearch.errors import ModelLoadError
from ranksearch.models.builtin import BUILTIN_PRETRAINED, CONFIG_DIR, register_tiny_configs

__all__ = [
    "BUILTIN_PRETRAINED",
    "CONFIG_DIR",
    "activation_of",
    "build_model",
    "model_activation",
    "needs_quick_gelu",
    "register_tiny_configs",
    "tower_blocks",
]

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
        with _without_open_clip_errors():
            model = open_clip.create_model(
                model_name,
                pretrained=weights,
                device=device,
                force_quick_gelu=needs_quick_gelu(model_name, weights),
            )
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


class _DropOpenClipErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "open_clip" in record.pathname)


@contextlib.contextmanager
def _without_open_clip_errors() -> Iterator[None]:
    """open_clip logs a failed download on the root logger and then raises it; the raise becomes our one-line
    ``ModelLoadError``, so the logged copy would only print the same message twice."""
    # open_clip calls logging.error(): a filter on the root logger itself sees it
    drop, root = _DropOpenClipErrors(), logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def needs_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether ``pretrained`` is an open_clip tag whose weights were trained with QuickGELU.

    open_clip's plain configs (``ViT-B-16``) use ``nn.GELU``; the OpenAI checkpoints (every ``openai`` tag) and a
    few others were trained with QuickGELU, which the tag's pretrained metadata says (``quick_gelu``). open_clip
    only warns about the mismatch, and every number then differs from the papers': build what the tag needs.
    Files, ``local-dir:`` folders and the built-in weights carry their own architecture, so they are never forced.
    """
    if not pretrained or name.startswith("local-dir:"):
        return False
    from open_clip.pretrained import get_pretrained_cfg

    return bool(get_pretrained_cfg(name, pretrained).get("quick_gelu", False))


def model_activation(name: str, pretrained: str | None) -> str:
    """The activation ``build_model(name, pretrained)`` builds, without building it: ``quick_gelu`` or ``gelu``.

    The same rule as open_clip's factory: the architecture's ``quick_gelu`` (the ``-quickgelu`` configs, a
    ``local-dir:`` folder's ``open_clip_config.json``), forced on by a tag that needs it (``needs_quick_gelu``).
    Recorded with every trial (MLflow param ``model.activation``).
    """
    import json

    import open_clip

    register_tiny_configs()
    cfg: dict = {}
    if name.startswith("local-dir:") or (pretrained or "").startswith("local-dir:"):
        folder = Path(
            (pretrained if (pretrained or "").startswith("local-dir:") else name)[len("local-dir:") :]
        )
        try:
            cfg = json.loads((folder / "open_clip_config.json").read_text()).get("model_cfg", {})
        except (OSError, ValueError):
            cfg = {}
    else:
        cfg = open_clip.get_model_config(name) or {}
    quick = bool(cfg.get("quick_gelu", False)) or needs_quick_gelu(name, pretrained)
    return "quick_gelu" if quick else "gelu"


def activation_of(model: nn.Module) -> str:
    """The MLP activation a built model runs: ``quick_gelu``, ``gelu`` or another module's class name."""
    from open_clip.transformer import QuickGELU

    names = set()
    for module in model.modules():
        if isinstance(module, QuickGELU):
            names.add("quick_gelu")
        elif isinstance(module, nn.GELU):
            names.add("gelu")
    return "+".join(sorted(names)) or "none"


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
