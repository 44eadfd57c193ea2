"""Load and validate a search-space file, reporting every problem at once with its field path.

Checks: the structure (unknown keys, empty or inverted ranges, bad choices), that every family is registered,
that every parameter path names a field of ``TrialConfig`` (for each family it can apply to), that fixed
values and family parameters do not clash, and that each family's defaults produce a valid ``TrialConfig``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ranksearch.config.base import CROSS_FIELD
from ranksearch.errors import ConfigError
from ranksearch.oneshot.spec import space_problems as oneshot_problems
from ranksearch.space.space import FAMILY_PATH, SearchSpace
from ranksearch.space.spec import SearchSpaceSpec, budget_problems

_UNION_TAG = re.compile(r"^([A-Z]\w*|list\[.*\])$")  # pydantic names union members by type
SPACE_KEYS = {
    "params",
    "families",
    "objective",
    "sampler",
    "early_stopping",
    "trials",
    "concurrency",
    "seeds",
}


def looks_like_space(data: dict[str, Any]) -> bool:
    """True for a search-space mapping, False for a plain trial config (whose keys are config sections)."""
    return isinstance(data, dict) and bool(SPACE_KEYS & set(data))


def load_space(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """Read and validate a search-space YAML file; ``overrides`` (``a.b=value``) set fixed values in ``base``.

    Raises:
        ConfigError: listing every problem with its field path.
    """
    from ranksearch.config.load import apply_overrides, blame_overrides, dump_yaml, parse_yaml, read_text_file

    p = Path(path)
    text = read_text_file(p)
    data = parse_yaml(text, source=str(p))
    if overrides:
        searched = searched_by_overrides(data, overrides)
        if searched:
            raise ConfigError(searched, str(p))
        base = data.get("base") if isinstance(data.get("base"), dict) else {}
        data = {**data, "base": apply_overrides(base, overrides)}
        # the recorded copy must hold the overrides too, so a resumed sweep runs the same space
        text = f"# {p.name} with --set {' '.join(overrides)}\n" + dump_yaml(data)
    try:
        return validate_space(data, source=str(p), text=text)
    except ConfigError as e:
        raise blame_overrides(e, overrides) from None


def searched_by_overrides(data: Any, overrides: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """``--set`` on a field the space searches would be silently overridden by the sampled value: refused.

    (``--set`` fixes a field for every trial; a searched field is not fixed, so the parameter must go first.)
    """
    if not isinstance(data, dict):
        return []
    searched: dict[str, str] = {}
    if isinstance(data.get("params"), dict):
        searched.update({str(k): f"params.{k}" for k in data["params"]})
    families = data.get("families") if isinstance(data.get("families"), dict) else {}
    for family, sub in families.items():
        if isinstance(sub, dict) and isinstance(sub.get("params"), dict):
            for k in sub["params"]:
                searched.setdefault(str(k), f"families.{family}.params.{k}")
    problems = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        for path, where in searched.items():
            if key and (key == path or key.startswith(path + ".") or path.startswith(key + ".")):
                problems.append((f"--set {item}", f"{path} is searched by this space ({where}), so a fixed value "
                                 "would be ignored; remove that parameter from the space to fix the field"))  # fmt: skip
                break
    return problems


def validate_space(
    data: dict[str, Any], source: str | None = None, text: str | None = None, *, trial_config: bool = True
) -> SearchSpace:
    """Validate a search-space mapping; raise ``ConfigError`` with all problems.

    ``trial_config=False`` skips the checks against ``TrialConfig`` (registered families, field paths, valid
    defaults and bounds): for replaying a third-party table whose parameters are not ranksearch fields.
    """
    if not isinstance(data, dict):
        raise ConfigError([("<root>", f"expected a mapping, got {type(data).__name__}")], source)
    problems = _value_checks(data)
    if problems:  # a key that is not text would break every path-based check below
        raise ConfigError(problems, source)
    problems = (_raw_checks(data) if trial_config else []) + budget_problems(data)
    spec = None
    try:
        spec = SearchSpaceSpec.model_validate(data)
    except ValidationError as e:
        problems += _problems(e)
    if spec is not None and not problems:
        space = SearchSpace(spec, source, text)
        if trial_config:
            problems += _default_checks(space)
            problems += _bound_checks(space)
        problems += _sampler_checks(space)
        problems += _objective_checks(space)
        problems += _pack_checks(space)
        problems += oneshot_problems(spec)
        if not problems:
            return space
    raise ConfigError(_dedupe(problems), source)


# --------------------------------------------------------------------------------------------- raw checks
def _value_checks(data: Any, path: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Every mapping key is text (a YAML file cannot say otherwise; a dict from Python can), every number finite.

    No field of a trial config or a space takes inf or nan, so one is refused wherever it is, even in ``base``
    values that a parameter overrides.
    """
    import math

    from ranksearch.config.load import MAX_DEPTH

    if depth > MAX_DEPTH:
        return [(path or "<root>", f"nested more than {MAX_DEPTH} levels deep")]
    if isinstance(data, float) and not math.isfinite(data):
        return [(path or "<root>", f"{data} is not a finite number")]
    problems: list[tuple[str, str]] = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for key, value in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(data, dict) and not isinstance(key, str):
            problems.append(
                (where, f"the key {key!r} is a {type(key).__name__}; keys are text (quote it in YAML)")
            )
            continue
        problems += _value_checks(value, where, depth + 1)
    return problems


def _raw_checks(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Family and path checks on the raw mapping, so they are reported together with structural errors."""
    from ranksearch.adapters.configs import family_names
    from ranksearch.config.load import suggest

    known = family_names()
    problems: list[tuple[str, str]] = []
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    families = data.get("families") if isinstance(data.get("families"), dict) else {}
    base = data.get("base") if isinstance(data.get("base"), dict) else {}
    base_adapter = base.get("adapter") if isinstance(base.get("adapter"), dict) else {}

    # which families can a trial use?
    fam = params.get(FAMILY_PATH)
    choices = fam if isinstance(fam, list) else fam.get("choices") if isinstance(fam, dict) else None
    if fam is not None:
        if not (isinstance(fam, list) or (isinstance(fam, dict) and fam.get("type") == "categorical")):
            problems.append((f"params[{FAMILY_PATH}]", "the family parameter must be categorical"))
        chosen = [c for c in (choices or []) if isinstance(c, str)]
        for c in choices or []:
            if not isinstance(c, str) or c not in known:
                problems.append(
                    (
                        f"params[{FAMILY_PATH}].choices",
                        f"unknown family {c!r}; known: {', '.join(known)}{suggest(str(c), known)}",
                    )
                )
        if "family" in base_adapter:
            problems.append(
                ("base.adapter.family", f"fixed here but also a parameter (params[{FAMILY_PATH}])")
            )
        extra = sorted(set(base_adapter) - {"family"})
        if extra:
            problems.append(
                (
                    "base.adapter",
                    f"{extra} are family-specific; put them under families.<family>.base.adapter",
                )
            )
    else:
        from ranksearch.config.presets import preset_family

        fixed = (
            base_adapter.get("family")
            or preset_family(base)
            or (next(iter(families)) if len(families) == 1 else "lora")
        )
        chosen = [fixed]
        if not isinstance(fixed, str) or fixed not in known:
            problems.append(
                (
                    "base.adapter.family",
                    f"unknown family {fixed!r}; known: {', '.join(known)}{suggest(str(fixed), known)}",
                )
            )
    for name, sub in families.items():
        if name not in known:
            problems.append(
                (
                    f"families.{name}",
                    f"unknown family {name!r}; known: {', '.join(known)}{suggest(name, known)}",
                )
            )
        elif name not in chosen:
            problems.append((f"families.{name}", f"never used: the trials' families are {chosen}"))
        sub_params = (
            sub.get("params") if isinstance(sub, dict) and isinstance(sub.get("params"), dict) else {}
        )
        for path in sub_params:
            where = f"families.{name}.params[{path}]"
            if path == FAMILY_PATH or path.split(".")[0] == "seed" and data.get("seeds"):
                problems.append((where, "cannot be a family parameter"))
            elif path in params:
                problems.append((where, f"also a shared parameter (params[{path}])"))
            elif name in known:
                msg = path_problem(path, name)
                if msg:
                    problems.append((where, msg))
    for path in params:
        if path == FAMILY_PATH:
            continue
        if path == "seed" and data.get("seeds"):
            problems.append((f"params[{path}]", "seed is set by `seeds` (replicates); do not search it"))
        for family in [f for f in chosen if f in known]:
            msg = path_problem(path, family)
            if msg:
                problems.append(
                    (f"params[{path}]", msg + (f" (family {family})" if path.startswith("adapter.") else ""))
                )
                if not path.startswith("adapter."):
                    break
    return problems


def path_problem(path: str, family: str) -> str | None:
    """Why ``path`` is not a settable field of ``TrialConfig`` when the adapter is ``family`` (None if it is)."""
    from ranksearch.adapters.configs import family_configs
    from ranksearch.config.load import model_in, suggest
    from ranksearch.config.schema import TrialConfig

    cls: type[BaseModel] | None = TrialConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the trial config"
        if cls is None:
            return f"{where} is a value, not a section"
        if part not in cls.model_fields:
            known = list(cls.model_fields)
            return f"{where} has no field {part!r}{suggest(part, known)}; known: {', '.join(known)}"
        if i == 0 and part == "adapter":
            cls = family_configs()[family]
        else:
            cls = model_in(cls.model_fields[part].annotation)
    if path == "adapter":
        return "set adapter fields one by one (adapter.r, ...)"
    return None


# ------------------------------------------------------------------------------------ structural errors
def _problems(err: ValidationError) -> list[tuple[str, str]]:
    """pydantic errors as (path, message); parameter names in brackets, union tags dropped."""
    out = []
    for e in err.errors(include_url=False):
        loc, parts = list(e["loc"]), []
        tags = [x for x in loc if isinstance(x, str) and _UNION_TAG.match(x)]
        if tags and e["type"] in ("list_type", "model_type", "dict_type"):
            continue  # "not the other member of the union": noise next to the member's real error
        loc = [x for x in loc if x not in tags]
        i = 0
        while i < len(loc):
            item = loc[i]
            if item == "params" and i + 1 < len(loc):
                parts.append(f"params[{loc[i + 1]}]")
                i += 2
                if i < len(loc) and loc[i] in ("float", "int", "categorical"):
                    i += 1  # discriminated-union tag
                continue
            parts.append(str(item))
            i += 1
        path = ".".join(parts) or "<root>"
        if e["type"] == CROSS_FIELD:  # several problems, paths relative to ``loc``
            base = "" if path == "<root>" else path + "."
            out += [(base + where, msg) for where, msg in e["ctx"]["problems"]]
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] not in ("missing", "extra_forbidden", "value_error") and "input" in e:
            shown = repr(e["input"])
            msg += f" (got {shown[:80] + '...' if len(shown) > 80 else shown})"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append((path, msg))
    return out


# -------------------------------------------------------------------------------------- semantic checks
def _default_checks(space: SearchSpace) -> list[tuple[str, str]]:
    """Every family's defaults must give a valid TrialConfig (catches bad base values and bad defaults)."""
    from ranksearch.config.load import problems_from_validation
    from ranksearch.config.schema import TrialConfig

    problems = []
    for family in space.families:
        try:
            data = space.config_dict(space.default_params(family))
            TrialConfig.model_validate(data)
        except ConfigError as e:
            problems += [(f"defaults ({family}): {p}", m) for p, m in e.problems]
        except ValidationError as e:
            problems += [(f"defaults ({family}): {p}", m) for p, m in problems_from_validation(e)]
    return problems


def _bound_checks(space: SearchSpace) -> list[tuple[str, str]]:
    """Every value a parameter can take must be valid for its field: a range's two ends and each choice.

    The defaults check only sees one value per parameter; without this a range such as ``train.lr`` in
    [2, 10] (the field allows at most 1) passes validation and every trial of the sweep fails at start.
    """
    from ranksearch.config.load import problems_from_validation
    from ranksearch.config.schema import TrialConfig
    from ranksearch.space.spec import CategoricalParam

    problems: list[tuple[str, str]] = []
    for family in space.families:
        defaults = space.default_params(family)
        for a in space.active_params(family):
            where = (
                f"params[{a.path}]" if a.path in space.spec.params else f"families.{family}.params[{a.path}]"
            )
            if isinstance(a.spec, CategoricalParam):
                values = [("choice", c) for c in a.spec.encoded()]
            else:
                values = [("low", a.spec.low), ("high", a.spec.high)]
            for label, value in values:
                try:
                    TrialConfig.model_validate(space.config_dict({**defaults, a.name: value}))
                except ConfigError:
                    continue  # outside the parameter's own domain: reported by the structural checks
                except ValidationError as e:
                    # the defaults are valid (checked first), so every problem here comes from this value
                    for path, msg in problems_from_validation(e):
                        if path == a.path or path.startswith(a.path + "."):
                            problems.append((where, f"{label} {value!r} is not a valid {a.path}: {msg}"))
                        else:
                            problems.append((where, f"{label} {value!r} makes {path} invalid: {msg}"))
    return problems


def _objective_checks(space: SearchSpace) -> list[tuple[str, str]]:
    """A validation objective must be a metric the trials report (val/hm under fewshot never exists)."""
    from ranksearch.config.schema import TrialConfig

    objs = space.spec.objectives
    problems: list[tuple[str, str]] = []
    for family in space.families:
        try:
            data = TrialConfig.model_validate(space.config_dict(space.default_params(family))).data
        except (ConfigError, ValidationError):
            continue  # reported by the defaults check
        reported = data.validation_metrics()
        for i, o in enumerate(objs):
            name = o.metric.removeprefix("zs/").removesuffix("_std")
            if name.startswith("val/") and name not in reported:
                where = f"objective[{i}].metric" if len(objs) > 1 else "objective.metric"
                rule = f"data.protocol {data.protocol!r}" + (
                    " with data.val_new_fraction 0" if data.protocol == "base2new" else ""
                )
                problems.append(
                    (where, f"{o.metric!r} never exists under {rule}: trials report {', '.join(reported)}")
                )
    return problems


def _sampler_checks(space: SearchSpace) -> list[tuple[str, str]]:
    """Sampler options by sampler type (names, types, ranges), then what Optuna itself refuses."""
    from ranksearch.space.optuna_space import build_sampler
    from ranksearch.space.spec import SAMPLER_OPTIONS

    sampler = space.spec.sampler
    try:
        options = SAMPLER_OPTIONS[sampler.type].model_validate(sampler.options)
    except ValidationError as e:
        problems = []
        for path, msg in _problems(e):
            if msg == "unknown key":
                known = ", ".join(SAMPLER_OPTIONS[sampler.type].model_fields) or "none"
                msg = f"not an option of the {sampler.type} sampler (its options: {known})"
            problems.append((f"sampler.options.{path}", msg))
        return problems
    if sampler.type == "tpe" and options.multivariate is False and options.group is not False:
        return [("sampler.options.group", "group needs multivariate: set group: false too")]
    try:
        build_sampler(space)
    except ConfigError as e:
        return e.problems
    return []


def _pack_checks(space: SearchSpace) -> list[tuple[str, str]]:
    """A pack trains ``resources.pack`` trials at once: the sweep must run at least that many together."""
    pack, concurrency = space.spec.resources.pack, space.spec.concurrency
    if pack > concurrency:
        return [
            (
                "concurrency",
                f"{concurrency} is below resources.pack={pack}: a pack trains {pack} trials at once, so run at "
                f"least {pack} together (concurrency: {pack}, or a multiple of it)",
            )
        ]
    return []


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def space_json_schema() -> dict[str, Any]:
    """JSON Schema of the search-space format (for editor autocompletion, e.g. yaml-language-server)."""
    schema = SearchSpaceSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ranksearch search space"
    return schema
