"""A validated search space: which parameters a trial has, and how parameter values become a ``TrialConfig``.

Parameter names (as Optuna, Tune and MLflow see them) are the dotted trial-config paths (``train.lr``). When
the adapter family is itself a parameter, a family's own parameters are named ``<family>:<path>``
(``lora:adapter.r``), because different families may give the same path different ranges and Optuna does not
allow one name to change its distribution within a study.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ranksearch.errors import ConfigError
from ranksearch.space.spec import CategoricalParam, Param, SearchSpaceSpec, encode_choice

FAMILY_PATH = "adapter.family"
DEFAULT_FAMILY = "lora"


@dataclass(frozen=True)
class ActiveParam:
    """A parameter as it applies in one trial: Optuna name, trial-config path and domain."""

    name: str
    path: str
    spec: Param


class SearchSpace:
    """A search space loaded by ``ranksearch.space.load_space`` (already validated).

    Attributes:
        spec: the parsed file.
        source: where it came from (file path), for messages.
        text: the file's original text (kept as the sweep's record of what was searched).
    """

    def __init__(self, spec: SearchSpaceSpec, source: str | None = None, text: str | None = None):
        self.spec, self.source, self.text = spec, source, text

    # ------------------------------------------------------------------------------------------- families
    @property
    def family_param(self) -> CategoricalParam | None:
        """The family categorical, if the family is searched over."""
        p = self.spec.params.get(FAMILY_PATH)
        return p if isinstance(p, CategoricalParam) else None

    @property
    def families(self) -> list[str]:
        """Every family a trial of this space can use."""
        if self.family_param is not None:
            return [str(c) for c in self.family_param.choices]
        return [self.fixed_family]

    @property
    def fixed_family(self) -> str:
        adapter = self.spec.base.get("adapter") or {}
        if "family" in adapter:
            return str(adapter["family"])
        from ranksearch.config.presets import preset_family

        if preset_family(self.spec.base):  # base: {preset: codyra} implies its family
            return str(preset_family(self.spec.base))
        if len(self.spec.families) == 1:  # a one-family space may name its family only under families:
            return next(iter(self.spec.families))
        return DEFAULT_FAMILY

    @property
    def default_family(self) -> str:
        fp = self.family_param
        return str(fp.default_value()) if fp is not None else self.fixed_family

    # ------------------------------------------------------------------------------------------ parameters
    def active_params(self, family: str) -> list[ActiveParam]:
        """The parameters of a trial that uses ``family``: shared ones first, then the family's own."""
        out = [ActiveParam(path, path, p) for path, p in self.spec.params.items() if path != FAMILY_PATH]
        sub = self.spec.families.get(family)
        if sub is not None:
            prefix = f"{family}:" if self.family_param is not None else ""
            out += [ActiveParam(prefix + path, path, p) for path, p in sub.params.items()]
        return out

    def all_param_names(self) -> list[str]:
        names = [FAMILY_PATH] if self.family_param is not None else []
        for family in self.families:
            names += [a.name for a in self.active_params(family) if a.name not in names]
        return names

    def default_params(self, family: str | None = None) -> dict[str, Any]:
        """Each parameter's default (as Optuna values) for ``family`` (default: the family default)."""
        family = family or self.default_family
        out: dict[str, Any] = {}
        if self.family_param is not None:
            out[FAMILY_PATH] = family
        for a in self.active_params(family):
            v = a.spec.default_value()
            out[a.name] = encode_choice(v)
        return out

    @property
    def replicate_seeds(self) -> list[int] | None:
        return self.spec.seeds

    # --------------------------------------------------------------------------------------- trial config
    def config_dict(self, params: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
        """The trial config mapping for parameter values (missing ones take their default).

        ``params`` keys are parameter names (``train.lr``, ``lora:adapter.r``) or, for the chosen family's
        parameters, plain paths (``adapter.r``); values are Optuna values ("q,k,v") or the choices themselves.

        Raises:
            ConfigError: unknown parameter names or values outside a parameter's domain (all listed).
        """
        params = dict(params or {})
        problems: list[tuple[str, str]] = []
        family = params.pop(FAMILY_PATH, None)
        if family is None:
            family = self.default_family
        elif family not in self.families:
            problems.append((FAMILY_PATH, f"{family!r} is not one of {self.families}"))
            family = self.default_family
        data = copy.deepcopy(self.spec.base)
        sub = self.spec.families.get(family)
        if sub is not None:
            data = deep_merge(data, sub.base)
        data.setdefault("adapter", {})
        data["adapter"] = {"family": family, **{k: v for k, v in data["adapter"].items() if k != "family"}}
        for a in self.active_params(family):
            if a.name in params:
                value = params.pop(a.name)
            elif a.path in params:
                value = params.pop(a.path)
            else:
                value = a.spec.default_value()
            if not a.spec.contains(value):
                problems.append((a.name, f"{value!r} is outside the parameter's domain"))
                continue
            if isinstance(a.spec, CategoricalParam):
                value = copy.deepcopy(a.spec.decode(value))
            set_path(data, a.path, value)
        for name in params:
            problems.append((name, f"not a parameter of this space for family {family!r}"))
        if problems:
            raise ConfigError(problems, source="params")
        if seed is not None:
            data["seed"] = seed
        elif self.spec.seeds:
            data["seed"] = self.spec.seeds[0]
        return data

    def trial_config(
        self,
        params: dict[str, Any] | None = None,
        overrides: list[str] | tuple[str, ...] = (),
        seed: int | None = None,
    ):
        """A validated ``TrialConfig`` from parameter values (defaults for missing ones) and ``a.b=value`` overrides.

        Args:
            params: parameter values by name (see ``config_dict``); None: every default.
            overrides: dotted overrides applied last (as ``ranksearch trial --set``).
            seed: the trial seed (a replicate); default: the first of ``seeds`` or the base config's.

        Raises:
            ConfigError: bad parameter names/values or an invalid resulting config, with field paths.
        """
        from ranksearch.config.load import apply_overrides, blame_overrides, validate_trial_config

        data = apply_overrides(self.config_dict(params, seed), overrides)
        try:
            return validate_trial_config(data, source=self.source)
        except ConfigError as e:
            raise blame_overrides(e, overrides) from None


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` updated by ``b``, recursively for nested mappings (b wins)."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = (
            deep_merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict)
            else copy.deepcopy(v)
        )
    return out


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``path == "a.b.c"``, creating (or replacing null) sections on the way."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
