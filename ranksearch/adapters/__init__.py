"""Adapter families. The built-in families register themselves on the first registry lookup.

Attributes are loaded on first use (PEP 562): ``import ranksearch.adapters`` and ``ranksearch.adapters.configs``
stay free of torch, so commands that only read configs start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AdapterFamily": "base",
    "AdapterLayer": "base",
    "Site": "base",
    "all_families": "registry",
    "family_names": "registry",
    "get_family": "registry",
    "register_family": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ranksearch.adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ranksearch.adapters.{_EXPORTS[name]}"), name)
