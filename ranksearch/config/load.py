"""YAML in, validated config out — with every problem reported at once, by field path.

Loading is defensive because configs come from users: size-capped, UTF-8 only, ``yaml.safe_load`` (no Python
object tags), and alias-heavy documents ("billion laughs" anchor bombs) are rejected before they expand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ranksearch.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a config is a few KiB; anything larger is a mistake or an attack
MAX_ALIASES = 100


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; raise ``ConfigError`` with a clear reason if it cannot be used."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([("<file>", f"{str(p)!r} does not exist or is not a file")], source=str(p))
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            [("<file>", f"file is {p.stat().st_size} bytes; the limit is {MAX_CONFIG_BYTES}")], str(p)
        )
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([("<file>", f"not UTF-8 text ({e.reason} at byte {e.start})")], str(p)) from None
    return parse_yaml(text, source=str(p))


def parse_yaml(text: str, source: str | None = None) -> dict[str, Any]:
    """Parse YAML text into a mapping (empty document -> {})."""
    try:
        aliases = sum(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_ALIASES:
            raise ConfigError(
                [("<file>", f"{aliases} YAML aliases (limit {MAX_ALIASES}); refusing to expand")], source
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            [("<file>", f"invalid YAML: {where}{getattr(e, 'problem', None) or e}")], source
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([("<root>", f"expected a mapping of sections, got {type(data).__name__}")], source)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key.path=value`` overrides applied (values parsed as YAML)."""
    import copy

    out = copy.deepcopy(data)
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append((item, "an override must look like section.field=value"))
            continue
        value = _parse_value(raw)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append((key, f"{part!r} is not a section"))
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, source="--set")
    return out


def _parse_value(raw: str) -> Any:
    """A command-line value: YAML scalar/list/mapping, with '1e-3' read as a number (YAML 1.1 says string)."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def problems_from_validation(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic error into (dotted field path, message) pairs, hiding union tags such as ``adapter.lora``."""
    from ranksearch.adapters.configs import family_names

    families = set(family_names())
    out = []
    for e in err.errors(include_url=False):
        loc = list(e["loc"])
        if len(loc) >= 2 and loc[0] == "adapter" and loc[1] in families:
            loc.pop(1)  # discriminated-union tag: the user wrote adapter.r, not adapter.lora.r
        path = ".".join(str(x) for x in loc) or "<root>"
        if prefix:
            path = f"{prefix}.{path}" if path != "<root>" else prefix
        msg = e["msg"]
        if e["type"] not in ("missing", "extra_forbidden") and "input" in e:
            shown = repr(e["input"])
            msg += f" (got {shown[:80] + '...' if len(shown) > 80 else shown})"
        if e["type"] == "union_tag_invalid":
            msg = f"unknown adapter family {e['input'].get('family')!r}; known: {', '.join(sorted(families))}"
        out.append((path, msg))
    return out


def validate_trial_config(data: dict[str, Any], source: str | None = None):
    """Validate a mapping as a ``TrialConfig``; raise ``ConfigError`` listing every problem."""
    from ranksearch.config.schema import TrialConfig

    try:
        return TrialConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(problems_from_validation(e), source) from None


def load_trial_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """Load, override and validate a trial config file."""
    return validate_trial_config(apply_overrides(load_yaml(path), overrides), source=str(path))


def dump_trial_config(config: Any) -> str:
    """The config as YAML (every field, defaults included), loadable by ``load_trial_config``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
