"""Registry of adapter families. Registration is explicit (a class decorator) and rejects duplicates.

No family is ever looked up by an import path from user YAML: only names registered in code are valid. Families
import this module to register; lookups live one level up, in ``ranksearch.adapters.families``, which imports the
built-in families first (so the import order is a straight line: registry <- each family <- families).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ranksearch.adapters.base import AdapterFamily

_FAMILIES: dict[str, type[AdapterFamily]] = {}


def register_family(cls: type[AdapterFamily]) -> type[AdapterFamily]:
    """Class decorator: add a family; a duplicate name or parameter prefix raises ``KeyError``."""
    from ranksearch.adapters.configs import family_configs, register_config

    name = cls.name
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"family name must be a lowercase identifier, got {name!r}")
    if name in _FAMILIES:
        raise KeyError(f"adapter family {name!r} is already registered")
    for other in _FAMILIES.values():
        if other.prefix == cls.prefix:
            raise KeyError(f"parameter prefix {cls.prefix!r} of {name!r} is already used by {other.name!r}")
    if family_configs().get(name) is not cls.config_cls:
        register_config(cls.config_cls)
    _FAMILIES[name] = cls
    return cls
