"""Hostile and broken input (issue 7, item 5): every malformed config, space or file is rejected with a
``ConfigError`` naming the field path; the CLI exits 2 without a traceback; a rejected sweep creates nothing on
disk or in MLflow. Corrupt or truncated checkpoints and adapter files give a clear error.

Property-based (hypothesis): each example takes a valid trial config or search space and applies one drawn
mutation (wrong type, out-of-range value, unknown key, empty or inverted range, unknown family or module,
infeasible budget) whose field path is known, or draws a broken file (non-UTF-8, oversized, alias bomb,
Python tags, not a mapping, bad syntax).
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_report import record

from ranksearch.cli import main
from ranksearch.config.load import MAX_CONFIG_BYTES, validate_trial_config
from ranksearch.errors import AdapterError, ConfigError, TrialError
from ranksearch.space.load import validate_space

COUNTS = {"inputs": 0, "tried": 0, "tracebacks": 0, "created": 0, "corrupt": 0}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIG = {
    "model": {"name": "rs-tiny-clip", "pretrained": None},
    "data": {"task": "shapeworld", "shots": 2},
    "adapter": {"family": "lora", "r": 4},
    "placement": {"towers": "both", "layers": "all", "matrices": ["q", "v"]},
    "train": {"lr": 1e-3, "batch_size": 8, "iterations": 10},
    "eval": {"evals": 2},
}
SPACE = {
    "base": {"model": {"pretrained": None}},
    "params": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "adapter.r": [1, 2, 4],
    },
    "objective": {"metric": "val/hm", "mode": "max"},
    "trials": 4,
}

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
ident = st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True)
not_a_number = st.one_of(
    text.filter(lambda s: not _numeric(s)),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(ident, st.integers(), max_size=1),
)


def _numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return s.strip().lower() in ("true", "false", "")


def _set(data: dict, path: str, value) -> dict:
    out = copy.deepcopy(data)
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


# ---- trial-config mutations: (mutated mapping, the field path the error must name) --------------------------
config_mutations = st.one_of(
    # wrong types
    st.tuples(
        st.sampled_from(["train.lr", "train.batch_size", "eval.evals", "data.shots", "adapter.r"]),
        not_a_number,
    ).map(lambda t: (_set(CONFIG, t[0], t[1]), t[0])),
    st.tuples(
        st.sampled_from(["train", "eval", "placement", "data"]),
        st.one_of(text, st.integers(), st.lists(st.integers(), min_size=1, max_size=2)),
    ).map(lambda t: (_set(CONFIG, t[0], t[1]), t[0])),
    # out of range
    st.floats(max_value=0, allow_nan=False).map(lambda v: (_set(CONFIG, "train.lr", v), "train.lr")),
    st.floats(min_value=1.0001, allow_nan=False, allow_infinity=False).map(
        lambda v: (_set(CONFIG, "train.lr", v), "train.lr")
    ),
    st.integers(max_value=0).map(lambda v: (_set(CONFIG, "train.batch_size", v), "train.batch_size")),
    st.integers(min_value=10_001, max_value=10**9).map(
        lambda v: (_set(CONFIG, "data.shots", v), "data.shots")
    ),
    st.integers(max_value=0).map(lambda v: (_set(CONFIG, "eval.evals", v), "eval.evals")),
    st.floats(min_value=1.0, max_value=1e6).map(
        lambda v: (_set(CONFIG, "train.betas", [v, 0.9]), "train.betas")
    ),
    st.floats(max_value=0, allow_nan=False).map(
        lambda v: (_set(CONFIG, "train.max_memory_mb", v), "train.max_memory_mb")
    ),
    # unknown keys, at the root and in a section
    ident.filter(lambda k: k not in CONFIG and k != "seed").map(lambda k: (_set(CONFIG, k, 1), k)),
    st.tuples(
        st.sampled_from(["train", "eval", "model", "placement"]),
        ident.filter(
            lambda k: (
                k
                not in (
                    "lr",
                    "name",
                    "evals",
                    "towers",
                    "layers",
                    "matrices",
                    "batch_size",
                    "iterations",
                    "pretrained",
                )
            )
        ),
    ).map(lambda t: (_set(CONFIG, f"{t[0]}.{t[1]}_x", 1), f"{t[0]}.{t[1]}_x")),
    # unknown family, unknown module (matrix), impossible layer range
    text.filter(lambda s: s not in ("lora", "dra", "rlrr", "codyra", "adalora")).map(
        lambda f: (_set(CONFIG, "adapter", {"family": f}), "adapter")
    ),
    text.filter(lambda s: s not in ("q", "k", "v", "o", "fc", "proj")).map(
        lambda m: (_set(CONFIG, "placement.matrices", ["q", m]), "placement.matrices")
    ),
    st.tuples(st.integers(1, 50), st.integers(0, 49))
    .filter(lambda t: t[0] > t[1])
    .map(lambda t: (_set(CONFIG, "placement.layers", f"{t[0]}-{t[1]}"), "placement.layers")),
    # budgets no allocation can meet
    st.tuples(st.integers(1, 64), st.integers(2, 64))
    .filter(lambda t: t[0] < t[1])
    .map(
        lambda t: (
            _set(CONFIG, "adapter.budget", {"total_rank": 8, "min_rank": t[1], "max_rank": t[0]}),
            "adapter.budget",
        )
    ),
    st.tuples(st.floats(0.01, 1.0), st.floats(0.0, 0.99))
    .filter(lambda t: t[0] > t[1])
    .map(
        lambda t: (
            _set(CONFIG, "adapter.budget", {"total_rank": 8, "start_frac": t[0], "end_frac": t[1]}),
            "adapter.budget",
        )
    ),
    st.integers(0, 10**6).map(
        lambda v: (_set(CONFIG, "adapter.budget", {"total_rank": v, "total_params": v}), "adapter.budget")
    ),
)


# ---- search-space mutations ---------------------------------------------------------------------------------
def _param(name: str, spec) -> tuple[dict, str]:
    return _set(SPACE, "params", {**SPACE["params"], name: spec}), f"params[{name}]"


space_mutations = st.one_of(
    # empty and inverted ranges
    st.tuples(st.floats(1e-5, 1.0), st.floats(1e-6, 1.0))
    .filter(lambda t: t[0] > t[1])
    .map(lambda t: _param("train.lr", {"type": "float", "low": t[0], "high": t[1]})),
    st.tuples(st.integers(-100, 100), st.integers(-100, 100))
    .filter(lambda t: t[0] > t[1])
    .map(lambda t: _param("train.warmup_steps", {"type": "int", "low": t[0], "high": t[1]})),
    st.just(_param("adapter.r", [])),
    st.just(_param("adapter.r", {"type": "categorical", "choices": []})),
    # wrong types
    st.tuples(
        st.sampled_from(["trials", "concurrency"]), st.one_of(not_a_number, st.integers(max_value=0))
    ).map(lambda t: (_set(SPACE, t[0], t[1]), t[0])),
    not_a_number.map(lambda v: _param("train.lr", {"type": "float", "low": v, "high": 1.0})),
    st.one_of(text, st.integers()).map(lambda v: _param("train.lr", v)),
    # unknown keys and parameter paths; unknown families and samplers
    ident.filter(
        lambda k: (
            k not in SPACE
            and k
            not in (
                "families",
                "sampler",
                "early_stopping",
                "seeds",
                "name",
                "experiment",
                "resources",
                "objectives",
            )
        )
    ).map(lambda k: (_set(SPACE, k, 1), k)),
    ident.map(lambda k: _param(f"train.{k}_x", [1, 2])),
    ident.map(lambda k: _param(f"{k}_x.lr", [1, 2])),
    text.filter(lambda s: s not in ("lora", "dra", "rlrr", "codyra", "adalora")).map(
        lambda f: (
            _set(SPACE, "params", {**SPACE["params"], "adapter.family": ["lora", f]}),
            "params[adapter.family]",
        )
    ),
    text.filter(lambda s: s not in ("tpe", "gp", "cmaes", "nsga2", "random", "grid", "qmc")).map(
        lambda s: (_set(SPACE, "sampler", {"type": s}), "sampler.type")
    ),
    st.sampled_from(["max", "min"]).map(
        lambda m: (_set(SPACE, "objective", {"metric": "val/hm", "mode": m * 2}), "objective.mode")
    ),
    # out-of-range fixed values (base) and values outside what the field accepts
    st.integers(max_value=0).map(
        lambda v: (_set(SPACE, "base.train", {"batch_size": v}), "train.batch_size")
    ),
    st.tuples(st.floats(2.0, 10.0), st.floats(10.5, 100.0)).map(
        lambda t: _param("train.lr", {"type": "float", "low": t[0], "high": t[1]})
    ),
)


def _paths(e: ConfigError) -> list[str]:
    return [p for p, _ in e.problems]


def _names(expected: str, paths: list[str]) -> bool:
    """The error names the field: some problem path is (or ends with, or starts with) ``expected``."""
    return any(p == expected or p.endswith(expected) or p.startswith(expected) for p in paths)


def _cli(args: list[str]) -> tuple[int, str]:
    """Run ``ranksearch ARGS`` in-process: (exit status, everything it printed)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return code, buf.getvalue()


def _rejected_by_cli(path: Path, expected: str | None, kind: str) -> None:
    """``validate`` and ``sweep`` both exit 2 with the field path, print no traceback, create nothing."""
    root = path.parent
    storage, db = root / "runs", root / "mlflow.db"
    COUNTS["inputs"] += 1
    commands = [["validate", str(path)]]
    if kind == "space":
        commands.append(
            ["sweep", str(path), "--storage", str(storage), "--tracking-uri", f"sqlite:///{db}", "--no-live"]
        )
    for args in commands:
        code, out = _cli(args)
        COUNTS["tried"] += 1
        COUNTS["tracebacks"] += "Traceback" in out
        COUNTS["created"] += storage.exists() or db.exists()
        assert code == 2, (args, out)
        assert "Traceback" not in out, out
        assert expected is None or expected in out or expected.split(".")[-1] in out, (expected, out)
        assert not storage.exists() and not db.exists(), "a rejected sweep created files"


@FAST
@given(config_mutations)
def test_malformed_trial_configs_name_the_field(case):
    data, expected = case
    with pytest.raises(ConfigError) as info:
        validate_trial_config(data)
    assert _names(expected, _paths(info.value)), (expected, info.value.problems)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trial.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        _rejected_by_cli(path, expected, "trial")


@FAST
@given(space_mutations)
def test_malformed_search_spaces_name_the_field(case):
    data, expected = case
    with pytest.raises(ConfigError) as info:
        validate_space(data)
    assert _names(expected, _paths(info.value)), (expected, info.value.problems)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "space.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        _rejected_by_cli(path, None, "space")


def _bomb(width: int, depth: int) -> bytes:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    lines += ["params: {adapter.r: [1, 2]}", "objective: {metric: val/hm}"]
    return "\n".join(lines).encode()


broken_files = st.one_of(
    st.binary(min_size=1, max_size=64).map(
        lambda b: b"params: {adapter.r: [1]}\n# " + b + b"\xff\xfe\n"
    ),  # not UTF-8
    st.integers(1, 64).map(lambda n: b"params: {}\n#" + b"x" * (MAX_CONFIG_BYTES + n)),  # over the size cap
    st.tuples(st.integers(5, 12), st.integers(4, 9))
    .filter(lambda t: t[0] * t[1] > 100)
    .map(lambda t: _bomb(*t)),
    st.sampled_from(
        [
            b"a: !!python/object/apply:os.system ['echo pwned > /tmp/ranksearch-pwned']\n",
            b"a: !!python/name:os.system\n",
            b"- params\n- objective\n",  # not a mapping
            b"just a string\n",
            b"params: {adapter.r: [1, 2\n",  # bad syntax
            b"params:\n  adapter.r: [1, 2]\n   bad-indent: 1\n",
            b"\x00\x01\x02",
        ]
    ),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_files)
def test_broken_files_are_rejected_cleanly(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "space.yaml"
        path.write_bytes(content)
        _rejected_by_cli(path, None, "space")
    assert not Path("/tmp/ranksearch-pwned").exists()


# ---- corrupt checkpoints and adapter files --------------------------------------------------------------------
def _trial_checkpoint(folder: Path) -> Path:
    import json

    import torch

    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"replicate": 0, "done": [], "final": None}))
    torch.save({"step": 10, "adapter": {"w": torch.zeros(3)}}, folder / "state.pt")
    return folder


@pytest.mark.parametrize(
    "damage",
    ["truncate-state", "garbage-state", "pickle-code", "missing-meta", "garbage-meta", "wrong-meta"],
)
def test_corrupt_checkpoints_give_a_clear_error(tmp_path, damage):
    import pickle

    from ranksearch.sweep.trainable import load_checkpoint

    ckpt = _trial_checkpoint(tmp_path / "ckpt")
    meta, state = load_checkpoint(ckpt)
    assert state["step"] == 10
    state_file, meta_file = ckpt / "state.pt", ckpt / "meta.json"
    if damage == "truncate-state":
        state_file.write_bytes(state_file.read_bytes()[:100])
    elif damage == "garbage-state":
        state_file.write_bytes(b"\x00garbage" * 50)
    elif damage == "pickle-code":  # a checkpoint that would run code under torch.load(weights_only=False)
        state_file.write_bytes(pickle.dumps(eval_os_system()))
    elif damage == "missing-meta":
        meta_file.unlink()
    elif damage == "garbage-meta":
        meta_file.write_bytes(b"\xff{not json")
    else:
        meta_file.write_text('{"step": 3}')
    with pytest.raises(TrialError) as info:
        load_checkpoint(ckpt)
    msg = str(info.value)
    assert ("state.pt" in msg or "meta.json" in msg) and "cannot resume" in msg and "Traceback" not in msg
    assert not Path("/tmp/ranksearch-pwned").exists()
    COUNTS["corrupt"] += 1


class eval_os_system:  # noqa: N801  (a pickle payload, named for what it would do)
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/ranksearch-pwned",))


def _adapted(r: int):
    """The tiny model with a LoRA adapter of rank ``r`` on q and v."""
    from ranksearch.config.load import validate_trial_config
    from ranksearch.session import TrialSession

    config = validate_trial_config(_set(_set(CONFIG, "adapter.r", r), "model.device", "cpu"))
    return TrialSession(config, 4).model


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "empty", "other-rank"])
def test_corrupt_adapter_files_are_clear_errors(tmp_path, damage):
    from ranksearch.adapters.io import load_adapter, save_adapter

    model = _adapted(4)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    load_adapter(model, path)  # the intact file loads
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x7f\x00\x00\x00\x00\x00\x00\x00{garbage")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        save_adapter(_adapted(2), path)
    with pytest.raises(AdapterError) as info:
        load_adapter(model, path)
    msg = str(info.value)
    # the file is named, except for a shape mismatch, which names the tensor and both shapes instead
    assert (str(path) in msg or ("shape" in msg and "!=" in msg)) and "Traceback" not in msg, msg
    COUNTS["corrupt"] += 1


def test_zz_record_the_figures():
    """Runs last in this module (file order): write the counts for docs/reliability.md."""
    record(
        "hostile_input",
        count=f"{COUNTS['inputs']} inputs, {COUNTS['tried']} CLI runs",
        failed_recorded=f"{COUNTS['tried']} rejected (exit 2)",
        duplicates=0,
        lost_points=0,
        tracebacks=COUNTS["tracebacks"],
        created_on_disk=COUNTS["created"],
    )
    record(
        "corrupt_files",
        count=COUNTS["corrupt"],
        failed_recorded=f"{COUNTS['corrupt']} clear errors",
        duplicates=0,
        lost_points=0,
        tracebacks=0,
    )
    assert COUNTS["tracebacks"] == 0 and COUNTS["created"] == 0
