"""Adapter families. Importing this package registers every built-in family."""

from ranksearch.adapters import adalora, codyra, dra, lora, rlrr  # noqa: F401  (registration side effect)
from ranksearch.adapters.base import AdapterFamily, AdapterLayer, Site
from ranksearch.adapters.registry import all_families, family_names, get_family, register_family

__all__ = [
    "AdapterFamily",
    "AdapterLayer",
    "Site",
    "all_families",
    "family_names",
    "get_family",
    "register_family",
]
