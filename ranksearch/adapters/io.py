"""Adapter-only save/load: just the adapter tensors (and buffers such as rank masks), as safetensors.

A saved file holds no base weights and no pickled code: safetensors cannot execute anything on load.
The trial config is stored in the file's metadata so an adapter can be re-attached to the right placement.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ranksearch.adapters.base import AdapterLayer
from ranksearch.errors import AdapterError


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor (parameters and buffers) of ``model``, without the frozen base weights."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            for key, value in module.state_dict().items():
                if not key.startswith("base."):
                    state[f"{name}.{key}"] = value
    return state


def save_adapter(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the adapter tensors of ``model`` to ``path`` (safetensors), with JSON-able ``metadata``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    save_file(state, str(path), metadata={"ranksearch": json.dumps(metadata or {})})
    return path


def load_adapter(model: nn.Module, path: str | Path) -> dict:
    """Load adapter tensors saved by ``save_adapter`` into an identically adapted ``model``.

    Returns the stored metadata. Raises ``AdapterError`` for a missing, truncated or mismatching file.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter file {str(path)!r} does not exist")
    try:
        state = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("ranksearch", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"adapter file {str(path)!r} is corrupt or not a safetensors file: {e}") from None
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"adapter file {str(path)!r} does not match this model's adapters "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); was it saved with another "
            "family or placement?"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise AdapterError(
                f"adapter tensor {key}: shape {tuple(value.shape)} != {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return meta
