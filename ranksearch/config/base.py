"""The pydantic base every user-facing config section derives from, and the checks several sections share."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

MAX_SEED = 2**32 - 1  # numpy's and Optuna's seed range; torch's is larger


class Section(BaseModel):
    """A strict, immutable config section: unknown keys are errors, numbers are finite (no inf/nan)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


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
