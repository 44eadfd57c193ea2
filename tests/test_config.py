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
