"""Search spaces: parsing, validation with field paths, the define-by-run compile, defaults, shipped files."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from ranksearch.adapters.families import family_names
from ranksearch.errors import ConfigError
from ranksearch.space import load_space, looks_like_space, space_json_schema, validate_space
from ranksearch.space.optuna_space import DefineByRun, build_sampler, distributions
from ranksearch.space.space import FAMILY_PATH

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def two_families() -> dict:
    return {
        "base": {"model": {"pretrained": None}, "data": {"shots": 4}},
        "params": {
            "adapter.family": {"type": "categorical", "choices": ["lora", "rlrr"], "default": "lora"},
            "train.lr": {"type": "float", "low": "1e-4", "high": 1e-2, "log": True},
            "placement.matrices": [["q", "v"], ["q", "k", "v"]],
        },
        "families": {
            "lora": {
                "base": {"adapter": {"dropout": 0.0}},
                "params": {
                    "adapter.r": {"type": "categorical", "choices": [1, 2, 4], "default": 4},
                    "adapter.budget.total_rank": {"type": "int", "low": 8, "high": 64, "step": 8},
                },
            },
            "rlrr": {
                "params": {"adapter.r": {"type": "int", "low": 1, "high": 8}, "adapter.ssf": [True, False]}
            },
        },
        "objective": [{"metric": "val/hm", "mode": "max"}, {"metric": "trainable_params", "mode": "min"}],
    }


def problems_of(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        validate_space(data, source="test.yaml")
    return dict(info.value.problems)


def test_parse_defaults_and_trial_config():
    space = validate_space(two_families())
    assert space.families == ["lora", "rlrr"] and space.default_family == "lora"
    cfg = space.trial_config()
    assert cfg.adapter.family == "lora" and cfg.adapter.r == 4 and cfg.adapter.dropout == 0.0
    assert cfg.adapter.budget.total_rank == 40  # midpoint of 8..64 on the step-8 grid
    assert cfg.placement.matrices == ["q", "v"] and cfg.train.lr == pytest.approx(1e-3)  # geometric mean
    assert cfg.data.shots == 4 and cfg.model.pretrained is None
    # chosen family + encoded list value + plain path for a family parameter + an override
    cfg = space.trial_config(
        {"adapter.family": "rlrr", "placement.matrices": "q,k,v", "adapter.r": 2}, ["train.lr=3e-3"]
    )
    assert cfg.adapter.family == "rlrr" and cfg.adapter.r == 2 and cfg.placement.matrices == ["q", "k", "v"]
    assert cfg.train.lr == 3e-3 and not hasattr(cfg.adapter, "dropout")
    # qualified names work too; a list value from --params JSON is accepted
    cfg = space.trial_config(
        {"adapter.family": "rlrr", "rlrr:adapter.r": 8, "placement.matrices": ["q", "v"]}
    )
    assert cfg.adapter.r == 8


def test_bad_params_are_reported_together():
    space = validate_space(two_families())
    with pytest.raises(ConfigError) as info:
        space.trial_config({"adapter.r": 99, "nope": 1, "train.lr": 5.0})
    paths = dict(info.value.problems)
    assert set(paths) == {"lora:adapter.r", "nope", "train.lr"}


def test_conditional_parameters_appear_only_for_their_family():
    space = validate_space(two_families())
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    fn = DefineByRun(space)
    seen = set()
    for _ in range(60):
        trial = study.ask()
        fn(trial)
        family = trial.params[FAMILY_PATH]
        seen.add(family)
        own = {k for k in trial.params if ":" in k}
        assert own == {k for k in distributions(space, family) if ":" in k}
        assert all(k.startswith(f"{family}:") for k in own)
        assert set(trial.params) == set(distributions(space, family))
        # every sampled point is a valid trial config
        cfg = space.trial_config(trial.params)
        assert cfg.adapter.family == family
        study.tell(trial, [1.0, 2.0])
    assert seen == {"lora", "rlrr"}


def test_tpe_sampler_runs_the_conditional_space():
    space = validate_space(two_families())
    sampler = build_sampler(space)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    fn = DefineByRun(space)
    for i in range(15):
        t = study.ask()
        fn(t)
        study.tell(t, [float(i % 5), float(i)])
    assert len(study.trials) == 15


def test_many_errors_with_field_paths():
    data = two_families()
    data["params"]["train.lr"] = {"type": "float", "low": 1e-2, "high": 1e-4}  # inverted
    data["params"]["train.nope"] = {"type": "int", "low": 1, "high": 2}  # no such field
    data["params"]["adapter.family"]["choices"].append("mystery")  # unknown family
    data["families"]["lora"]["params"]["adapter.r"]["choices"] = []  # empty
    data["families"]["rlrr"]["params"]["adapter.dropout"] = [0.0, 0.1]  # rlrr has no dropout
    data["sampler"] = {"type": "tpe", "bogus": 1}  # unknown key
    data["trials"] = 0
    problems = problems_of(data)
    assert "inverted range" in problems["params[train.lr]"]
    assert "no field 'nope'" in problems["params[train.nope]"]
    assert "unknown family 'mystery'" in problems["params[adapter.family].choices"]
    assert "at least 1 item" in problems["families.lora.params[adapter.r].choices"]
    assert "no field 'dropout'" in problems["families.rlrr.params[adapter.dropout]"]
    assert problems["sampler.bogus"] == "unknown key"
    assert "greater than or equal to 1" in problems["trials"]


def test_semantic_errors():
    data = two_families()
    data["params"]["adapter.dropout"] = [0.0, 0.1]  # shared, but rlrr has none
    data["base"]["adapter"] = {"r": 2}  # family-specific value while the family is searched
    data["families"]["dra"] = {}  # never chosen
    problems = problems_of(data)
    assert "(family rlrr)" in problems["params[adapter.dropout]"]
    assert "family-specific" in problems["base.adapter"]
    assert "never used" in problems["families.dra"]

    fixed = {
        "base": {"adapter": {"family": "lora"}},
        "params": {"adapter.r": [1, 2]},
        "objective": {"metric": "test/hm"},
    }
    assert "validation split" in problems_of(fixed)["objective.metric"]


def test_defaults_must_give_a_valid_trial_config():
    data = {
        "base": {"train": {"lr": 0.1}, "data": {"shots": 0}},
        "params": {"train.warmup_steps": {"type": "int", "low": -5, "high": -1}},
        "objective": {"metric": "val/hm"},
    }
    problems = problems_of(data)
    assert any(p.startswith("defaults (lora): data.shots") for p in problems)
    assert any(p.startswith("defaults (lora): train.warmup_steps") for p in problems)


def test_categorical_lists_and_collisions():
    space = validate_space(
        {"params": {"placement.layers": ["all", "0-1", [0, 1]]}, "objective": {"metric": "val/hm"}}
    )
    assert space.trial_config({"placement.layers": "0,1"}).placement.layers == [0, 1]
    problems = problems_of(
        {"params": {"placement.layers": [[0, 1], "0,1"]}, "objective": {"metric": "val/hm"}}
    )
    assert "collide" in problems["params[placement.layers]"]
    # a choice naming blocks the model does not have (the tiny text tower has 2) is refused up front
    problems = problems_of(
        {"params": {"placement.layers": ["all", [0, 2]]}, "objective": {"metric": "val/hm"}}
    )
    assert "is out of range for rs-tiny-clip" in problems["params[placement.layers]"]


def test_samplers_and_grid():
    base = {
        "params": {
            "adapter.r": [1, 2],
            "train.lr": {"type": "float", "low": 0.001, "high": 0.003, "step": 0.001},
        }
    }
    for kind in ("tpe", "gp", "nsga2", "random", "qmc", "grid"):
        space = validate_space({**base, "objective": {"metric": "val/hm"}, "sampler": {"type": kind}})
        assert build_sampler(space) is not None
    bad = {**base, "params": {"train.lr": {"type": "float", "low": 0.001, "high": 0.003}}}
    problems = problems_of({**bad, "objective": {"metric": "val/hm"}, "sampler": {"type": "grid"}})
    assert "grid" in problems["params[train.lr]"]
    problems = problems_of(
        {**base, "objective": {"metric": "val/hm"}, "sampler": {"options": {"nonsense": 1}}}
    )
    assert "not an option of the tpe sampler" in problems["sampler.options.nonsense"]


def test_looks_like_space():
    assert looks_like_space({"params": {}, "objective": {"metric": "val/hm"}})
    assert not looks_like_space({"train": {"lr": 1e-3}, "adapter": {"r": 2}})


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_load(path):
    text = path.read_text()
    header = [line for line in text.splitlines()[:5] if line.startswith("#")]
    assert text.startswith("#") and any("ranksearch sweep search_spaces/" in line for line in header)
    data = yaml.safe_load(text)
    families = set(data.get("params", {}).get(FAMILY_PATH, {}).get("choices", []))
    families |= {data.get("base", {}).get("adapter", {}).get("family", "lora")}
    missing = families - set(family_names())
    if missing:  # families are registered by ranksearch.adapters; skip rather than fail while one is missing
        pytest.skip(f"families not registered yet: {sorted(missing)}")
    space = load_space(path)
    for family in space.families:
        cfg = space.trial_config(space.default_params(family))
        assert cfg.adapter.family == family


def test_quickstart_is_small():
    space = load_space(SPACES / "quickstart.yaml")
    cfg = space.trial_config()
    assert (
        cfg.data.task == "shapeworld"
        and cfg.model.name == "rs-tiny-clip"
        and cfg.model.pretrained == "shapeworld"
    )
    assert (
        space.spec.trials <= 8
        and space.spec.concurrency == 2
        # 300 steps of the tiny model: 8 trials, 2 at a time, took 74 s on 2 cores (README main job budget)
        and cfg.train.total_steps(cfg.data.shots) <= 400
    )


def test_json_schema_exports(tmp_path):
    schema = space_json_schema()
    assert {"params", "families", "objective", "sampler", "early_stopping"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    json.dumps(schema)
    import typer
    from typer.testing import CliRunner

    from ranksearch.sweep.commands import schema as schema_cmd

    app = typer.Typer()
    app.command()(schema_cmd)
    app.command("noop")(lambda: None)
    out = tmp_path / "s.json"
    result = CliRunner().invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["title"] == "ranksearch search space"


def test_overrides_fix_base_values_and_are_recorded_in_the_space_text():
    space = load_space(
        "search_spaces/dra.yaml", ["model.name=ViT-B-16", "model.pretrained=openai", "data.shots=4"]
    )
    config = space.trial_config(None)
    assert (config.model.name, config.model.pretrained, config.data.shots) == ("ViT-B-16", "openai", 4)
    assert config.adapter.family == "dra"
    reloaded = validate_space(yaml.safe_load(space.text))  # what a resumed sweep reads back
    assert reloaded.trial_config(None) == config


# ---- issue 15: space values validate used to accept (or crash on), each named by its field -------------------
def _valid() -> dict:
    return {
        "base": {"model": {"pretrained": None}},
        "params": {
            "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
            "adapter.r": [1, 2],
        },
        "objective": {"metric": "val/hm"},
    }


SPACE_REFUSED = [
    ({"sampler": {"type": "nsga2", "options": {"population_size": 1}}}, "sampler.options.population_size", "greater than or equal to 2"),
    ({"sampler": {"type": "qmc", "options": {"qmc_type": 1}}}, "sampler.options.qmc_type", "'sobol' or 'halton'"),
    ({"sampler": {"type": "qmc", "options": {"scramble": "yes"}}}, "sampler.options.scramble", "boolean"),
    ({"sampler": {"type": "random", "options": {"n_startup_trials": 5}}}, "sampler.options.n_startup_trials",
     "not an option of the random sampler"),
    ({"sampler": {"type": "tpe", "options": {"multivariate": False}}}, "sampler.options.group", "needs multivariate"),
    ({"sampler": {"seed": -1}}, "sampler.seed", "greater than or equal to 0"),
    ({"sampler": {"seed": 2**64}}, "sampler.seed", "less than or equal to 4294967295"),
    ({"seeds": True}, "seeds", "boolean"),
    ({"seeds": [1, 2**40]}, "seeds.1", "less than or equal to 4294967295"),
    ({"name": ""}, "name", "empty"),
    ({"name": "a/b"}, "name", "folder name"),
    ({"experiment": "team/x"}, "experiment", "'/'"),
    ({"objective": {"metric": "cl/average"}}, "objective.metric", "test split"),
    ({"objective": {"metric": "val/../test/hm"}}, "objective.metric", "test split"),
    ({"params": {"train.lr": {"type": "float", "low": 0.001, "high": 0.002, "step": 0.01}}}, "params[train.lr]",
     "larger than the range"),
    ({"params": {"train.lr": {"type": "float", "low": 0.001, "high": 0.01, "step": 0.004}}}, "params[train.lr]",
     "not a multiple"),
    ({"sampler": {"type": "grid"}, "params": {"train.lr": {"type": "float", "low": 0.0001, "high": 0.5001,
      "step": 1e-9}}}, "params[train.lr]", "more than 100,000 points"),
    ({"sampler": {"type": "grid"}, "params": {"data.split_seed": {"type": "int", "low": 0, "high": 10**9}}},
     "params[data.split_seed]", "more than 100,000 points"),
    ({"params": {1: [1, 2]}}, "params.1", "keys are text"),
    ({"base": {"model": {"pretrained": None}, "train": {"weight_decay": float("inf")}}},
     "base.train.weight_decay", "finite"),
    ({"params": {"train.lrr": [0.1]}}, "params[train.lrr]", "did you mean 'lr'"),
]  # fmt: skip


@pytest.mark.parametrize("change,field,words", SPACE_REFUSED, ids=[f for _, f, _ in SPACE_REFUSED])
def test_space_validation_refuses_what_it_used_to_accept(change, field, words):
    problems = problems_of({**_valid(), **change})
    assert field in problems and words in problems[field], problems
