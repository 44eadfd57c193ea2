"""Data files shipped with ranksearch: prompt templates and class-name tables (JSON, see each ``_doc``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from ranksearch.errors import DataError

RESOURCE_DIR = Path(__file__).parent


@cache
def load_resource(name: str) -> dict[str, Any]:
    """Parse ``resources/<name>`` (a JSON file) once."""
    return json.loads((RESOURCE_DIR / name).read_text(encoding="utf-8"))


def generic_template() -> str:
    """CLIP-LoRA's template for every dataset, "a photo of a {}." (the default, docs/methods.md, CLIP-LoRA)."""
    return load_resource("templates.json")["generic"]


def coop_template(task: str) -> str:
    """CoOp's per-dataset template for ``task`` (CoOp trainers/zsclip.py); the generic one if none."""
    entry = load_resource("templates.json")["coop"].get(task)
    return entry["template"] if entry else generic_template()


def templates_for(task: str, choice: str | None) -> list[str]:
    """The prompt templates of a task for the ``data.template`` setting.

    Args:
        task: the task name (``eurosat``, ``fashion-mnist``, ...).
        choice: ``None`` or ``"generic"`` (CLIP-LoRA: "a photo of a {}."), ``"coop"`` (CoOp's per-dataset
            template, e.g. EuroSAT "a centered satellite photo of {}."), or a literal template with one ``{}``.

    Raises:
        DataError: a literal template without ``{}``.
    """
    if choice is None or choice == "generic":
        return [generic_template()]
    if choice == "coop":
        return [coop_template(task)]
    if "{}" not in choice:
        raise DataError(f"data.template {choice!r}: expected 'generic', 'coop' or a template with one '{{}}'")
    return [choice]


def classname_table(task: str) -> dict[str, Any]:
    """The class-name table of ``task`` in ``classnames.json`` (renames, ignored folders, fixed names)."""
    return load_resource("classnames.json").get(task, {})
