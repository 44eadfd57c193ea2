"""Adapter families. The built-in families register themselves on the first registry lookup.

Attributes are loaded on first use (PEP 562): ``import ranksearch.adapters`` and ``ranksearch.adapters.configs``
stay free of torch, so commands that only read configs start fast.
"""

from __future__ import annotations

from typing import Any

_BASE = ("AdapterFamily", "AdapterLayer", "Site")
_REGISTRY = ("all_families", "family_names", "get_family", "register_family")
__all__ = sorted(_BASE + _REGISTRY)


def __getattr__(name: str) -> Any:
    if name in _BASE:
        from ranksearch.adapters import base

        return getattr(base, name)
    if name in _REGISTRY:
        from ranksearch.adapters import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'ranksearch.adapters' has no attribute {name!r}")
