"""YAML in, validated config out — with every problem reported at once, by field path.

Configs come from users, so loading is strict and defensive:

* **Files**: regular files only, opened without blocking (a FIFO or a device fails at once instead of hanging),
  at most ``MAX_CONFIG_BYTES``, UTF-8 only.
* **YAML 1.2 core schema**: plain scalars resolve to null, true/false, decimal integers and floats exactly as YAML
  1.2 says (``1e-4`` is a number); everything else is text. Forms that YAML 1.1 (PyYAML, many other tools)
  reads differently are refused with the reason instead of silently meaning one or the other: ``yes/no/on/off``,
  leading-zero numbers (``010``: octal 8 in 1.1), base-60 numbers (``1:30``: 90 in 1.1), ``0x``/``0o``/``0b``
  and ``1_000`` numbers, and ``<<`` merge keys. Quoting makes any of them text.
* **No tags**: explicit tags (``!!binary``, ``!!set``, ``!!float``, ``!!python/...``) are refused; there are no
  implicit timestamps, sets or binaries either.
* **Bounded**: at most ``MAX_ALIASES`` aliases, ``MAX_DEPTH`` levels of nesting and ``MAX_NODES`` values after
  alias expansion ("billion laughs"), no recursive aliases; all checked on the event stream before anything is
  built, so deep documents cannot overflow the stack.
* **Clean keys and text**: keys are unique (a duplicate is reported with both lines) and are text; strings hold
  no NUL or other control character and no lone surrogate, and at most ``MAX_STRING`` characters.

The empty document is refused (an empty trial config would silently start a full default training).
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ranksearch.config.base import CROSS_FIELD, suggest
from ranksearch.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a config is a few KiB; anything larger is a mistake or an attack
MAX_ALIASES = 100
MAX_DEPTH = 32  # nesting levels (a trial config needs 4)
MAX_NODES = 100_000  # values after alias expansion
MAX_STRING = 10_000  # characters in one scalar
MAX_INT_DIGITS = 40  # 2**128 has 39 digits; Python refuses int() of > 4300 digits with a ValueError


# ------------------------------------------------------------------------------------------ reading files
def read_text_file(path: str | Path, limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes; ``ConfigError`` naming the file otherwise.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` before reading, so a FIFO, a terminal or a device such
    as ``/dev/zero`` is refused at once instead of blocking or reading forever.
    """
    p = Path(path)
    source = str(p)

    def fail(msg: str) -> ConfigError:
        return ConfigError([("<file>", msg)], source)

    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise fail("does not exist") from None
    except PermissionError:
        raise fail("cannot be read (permission denied)") from None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise fail("does not exist (a parent is not a folder)") from None
        raise fail(f"cannot be opened ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"is not a regular file ({_file_kind(st.st_mode)}); give a YAML file")
        if st.st_size > limit:
            raise fail(f"file is {st.st_size} bytes; the limit is {limit}")
        chunks, size = [], 0
        while size <= limit:  # a file growing while we read is capped too
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise fail(f"file is larger than the limit of {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; raise ``ConfigError`` with a clear reason if it cannot be used."""
    return parse_yaml(read_text_file(path), source=str(path))


# ------------------------------------------------------------------------------- YAML 1.2 core schema
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
# plain scalars YAML 1.1 reads as something else than YAML 1.2 does: (pattern, why, what to write instead)
_AMBIGUOUS = [
    (
        re.compile(r"^(?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$"),
        "is a boolean in YAML 1.1 but text in YAML 1.2",
        "write true or false",
    ),
    (
        re.compile(r"^[-+]?0[0-9_]+(?:\.[0-9_]*)?$"),
        "has a leading zero: octal in YAML 1.1, decimal in YAML 1.2",
        "drop the leading zero",
    ),
    (
        re.compile(r"^[-+]?0[bBoOxX][0-9a-fA-F_]+$"),
        "is a 0b/0o/0x number, which YAML 1.1 and YAML 1.2 read differently",
        "write it in decimal",
    ),
    (
        re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$"),
        "is a base-60 number in YAML 1.1 (1:30 = 90) but text in YAML 1.2",
        "write the number",
    ),
    (
        re.compile(
            r"^[-+]?[0-9][0-9_]*_[0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?$|^[-+]?[0-9]+\.[0-9_]*_[0-9_]*$"
        ),
        "uses digit separators (_): a number in YAML 1.1, text in YAML 1.2",
        "write the digits without _",
    ),
]
_BAD_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
INT_TAG, FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
BOOL_TAG, NULL_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"


def _float(value: str) -> float:
    low = value.lower()
    if low.endswith(".inf"):
        return -math.inf if low.startswith("-") else math.inf
    if low == ".nan":
        return math.nan
    return float(value)


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's resolvers instead of YAML 1.1's.

    Use it through ``parse_yaml``, which first checks the event stream (tags, ambiguous forms, limits).
    """

    yaml_implicit_resolvers: dict = {}


for _tag, _regexp, _first in (
    (BOOL_TAG, _BOOL, "tTfF"),
    (NULL_TAG, _NULL, ["~", "n", "N", ""]),
    (INT_TAG, _INT, "-+0123456789"),  # before float: "12" is an integer
    (FLOAT_TAG, _FLOAT, "-+.0123456789"),
):
    StrictLoader.add_implicit_resolver(_tag, _regexp, list(_first))
StrictLoader.add_constructor(INT_TAG, lambda loader, node: int(node.value))
StrictLoader.add_constructor(FLOAT_TAG, lambda loader, node: _float(node.value))
StrictLoader.add_constructor(BOOL_TAG, lambda loader, node: node.value.lower() == "true")
StrictLoader.add_constructor(NULL_TAG, lambda loader, node: None)


class StrictDumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 *or* YAML 1.2 (or ``StrictLoader``'s refusals) would not read as text."""


for _tag, _regexp, _first in (
    (INT_TAG, _INT, "-+0123456789"),
    (FLOAT_TAG, _FLOAT, "-+.0123456789"),
    *[(INT_TAG, pattern, "-+0123456789yYnNoO") for pattern, _, _ in _AMBIGUOUS],
):
    StrictDumper.add_implicit_resolver(_tag, _regexp, list(_first))


def dump_yaml(data: Any) -> str:
    """YAML text that ``parse_yaml`` reads back as ``data`` (key order kept)."""
    return yaml.dump(data, Dumper=StrictDumper, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------- the event check
class _Refused(Exception):
    """A limit was crossed: stop reading at once (the rest of the document is not looked at)."""


@dataclass
class _Node:
    """A collection being read: where it is, what it holds so far."""

    mapping: bool
    path: str
    anchor: str | None
    line: int
    keys: dict[str, int] = field(default_factory=dict)  # key -> line (mappings)
    key: str | None = None  # the key whose value comes next (mappings); None while a key is expected
    index: int = 0  # next item (sequences)
    size: int = 1  # values inside, aliases expanded
    height: int = 1  # nesting below, aliases expanded


def _join(path: str, part: str) -> str:
    if "." in part or not part:
        return f"{path}[{part}]" if path else f"[{part}]"
    return f"{path}.{part}" if path else part


_KINDS = {"null": "null", "bool": "a boolean", "int": "an integer", "float": "a number"}


def _resolve_plain(value: str) -> str:
    """The YAML 1.2 core type of a plain scalar: 'null', 'bool', 'int', 'float' or 'str'."""
    for name, pattern in (("null", _NULL), ("bool", _BOOL), ("int", _INT), ("float", _FLOAT)):
        if pattern.match(value):
            return name
    return "str"


def _scalar_problem(event: yaml.ScalarEvent) -> str | None:
    """Why a scalar's content is refused (None if it is fine)."""
    value = event.value
    if len(value) > MAX_STRING:
        return f"a value of {len(value)} characters (the limit is {MAX_STRING})"
    bad = _BAD_CHAR.search(value)
    if bad:
        code = ord(bad.group())
        what = "a lone surrogate" if 0xD800 <= code <= 0xDFFF else "a control character"
        return f"contains {what} (U+{code:04X}); configs hold printable text only"
    if event.style is None:  # plain (unquoted): the only style whose type YAML guesses
        for pattern, why, instead in _AMBIGUOUS:
            if pattern.match(value):
                return f"{value!r} {why}: {instead}, or quote it for text"
        if _INT.match(value) and len(value.lstrip("+-")) > MAX_INT_DIGITS:
            return f"an integer of {len(value.lstrip('+-'))} digits (the limit is {MAX_INT_DIGITS})"
    return None


def check_events(text: str) -> list[tuple[str, str]]:
    """Every problem of a YAML text that ``StrictLoader`` must not see, found on its event stream.

    Returns (path, message) pairs, or raises ``ConfigError`` at once for a crossed limit (depth, aliases,
    expanded size) or a syntax error. Never recursive, whatever the nesting.
    """
    problems: list[tuple[str, str]] = []
    stack: list[_Node] = []
    anchors: dict[str, tuple[int, int]] = {}  # finished anchored nodes: (size, height)
    aliases = documents = 0
    root_size = root_height = 0

    def refuse(path: str, msg: str) -> None:
        problems.append((path or "<root>", msg))
        raise _Refused

    def position(event: yaml.Event) -> tuple[str, bool]:
        """(path of the node this event starts, whether it is a mapping key)."""
        if not stack:
            return "", False
        top = stack[-1]
        if top.mapping:
            if top.key is None:
                return top.path, True
            return _join(top.path, top.key), False
        return _join(top.path, str(top.index)), False

    def finished(
        size: int, height: int, anchor: str | None, is_key: bool, key: str | None, line: int
    ) -> None:
        """A node ended: account for it in its parent."""
        nonlocal root_size, root_height
        if anchor is not None:
            anchors[anchor] = (size, height)
        if not stack:
            root_size, root_height = size, height
            return
        top = stack[-1]
        top.size += size
        top.height = max(top.height, height + 1)
        if top.size > MAX_NODES:
            refuse(top.path, f"more than {MAX_NODES} values once aliases are expanded; refusing to expand")
        if len(stack) + height > MAX_DEPTH:
            refuse(top.path, f"nested more than {MAX_DEPTH} levels deep (aliases included)")
        if top.mapping:
            if is_key:
                shown = key if key is not None else "?"
                if key is not None and key in top.keys:
                    problems.append(
                        (_join(top.path, key), f"duplicate key {key!r} at lines {top.keys[key]} and {line}")
                    )
                elif key is not None:
                    top.keys[key] = line
                top.key = shown
            else:
                top.key = None
        else:
            top.index += 1

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    refuse(
                        "<file>",
                        f"a second YAML document at line {event.start_mark.line + 1}; a config is one document",
                    )
                continue
            if not isinstance(event, yaml.NodeEvent | yaml.CollectionEndEvent):
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                node = stack.pop()
                is_key = bool(stack) and stack[-1].mapping and stack[-1].key is None
                finished(node.size, node.height, node.anchor, is_key, None, node.line)
                continue
            path, is_key = position(event)
            line = event.start_mark.line + 1
            at = f"line {line}"
            here = path or "<root>"
            tag = getattr(event, "tag", None)
            if tag is not None:
                shown = tag.replace("tag:yaml.org,2002:", "!!")
                msg = f"explicit YAML tag {shown!r} at {at}: tags are not supported; write a plain value"
                problems.append((here, msg + " (quote it for text)"))
            if isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    refuse(path, f"more than {MAX_ALIASES} YAML aliases; refusing to expand")
                if event.anchor not in anchors:
                    recursive = any(n.anchor == event.anchor for n in stack)
                    why = (
                        "the collection that contains it (recursive)"
                        if recursive
                        else "no anchor defined before it"
                    )
                    refuse(path, f"alias *{event.anchor} at {at} refers to {why}")
                if is_key:
                    problems.append((here, f"an alias as a mapping key at {at}"))
                size, height = anchors[event.anchor]
                finished(size, height, None, is_key, None, line)
            elif isinstance(event, yaml.ScalarEvent):
                msg = _scalar_problem(event)
                key_path = _join(path, event.value) if is_key else here
                kind = "str" if event.style is not None else _resolve_plain(event.value)
                if msg:
                    problems.append((key_path, f"{msg} ({at})"))
                elif is_key and kind != "str":
                    msg = f"the key {event.value!r} ({at}) reads as {_KINDS[kind]}; keys are text: quote it"
                    problems.append((key_path, msg))
                elif is_key and event.value == "<<" and event.style is None:
                    problems.append((here, f"merge key << at {at} is YAML 1.1 only; write the keys out"))
                finished(1, 0, event.anchor, is_key, event.value if is_key else None, line)
            else:  # a mapping or sequence starts
                if is_key:
                    problems.append((here, f"a list or mapping as a mapping key at {at}"))
                if len(stack) + 1 > MAX_DEPTH:
                    refuse(path, f"nested more than {MAX_DEPTH} levels deep")
                stack.append(_Node(isinstance(event, yaml.MappingStartEvent), path, event.anchor, line))
                if is_key:
                    stack[-1].path = _join(path, "<key>")
    except _Refused:
        pass
    except yaml.YAMLError as e:
        raise ConfigError([("<file>", _syntax_message(e))]) from None
    return problems


def _syntax_message(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(e, "problem", None)
    if problem is None and isinstance(e, yaml.reader.ReaderError):
        problem = f"unacceptable character #x{e.character:04x} (not printable text)"
    return f"invalid YAML: {at}{problem or e}"


def parse_yaml(text: str, source: str | None = None) -> dict[str, Any]:
    """Parse the YAML text of a config into a mapping; ``ConfigError`` listing every problem otherwise."""
    data = parse_document(text, source)
    if data is None:
        msg = (
            "the file is empty (or only `~`): write the sections to set, e.g. `adapter: {family: lora}` "
            "(the files in search_spaces/ show every section)"
        )
        raise ConfigError([("<file>", msg)], source)
    if not isinstance(data, dict):
        raise ConfigError([("<root>", f"expected a mapping of sections, got {type(data).__name__}")], source)
    return data


def parse_document(text: str, source: str | None = None) -> Any:
    """Any YAML value (a mapping, a list, a scalar; None for an empty document), strictly checked."""
    try:
        problems = check_events(text)
    except ConfigError as e:
        raise ConfigError(e.problems, source) from None
    if problems:
        raise ConfigError(problems, source)
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:  # checked above; kept so that no YAML error can escape as a traceback
        raise ConfigError([("<file>", _syntax_message(e))], source) from None
    finally:
        loader.dispose()


# ------------------------------------------------------------------------------------------- overrides
def split_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ("a.b", parsed value); ``ConfigError`` naming the ``--set`` argument otherwise.

    The value is YAML (``[q, v]``, ``null``, ``1e-3``) under the same rules as a file; text that is not valid
    YAML is taken as it is (``--set data.template={} on a table``).
    """
    where = f"--set {item}"
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([(where, "an override must look like section.field=value")])
    bad = _BAD_CHAR.search(item)
    if bad:
        raise ConfigError(
            [(where, f"contains a character that is not printable text (U+{ord(bad.group()):04X})")]
        )
    parts = key.split(".")
    if any(not p.strip() or p != p.strip() for p in parts):
        raise ConfigError([(where, f"{key!r} is not a field path such as train.lr")])
    if not raw.strip():
        return key, raw
    try:
        return key, parse_document(raw)
    except ConfigError as e:
        if any(msg.startswith("invalid YAML") for _, msg in e.problems):
            return key, raw  # not YAML: plain text
        raise ConfigError([(where, msg) for _, msg in e.problems]) from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key.path=value`` overrides applied (values parsed as YAML)."""
    import copy

    out = copy.deepcopy(data)
    problems = []
    for item in overrides:
        try:
            key, value = split_override(item)
        except ConfigError as e:
            problems += e.problems
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append((f"--set {item}", f"{part!r} is not a section"))
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, source="--set")
    return out


def blame_overrides(error: ConfigError, overrides: list[str] | tuple[str, ...]) -> ConfigError:
    """The same error with each problem that an override caused named by its ``--set`` argument."""
    if not overrides:
        return error
    keys = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key:
            keys.append((key, item))
    out = []
    for path, msg in error.problems:
        bare = path.split(": ")[-1]  # "defaults (lora): train.lr" -> "train.lr"
        bare = bare.removeprefix("base.")
        for key, item in reversed(keys):  # the last --set of a key wins
            if bare == key or bare.startswith(key + ".") or key.startswith(bare + "."):
                path = f"--set {item}"
                break
        out.append((path, msg))
    return ConfigError(out, error.source)


# ------------------------------------------------------------------------------------------ validation
def problems_from_validation(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic error into (dotted field path, message) pairs, hiding union tags such as ``adapter.lora``."""
    from ranksearch.adapters.configs import family_configs, family_names

    families = set(family_names())
    out = []
    for e in err.errors(include_url=False):
        loc = list(e["loc"])
        family = None
        if len(loc) >= 2 and loc[0] == "adapter" and loc[1] in families:
            family = loc.pop(1)  # discriminated-union tag: the user wrote adapter.r, not adapter.lora.r
        path = ".".join(str(x) for x in loc) or "<root>"
        if prefix:
            path = f"{prefix}.{path}" if path != "<root>" else prefix
        if e["type"] == CROSS_FIELD:  # several problems found across fields, paths relative to ``loc``
            base = "" if path == "<root>" else path + "."
            out += [(base + where, msg) for where, msg in e["ctx"]["problems"]]
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] not in ("missing", "extra_forbidden", "value_error") and "input" in e:
            shown = repr(e["input"])
            msg += f" (got {shown[:80] + '...' if len(shown) > 80 else shown})"
        if e["type"] == "extra_forbidden" and loc:
            msg += suggest(str(loc[-1]), _fields_at(loc[:-1], family_configs().get(family)))
        if e["type"] == "union_tag_invalid":
            given = e["input"].get("family") if isinstance(e["input"], dict) else e["input"]
            msg = f"unknown adapter family {given!r}; known: {', '.join(sorted(families))}" + suggest(
                str(given), families
            )
        out.append((path, msg))
    return out


def _fields_at(loc: list[Any], adapter_cls: Any) -> list[str]:
    """The field names of the section at ``loc`` in ``TrialConfig`` (for did-you-mean); [] if unknown."""
    from ranksearch.config.schema import TrialConfig

    cls: Any = TrialConfig
    for i, part in enumerate(loc):
        if i == 0 and part == "adapter" and adapter_cls is not None:
            cls = adapter_cls
            continue
        fields = getattr(cls, "model_fields", {})
        if part not in fields:
            return []
        cls = model_in(fields[part].annotation)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as ``BudgetConfig | None`` (None for plain values)."""
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def validate_trial_config(data: dict[str, Any], source: str | None = None):
    """Validate a mapping as a ``TrialConfig``; raise ``ConfigError`` listing every problem."""
    from ranksearch.config.schema import TrialConfig

    if not isinstance(data, dict):
        raise ConfigError([("<root>", f"expected a mapping of sections, got {type(data).__name__}")], source)
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(problems_from_validation(e), source) from None


def load_trial_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """Load, override and validate a trial config file."""
    data = apply_overrides(load_yaml(path), overrides)
    try:
        return validate_trial_config(data, source=str(path))
    except ConfigError as e:
        raise blame_overrides(e, overrides) from None


def dump_trial_config(config: Any) -> str:
    """The config as YAML (every field, defaults included), loadable by ``load_trial_config``."""
    return dump_yaml(config.model_dump(mode="json"))
