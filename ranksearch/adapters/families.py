"""Look adapter families up by name: the built-in ones (imported here, each registers itself) and any other that
code registered with ``ranksearch.adapters.registry.register_family``.

Importing this module imports torch; the config layer names families through ``ranksearch.adapters.configs``
instead, which stays torch-free.
"""

from __future__ import annotations

from ranksearch.adapters import adalora, codyra, dra, lora, rlrr  # noqa: F401  (each registers on import)
from ranksearch.adapters.base import AdapterFamily
from ranksearch.adapters.registry import _FAMILIES


def get_family(name: str) -> type[AdapterFamily]:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown adapter family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def all_families() -> dict[str, type[AdapterFamily]]:
    return dict(_FAMILIES)
