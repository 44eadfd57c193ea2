"""Trial config: defaults, YAML round trip, overrides, and validation errors with field paths."""

from __future__ import annotations

import pytest
import yaml

from ranksearch.cli import main
from ranksearch.config import apply_overrides, dump_trial_config, load_trial_config, validate_trial_config
from ranksearch.config.load import load_yaml, parse_yaml
from ranksearch.config.schema import TrialConfig
from ranksearch.errors import ConfigError


def paths_of(err: ConfigError) -> set[str]:
    return {path for path, _ in err.problems}


def test_defaults_are_clip_lora():
    c = TrialConfig()
    assert (c.adapter.family, c.adapter.r, c.adapter.alpha, c.adapter.scaling, c.adapter.dropout) == (
        "lora",
        2,
        1.0,
        "sqrt",
        0.25,
    )
    assert (
        c.placement.towers == "both"
        and c.placement.matrices == ["q", "k", "v"]
        and c.placement.layers == "all"
    )
    assert (c.train.lr, c.train.weight_decay, c.train.batch_size, c.train.iterations_per_shot) == (
        2e-4,
        1e-2,
        32,
        500,
    )
    assert c.train.total_steps(16) == 8000


def test_yaml_round_trip(tmp_path):
    c = validate_trial_config({"adapter": {"family": "lora", "r": 8}, "placement": {"layers": [0, 1]}})
    path = tmp_path / "c.yaml"
    path.write_text(dump_trial_config(c))
    assert load_trial_config(path) == c


def test_all_errors_are_reported_at_once_with_field_paths():
    bad = {
        "adapter": {"family": "lora", "r": 0, "rank": 3},
        "train": {"lr": -1, "batch_size": "many"},
        "placement": {"layers": "middle", "matrices": ["q", "z"]},
        "bogus": 1,
    }
    with pytest.raises(ConfigError) as info:
        validate_trial_config(bad, source="x.yaml")
    assert paths_of(info.value) == {
        "adapter.r", "adapter.rank", "train.lr", "train.batch_size", "placement.layers", "placement.matrices.1", "bogus",
    }  # fmt: skip
    text = str(info.value)
    assert "7 problem(s) in x.yaml" in text and "'middle'" in text and "(got 0)" in text


def test_overrides_apply_and_are_typed():
    data = apply_overrides(
        {"train": {"lr": 1.0}}, ["train.lr=1e-3", "adapter.family=lora", "placement.matrices=[q, v]"]
    )
    assert data == {
        "train": {"lr": 1e-3},
        "adapter": {"family": "lora"},
        "placement": {"matrices": ["q", "v"]},
    }
    with pytest.raises(ConfigError):
        apply_overrides({}, ["no-equals-sign"])


def test_yaml_safety_limits(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(12)
    )
    with pytest.raises(ConfigError, match="aliases"):
        parse_yaml(bomb)
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_yaml("- a\n- b\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_yaml("a: [1, 2\n")
    with pytest.raises(ConfigError, match="tag"):
        parse_yaml("a: !!python/object/apply:os.system ['true']\n")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_yaml(binary)
    huge = tmp_path / "h.yaml"
    huge.write_text("a: " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="limit"):
        load_yaml(huge)


def test_validate_cli_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump({"adapter": {"family": "lora", "r": 4}}))
    bad.write_text(yaml.safe_dump({"adapter": {"family": "lora", "r": -4}, "train": {"lr": 0}}))
    with pytest.raises(SystemExit) as info:
        main(["validate", str(good), str(bad)])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert "adapter.r" in captured.err and "train.lr" in captured.err and "Traceback" not in captured.err
    assert main(["validate", str(good)]) is None


def test_cli_help_explains_itself(capsys):
    for argv in (["--help"], ["trial", "--help"], ["validate", "--help"]):
        assert main(argv) is None  # exit status 0
        text = capsys.readouterr().out
        assert "Example" in text and "ranksearch" in text


# ---- issue 15/11: what validate used to accept, each named by its field --------------------------------------
REFUSED = [
    ("seed: 010\n", "seed", "leading zero"),
    ("seed: 1:30\n", "seed", "base-60"),
    ("train: {augment: no}\n", "train.augment", "boolean in YAML 1.1"),
    ("train: {lr: !!float 1e-3}\n", "train.lr", "tag"),
    ("data: {task: !!binary aGk=}\n", "data.task", "tag"),
    ("data: {task: !!set {a}}\n", "data.task", "tag"),
    ("train: {weight_decay: .inf}\n", "train.weight_decay", "finite"),
    ("train: {eta_min: .nan}\n", "train.eta_min", "finite"),
    ('data: {task: "a\\0b"}\n', "data.task", "control character"),
    ('data: {task: "\\ud800"}\n', "data.task", "surrogate"),
    ("seed: 99999999999999999999\n", "seed", "less than or equal"),
    ("model: {device: gpu-please}\n", "model.device", "not a device"),
    ("data: {template: a photo of a thing}\n", "data.template", "exactly one"),
    ("data: {template: 'a {} {}'}\n", "data.template", "exactly one"),
    ("data: {template: 'a {} }'}\n", "data.template", "no other brace"),
    ("placement: {layers: [0, 7]}\n", "placement.layers", "out of range for rs-tiny-clip"),
    ("placement: {layers: 0-11}\n", "placement.layers", "out of range"),
    ("train: {iterations: 1e12}\n", "train.iterations", "less than or equal"),
    ("train: {iterations: 3}\neval: {evals: 4}\n", "eval.evals", "4 evaluations but only 3"),
    ("train: {iterations: 10, warmup_steps: 10}\n", "train.warmup_steps", "warm-up"),
    ("tracking: {experiment: ''}\n", "tracking.experiment", "empty"),
    ("tracking: {experiment: a/b}\n", "tracking.experiment", "'/'"),
    ("tracking: {run_name: ../../etc}\n", "tracking.run_name", "'/'"),
    ("seed: true\n", "seed", "boolean where a number"),
    ("family: lora\nfamily: dra\n", "family", "lines 1 and 2"),
    ("adapter: {family: lora, r: 2}\nadapter: {family: dra}\n", "adapter", "lines 1 and 2"),
    ("adapter: {family: lora, budget: {total_rank: 4, min_rank: 1}}\n", "adapter.budget.min_rank", "exceeds"),
    ("model: {name: ViT-B-61}\n", "model.name", "did you mean 'ViT-B-16'"),
    ("train: {lrr: 0.1}\n", "train.lrr", "did you mean 'lr'"),
    ("adapter: {family: lorra}\n", "adapter", "did you mean 'lora'"),
]


@pytest.mark.parametrize("text,field,words", REFUSED, ids=[f"{f}:{w}" for _, f, w in REFUSED])
def test_validate_refuses_what_it_used_to_accept(tmp_path, text, field, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_trial_config(path)
    assert any(p == field and words in m for p, m in info.value.problems), info.value.problems


@pytest.mark.parametrize("text", ["", "~", "# just a comment\n", "null\n"])
def test_an_empty_config_is_refused_not_all_defaults(tmp_path, capsys, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as info:
        main(["trial", str(path), "--no-track", "--out", str(tmp_path / "runs")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "empty" in err and str(path) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # no training started


def test_yaml_12_numbers_and_quoted_forms(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 1e-3, eta_min: 0}\ntracking: {experiment: '010', run_name: 'yes'}\n")
    config = load_trial_config(path)
    assert (
        config.train.lr == 1e-3 and config.tracking.experiment == "010" and config.tracking.run_name == "yes"
    )
    # what ranksearch writes, it reads back the same: strings that look like 1.1/1.2 numbers stay quoted
    again = tmp_path / "again.yaml"
    again.write_text(dump_trial_config(config))
    assert load_trial_config(again) == config


def test_every_numeric_field_has_both_bounds():
    """Every number a user sets has a range (huge values are refused, not discovered by a crashed trial)."""
    import typing

    import annotated_types

    from ranksearch.adapters.configs import family_configs
    from ranksearch.config.load import model_in

    exempt = {"train.logit_scale"}  # any positive finite scale; the divergence tests rely on 1e39 overflowing
    # ranges checked by the field's validator (tuples, 'auto' | number)
    exempt |= {"model.threads", "train.betas", "adapter[dra].group_fractions", "adapter[dra].group_ranks"}
    exempt |= {"train.crop_ratio"}
    missing = []

    def walk(cls, prefix):
        for name, f in cls.model_fields.items():
            sub = model_in(f.annotation)
            if sub is not None and not (cls is TrialConfig and name == "adapter"):
                walk(sub, f"{prefix}{name}.")
                continue
            args = set(typing.get_args(f.annotation) or (f.annotation,))
            if not args & {int, float} or bool in args or f"{prefix}{name}" in exempt:
                continue
            kinds = {type(m) for m in f.metadata}
            if not kinds & {annotated_types.Ge, annotated_types.Gt} or not kinds & {
                annotated_types.Le,
                annotated_types.Lt,
            }:
                missing.append(f"{prefix}{name}")

    walk(TrialConfig, "")
    for family, cls in family_configs().items():
        walk(cls, f"adapter[{family}].")
    assert not missing, missing
