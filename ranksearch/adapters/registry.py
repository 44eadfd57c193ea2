"""Registry of adapter families. Registration is explicit (a class decorator) and rejects duplicates.

No family is ever looked up by an import path from user YAML: only names registered in code are valid.
"""

from __future__ import annotations

from ranksearch.adapters.base import AdapterFamily

_FAMILIES: dict[str, type[AdapterFamily]] = {}


def register_family(cls: type[AdapterFamily]) -> type[AdapterFamily]:
    """Class decorator: add a family; a duplicate name or parameter prefix raises ``KeyError``."""
    name = cls.name
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"family name must be a lowercase identifier, got {name!r}")
    if name in _FAMILIES:
        raise KeyError(f"adapter family {name!r} is already registered")
    for other in _FAMILIES.values():
        if other.prefix == cls.prefix:
            raise KeyError(f"parameter prefix {cls.prefix!r} of {name!r} is already used by {other.name!r}")
    _FAMILIES[name] = cls
    return cls


def get_family(name: str) -> type[AdapterFamily]:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown adapter family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def all_families() -> dict[str, type[AdapterFamily]]:
    return dict(_FAMILIES)
