"""Adapter families. The built-in families register themselves when ``ranksearch.adapters.families`` (the lookups) is imported.

Attributes are loaded on first use (PEP 562): ``import ranksearch.adapters`` and ``ranksearch.adapters.configs``
stay free of torch, so commands that only read configs start fast.
"""

from __future__ import annotations

from typing import Any

_BASE = ("AdapterFamily", "AdapterLayer", "Site")
_LOOKUP = ("all_families", "family_names", "get_family")
__all__ = sorted((*_BASE, *_LOOKUP, "register_family"))


def __getattr__(name: str) -> Any:
    if name in _BASE:
        from ranksearch.adapters import base

        return getattr(base, name)
    if name in _LOOKUP:
        from ranksearch.adapters import families

        return getattr(families, name)
    if name == "register_family":
        from ranksearch.adapters.registry import register_family

        return register_family
    raise AttributeError(f"module 'ranksearch.adapters' has no attribute {name!r}")
