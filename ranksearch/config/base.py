"""The pydantic base every user-facing config section derives from, and the checks several sections share."""

from __future__ import annotations

import functools
import re
import types
import typing
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

MAX_SEED = 2**32 - 1  # numpy's and Optuna's seed range; torch's is larger


def _kinds(annotation: Any) -> set[type]:
    """The scalar types an annotation admits (``int | None`` -> {int, NoneType}); list/tuple items included."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(annotation)}
    if origin in (list, tuple, typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation) if a is not Ellipsis))
    return {annotation} if isinstance(annotation, type) else set()


@functools.cache
def _field_kinds(cls: type[BaseModel]) -> dict[str, set[type]]:
    return {name: _kinds(f.annotation) for name, f in cls.model_fields.items()}


def exact_kinds(cls: type[BaseModel], data: Any) -> Any:
    """Refuse what pydantic's lax mode would quietly convert between booleans and numbers.

    Lax mode reads ``true`` as 1 for a number and ``"off"``, ``"no"``, ``0`` as false for a boolean: YAML 1.1
    semantics through the back door (``seed: true``, ``augment: "off"``). Numbers stay numbers, booleans
    booleans; everything else is left to pydantic.
    """
    if not isinstance(data, dict):
        return data
    problems = []
    for name, value in data.items():
        kinds = _field_kinds(cls).get(name) if isinstance(name, str) else None
        if not kinds or value is None:
            continue
        numeric = bool(kinds & {int, float})
        items = value if isinstance(value, list | tuple) else [value]
        if numeric and bool not in kinds and any(isinstance(v, bool) for v in items):
            problems.append((name, f"{value!r} is a boolean where a number is meant"))
        elif bool in kinds and kinds <= {bool, type(None)} and not isinstance(value, bool):
            problems.append((name, f"{value!r} is not a boolean: write true or false"))
    if problems:
        raise cross_field(problems)
    return data


class StrictModel(BaseModel):
    """Strict and immutable: unknown keys are errors, numbers are finite (no inf/nan), booleans and numbers are
    never converted into each other. The base of search-space blocks; trial-config sections are ``Section``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _exact_kinds(cls, data: Any) -> Any:
        return exact_kinds(cls, data)


class Section(StrictModel):
    """A trial-config section: a ``StrictModel`` whose defaults are validated too."""

    model_config = ConfigDict(validate_default=True)


Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="a seed in [0, 2**32 - 1]")]

CROSS_FIELD = "ranksearch_cross_field"


def cross_field(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """One validation error carrying several (field path, message) problems found across fields.

    Raise it from a ``model_validator``; ``ranksearch.config.load.problems_from_validation`` expands it into
    one problem per field path (relative to the model that raised it).
    """
    text = "; ".join(f"{path}: {msg}" for path, msg in problems)
    return PydanticCustomError(CROSS_FIELD, text, {"problems": [list(p) for p in problems]})


_BAD_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")
_FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(value: str | None, folder: bool = False, limit: int = 200) -> str | None:
    """A user-chosen name (experiment, run, sweep): non-empty, at most ``limit`` characters, no path separator.

    With ``folder=True`` (the name becomes a folder) only letters, digits and ``. _ -`` are allowed, starting with
    a letter or digit, so the name can never address anything outside its parent folder.
    """
    if value is None:
        return value
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > limit:
        raise ValueError(f"{len(value)} characters long (at most {limit})")
    if value != value.strip():
        raise ValueError(f"{value!r} starts or ends with whitespace")
    if folder and not _FOLDER_NAME.match(value):
        raise ValueError(
            f"{value!r} is used as a folder name: letters, digits, '.', '_' and '-' only, starting with a letter "
            "or digit"
        )
    if _BAD_NAME_CHARS.search(value) or value in (".", ".."):
        raise ValueError(f"{value!r} must not contain '/', '\\' or control characters, nor be '.' or '..'")
    return value


Name = Annotated[str, AfterValidator(lambda v: check_name(v))]


def suggest(word: str, known: list[str] | tuple[str, ...] | set[str]) -> str:
    """' (did you mean 'x'?)' for the closest known word, or ''."""
    import difflib

    match = difflib.get_close_matches(str(word), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
