"""Property-based hostile input (issue 15): YAML forms, the schema's fields and the CLI's arguments.

Every case is drawn by hypothesis (derandomized, fixed example counts: the module runs in seconds), run through
the library and through the CLI in this process under a watchdog (``SIGALRM``: a read that blocks is a *hang*,
not a stuck test), and classified:

* **clean**: a ``ConfigError`` whose problem names the field (or ``<file>``), and ``ranksearch`` exits 2 with
  one line that names the field or argument, no traceback, no "internal error";
* **traceback**: any other exception, or a traceback / internal error printed;
* **hang**: the watchdog fired;
* **accepted**: the hostile input passed (a silent acceptance);
* **unclear**: rejected, but not with exit 2 and a message naming the field.

Only "clean" passes. Valid counterparts (quoted forms, in-range values) must be accepted. The tallies feed the
config/CLI rows of ``docs/reliability.md`` (``tests/hostile_report.py``).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import string
import tempfile
from pathlib import Path

import annotated_types
import pytest
from hostile_report import count, counts, flush
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranksearch.cli import main
from ranksearch.config.load import (
    MAX_ALIASES,
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_STRING,
    dump_yaml,
    load_trial_config,
    model_in,
)
from ranksearch.errors import ConfigError
from ranksearch.space.load import load_space

BUDGET = settings(
    max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
SMALL = settings(BUDGET, max_examples=60)
WATCHDOG_S = 20
SCRATCH = Path(tempfile.mkdtemp(prefix="rs-hostile-"))


@pytest.fixture(scope="module", autouse=True)
def _remove_scratch():
    yield
    import shutil

    shutil.rmtree(SCRATCH, ignore_errors=True)


class _Hang(Exception):
    pass


@contextlib.contextmanager
def watchdog(seconds: float = WATCHDOG_S):
    """Raise ``_Hang`` in this (main) thread if the block takes longer than ``seconds``."""

    def fire(signum, frame):
        raise _Hang

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(args: list[str]) -> tuple[str, int, str]:
    """Run ``ranksearch ARGS`` here: (outcome kind so far, exit status, everything printed)."""
    buf = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            with watchdog():
                main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except _Hang:
            return "hang", -1, buf.getvalue()
        except BaseException as e:  # noqa: BLE001  (anything escaping main is a traceback for the user)
            return "traceback", -1, f"{buf.getvalue()}\n{type(e).__name__}: {e}"
    text = buf.getvalue()
    if "Traceback" in text or "internal error" in text:
        return "traceback", code, text
    return "ran", code, text


def classify(category: str, args: list[str], names: str | list[str], one_line: bool = True) -> str:
    """Run the CLI on a hostile case and tally its outcome; returns it (the test asserts "clean")."""
    kind, code, text = run_cli(args)
    if kind == "ran":
        lines = [line for line in text.splitlines() if line.strip()]
        wanted = [names] if isinstance(names, str) else names
        if code == 0:
            kind = "accepted"
        elif code == 2 and any(n in text for n in wanted) and (not one_line or len(lines) == 1):
            kind = "clean"
        else:
            kind = "unclear"
    count(category, kind)
    return f"{kind}: {args} -> exit {code}\n{text[-3000:]}"


def library(category: str, load, path: Path, field: str | list[str]) -> tuple[bool, str]:
    """The library call alone: a ConfigError naming ``field`` (a path prefix) is clean."""
    wanted = [field] if isinstance(field, str) else field
    try:
        with watchdog():
            load(path)
    except ConfigError as e:
        paths = [p for p, _ in e.problems]
        ok = any(
            p == f or p.startswith((f + ".", f + "[", f + ":")) or f in m
            for p, m in e.problems
            for f in wanted
        )
        return ok, f"problems {e.problems} (wanted {wanted}); paths {paths}"
    except _Hang:
        return False, "hang"
    except Exception as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {e}"
    return False, "accepted"


# ================================================================================================ YAML forms
TRIAL_SECTIONS = {
    "model": {"name": "rs-tiny-clip", "pretrained": None, "device": "cpu"},
    "data": {"task": "shapeworld", "shots": 2},
    "adapter": {"family": "lora", "r": 4},
    "train": {"lr": 0.001, "batch_size": 8, "iterations": 10, "augment": True},
    "eval": {"evals": 2},
    "tracking": {"enabled": False, "experiment": "hostile"},
}
# (section, key): slots a hostile value is written into; "seed" lives at the root
SLOTS = [
    (None, "seed"), ("train", "lr"), ("train", "batch_size"), ("data", "shots"), ("train", "augment"),
    ("data", "task"), ("tracking", "experiment"), ("model", "device"), ("adapter", "r"),
]  # fmt: skip


def trial_yaml(slot: tuple[str | None, str] | None = None, raw: str | None = None, extra: str = "") -> str:
    """A valid trial config in block style, with ``raw`` written verbatim as the value of ``slot``."""
    lines = []
    if slot == (None, "seed"):
        lines.append(f"seed: {raw}")
    for section, fields in TRIAL_SECTIONS.items():
        lines.append(f"{section}:")
        for key, value in fields.items():
            text = raw if slot == (section, key) else dump_yaml(value).strip().removesuffix("...").strip()
            lines.append(f"  {key}: {text}")
    return "\n".join(lines) + "\n" + extra


def slot_path(slot: tuple[str | None, str]) -> str:
    return slot[1] if slot[0] is None else f"{slot[0]}.{slot[1]}"


def write(name: str, content: str | bytes) -> Path:
    path = SCRATCH / name
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogatepass")
    path.write_bytes(content)
    return path


ident = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
bool11 = st.sampled_from(["yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"])
leading_zero = st.integers(0, 10**6).map(lambda n: f"0{n}")
sexagesimal = st.tuples(st.integers(0, 999), st.integers(0, 59)).map(lambda t: f"{t[0]}:{t[1]:02d}")
prefixed = st.tuples(st.sampled_from(["0x{:x}", "0o{:o}", "0b{:b}", "0X{:X}"]), st.integers(0, 10**6)).map(
    lambda t: t[0].format(t[1])
)
underscored = st.tuples(st.integers(1, 999), st.integers(0, 999)).map(lambda t: f"{t[0]}_{t[1]:03d}")
tags = st.sampled_from(
    ["!!binary aGVsbG8=", "!!set {a, b}", "!!float 1", "!!int 3", "!!str x", "!!timestamp 2001-12-14",
     "!!python/name:os.system", "!!python/object/apply:os.system ['true']", "!local x",
     "!<tag:yaml.org,2002:str> x", "!!omap [a: 1]", "!!null ''", "!!bool true", "!!merge x"]
)  # fmt: skip
non_finite = st.sampled_from([".inf", "-.inf", "+.INF", ".NaN", ".nan", "-.Inf", "1e999", "-1e400", ".NAN"])
CONTROL_ESCAPES = ["\\0", "\\a", "\\b", "\\e", "\\v", "\\f", "\\x01", "\\x1f", "\\x7f", "\\x85", "\\x9f"]
bad_text = st.tuples(
    st.text(string.ascii_letters, max_size=5),
    st.one_of(
        st.sampled_from(CONTROL_ESCAPES),
        st.integers(0xD800, 0xDFFF).map(lambda c: f"\\u{c:04x}"),
        st.integers(1, 0x1F).filter(lambda c: c not in (9, 10, 13)).map(lambda c: f"\\x{c:02x}"),
    ),
    st.text(string.ascii_letters, max_size=5),
).map(lambda t: f'"{t[0]}{t[1]}{t[2]}"')
huge_int = st.integers(MAX_INT_DIGITS + 1, 400).map(lambda n: "9" * n)
long_text = st.integers(1, 64).map(lambda n: "x" * (MAX_STRING + n))
deep = st.tuples(st.integers(MAX_DEPTH + 1, 3000), st.booleans()).map(
    lambda t: "[" * t[0] + "]" * t[0] if t[1] else "{a: " * t[0] + "1" + "}" * t[0]
)
hostile_values = st.one_of(
    bool11,
    leading_zero,
    sexagesimal,
    prefixed,
    underscored,
    tags,
    non_finite,
    bad_text,
    huge_int,
    long_text,
    deep,
)


@BUDGET
@given(st.sampled_from(SLOTS), hostile_values)
def test_hostile_yaml_values_are_refused_at_their_field(slot, raw):
    path = write("values.yaml", trial_yaml(slot, raw))
    field = slot_path(slot)
    ok, why = library("yaml_values", load_trial_config, path, field)
    result = classify("yaml_values", ["validate", str(path)], field)
    assert ok, (raw[:80], why)
    assert result.startswith("clean"), result


def _bomb(width: int, depth: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


documents = st.one_of(
    # duplicate keys: a field twice, a section twice
    st.sampled_from([s for s in SLOTS if s[0]]).map(
        lambda s: (trial_yaml().replace(f"{s[0]}:\n", f"{s[0]}:\n  {s[1]}: 1\n", 1), slot_path(s))
    ),
    st.sampled_from(list(TRIAL_SECTIONS)).map(lambda s: (trial_yaml() + f"{s}: {{}}\n", s)),
    # keys that are not text, complex keys, merge keys
    st.tuples(
        st.sampled_from(["1", "true", "null", "1.5", "~", "-3", "0x1"]), st.sampled_from(list(TRIAL_SECTIONS))
    ).map(lambda t: (trial_yaml().replace(f"{t[1]}:\n", f"{t[1]}:\n  {t[0]}: x\n", 1), t[1])),
    st.sampled_from(list(TRIAL_SECTIONS)).map(
        lambda s: (trial_yaml().replace(f"{s}:\n", f"{s}:\n  ? [a, b]\n  : 1\n", 1), s)
    ),
    st.just((trial_yaml().replace("train:\n", "train:\n  <<: {lr: 0.1}\n", 1), "train")),
    # aliases: bombs (under and over the alias cap), recursive, undefined
    st.tuples(st.integers(6, 10), st.integers(6, 11))
    .filter(lambda t: t[0] * (t[1] - 1) <= MAX_ALIASES and t[0] ** t[1] > 100_000)
    .map(lambda t: (trial_yaml(extra=_bomb(*t)), "alias")),
    st.tuples(st.integers(12, 40), st.integers(10, 12)).map(lambda t: (trial_yaml(extra=_bomb(*t)), "alias")),
    st.just((trial_yaml(extra="x: &r [1, *r]\n"), "x")),
    st.just((trial_yaml(extra="x: &r {a: *r}\n"), "x")),
    ident.map(lambda a: (trial_yaml(extra=f"x: *{a}\n"), "x")),
    # document structure
    st.just((trial_yaml() + "---\nseed: 2\n", "<file>")),
    st.sampled_from(["", "~", "null", "# only a comment\n", "---\n...\n", "\n\n", "NULL\n"]).map(
        lambda t: (t, "<file>")
    ),
    st.sampled_from(["- a\n- b\n", "just text\n", "42\n", "[1, 2]\n", "true\n", "'quoted'\n"]).map(
        lambda t: (t, "<root>")
    ),
    st.sampled_from(
        ["train: {lr: 0.1\n", "train:\n\tlr: 0.1\n", "train: 'open\n", "a: b: c\n", "[a\n", "{\n"]
    ).map(lambda t: (t, "<file>")),
    st.binary(min_size=1, max_size=40).map(lambda b: (b"seed: 1\n# " + b + b"\xff\xfe\xc3\n", "<file>")),
    st.integers(0, 60).map(lambda n: (b"seed: 1\n" + b"x" * n + b"\x00\n", "<file>")),
    st.integers(1, 64).map(lambda n: (b"seed: 1\n#" + b"x" * (MAX_CONFIG_BYTES + n), "<file>")),
)


@SMALL
@given(documents)
def test_hostile_yaml_documents_are_refused(case):
    content, field = case
    path = write("document.yaml", content)
    ok, why = library("yaml_documents", load_trial_config, path, field)
    names = [str(path)] if field in ("<file>", "<root>") else [field]
    if field == "alias":
        names = ["alias"]
    result = classify(
        "yaml_documents", ["validate", str(path)], names + ["<root>"], one_line=field != "<file>"
    )
    assert ok, (content[:120], why)
    assert result.startswith("clean"), result


quoted_forms = st.one_of(bool11, leading_zero, sexagesimal, prefixed, underscored, st.just("2001-12-14")).map(
    lambda v: f"'{v}'"
)


@SMALL
@given(st.sampled_from([("tracking", "experiment"), ("data", "task")]), quoted_forms)
def test_quoted_forms_are_plain_text(slot, raw):
    """The valid counterpart: quoted, every ambiguous form is text and is accepted as such."""
    path = write("quoted.yaml", trial_yaml(slot, raw))
    config = load_trial_config(path)
    section = getattr(config, slot[0])
    assert getattr(section, slot[1]) == raw.strip("'")
    kind, code, text = run_cli(["validate", str(path)])
    count("valid_controls", "accepted" if (kind, code) == ("ran", 0) else "clean" if code == 2 else kind)
    assert (kind, code) == ("ran", 0), text


# ============================================================================================= schema fields
def _numeric_fields() -> list[tuple[str, type, list]]:
    """(dotted path, int or float, the field's annotated_types bounds) for every numeric trial-config field."""
    import typing

    from ranksearch.adapters.configs import family_configs
    from ranksearch.config.schema import TrialConfig

    out = []

    def walk(cls, prefix):
        for name, f in cls.model_fields.items():
            if name == "adapter" and cls is TrialConfig:
                continue
            sub = model_in(f.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
                continue
            args = set(typing.get_args(f.annotation) or (f.annotation,))
            kind = int if int in args else float if float in args else None
            if kind is not None and bool not in args:
                out.append((prefix + name, kind, list(f.metadata)))

    walk(TrialConfig, "")
    for family, cls in family_configs().items():
        walk(cls, f"adapter[{family}].")
    return out


NUMERIC = _numeric_fields()
LITERALS = {"vision", "text", "both", "base2new", "fewshot", "fp32", "amp", "sqrt", "linear"}


def _bound_breakers(kind: type, meta: list) -> st.SearchStrategy:
    """Values just or far outside a field's declared bounds, plus values of the wrong kind."""
    options = [
        st.just(True),
        st.just(False),
        st.text(string.ascii_letters, min_size=1, max_size=6),
        st.just([1]),
    ]
    if kind is float:
        options.append(st.sampled_from([float("inf"), float("-inf"), float("nan")]))
    else:
        options.append(st.floats(0.1, 0.9).map(lambda x: x + 3))  # a fraction where an integer is meant
    for m in meta:
        if isinstance(m, annotated_types.Ge):
            options.append(
                st.floats(1e-9, 1e6).map(
                    lambda d, b=m.ge: b - abs(b) * 1e-6 - d if kind is float else b - 1 - int(d)
                )
            )
        if isinstance(m, annotated_types.Gt):
            options.append(st.floats(0, 1e6).map(lambda d, b=m.gt: b - d if kind is float else b - int(d)))
        if isinstance(m, annotated_types.Le):
            options.append(
                st.floats(1e-6, 1e15).map(
                    lambda d, b=m.le: b + abs(b) * 1e-6 + d if kind is float else b + 1 + int(d)
                )
            )
        if isinstance(m, annotated_types.Lt):
            options.append(st.floats(0, 1e15).map(lambda d, b=m.lt: b + d if kind is float else b + int(d)))
    return st.one_of(options)


def _set_path(config: dict, path: str, value) -> tuple[dict, str]:
    """``config`` with ``path`` set; "adapter[dra].scale" switches the family. Returns (config, field path)."""
    import copy

    out = copy.deepcopy(config)
    if path.startswith("adapter["):
        family, rest = path[len("adapter[") :].split("].", 1)
        out["adapter"] = {"family": family}
        path = f"adapter.{rest}"
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out, path


numeric_mutations = st.sampled_from(NUMERIC).flatmap(
    lambda f: _bound_breakers(f[1], f[2]).map(lambda v, p=f[0]: _set_path(TRIAL_SECTIONS, p, v))
)
text_mutations = st.one_of(
    st.tuples(
        st.sampled_from(["tracking.experiment", "tracking.run_name"]),
        st.sampled_from(["", " ", "a/b", "../x", "..", ".", "a\\b", " lead", "trail ", "x" * 300]),
    ),
    st.tuples(
        st.just("data.template"),
        st.sampled_from(["a photo", "a {} of {}", "{0}", "a {x}", "{}}", "{{}}", "a }{ b", "{} {"]),
    ),
    st.tuples(
        st.just("model.device"),
        st.text(string.ascii_letters + ":0123456789", min_size=1, max_size=8).filter(
            lambda d: (
                d not in ("auto", "cpu", "mps", "cuda") and not (d.startswith("cuda:") and d[5:].isdigit())
            )
        ),
    ),
    st.tuples(
        st.just("model.name"), st.sampled_from(["ViT-B-61", "vit-b-16", "rs-tiny", "", "../x", "RN-50"])
    ),
    st.tuples(
        st.just("placement.layers"),
        st.one_of(
            st.integers(3, 9999).map(lambda b: f"0-{b}"),
            st.lists(st.integers(2, 5000), min_size=1, max_size=3),
            st.sampled_from(["bottom", "middle", "0-", "-1", "3-1", "99999999999-1"]),
        ),
    ),
    st.tuples(
        st.sampled_from(["placement.towers", "data.protocol", "model.precision", "adapter.scaling"]),
        st.text(string.ascii_letters, min_size=1, max_size=8).filter(lambda v: v not in LITERALS),
    ),
).map(lambda t: _set_path(TRIAL_SECTIONS, t[0], t[1]))


def _cross(iterations: int, extra: int, which: str) -> tuple[dict, str]:
    train = {**TRIAL_SECTIONS["train"], "iterations": iterations}
    base = {**TRIAL_SECTIONS, "train": train}
    if which == "evals":
        return {**base, "eval": {"evals": iterations + extra}}, "eval.evals"
    if which == "warmup":
        return {**base, "train": {**train, "warmup_steps": iterations + extra - 1}}, "train.warmup_steps"
    if which == "eta_min":
        return {**base, "train": {**train, "lr": 1e-4, "eta_min": 1e-4 * (1 + extra)}}, "train.eta_min"
    train = {k: v for k, v in train.items() if k != "iterations"}
    return {
        **base,
        "train": {**train, "iterations_per_shot": 10**7 // 2 + extra},
    }, "train.iterations_per_shot"


cross_mutations = st.tuples(
    st.integers(1, 50), st.integers(1, 50), st.sampled_from(["evals", "warmup", "eta_min", "steps"])
).map(lambda t: _cross(*t))


@BUDGET
@given(st.one_of(numeric_mutations, text_mutations, cross_mutations))
def test_trial_fields_out_of_range_name_the_field(case):
    data, field = case
    path = write("fields.yaml", dump_yaml(data))
    ok, why = library("trial_fields", load_trial_config, path, field)
    result = classify("trial_fields", ["validate", str(path)], field, one_line=False)
    assert ok, (data, why)
    assert result.startswith("clean"), result


SPACE = {
    "base": {"model": {"pretrained": None}, "train": {"iterations": 20}, "tracking": {"enabled": False}},
    "params": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "adapter.r": [1, 2, 4],
    },
    "objective": {"metric": "val/hm", "mode": "max"},
    "trials": 4,
}
SAMPLER_BAD = {
    "tpe": {"n_startup_trials": [-1, "10", 1.5, True], "n_ei_candidates": [0, "x"], "multivariate": ["yes", 1],
            "prior_weight": [0, -1.0, "x"], "group": [1, "on"]},
    "gp": {"n_startup_trials": [-5, "ten"], "deterministic_objective": ["no", 0]},
    "cmaes": {"sigma0": [0, -1.0, "big"], "popsize": [1, 0, "x"], "with_margin": ["true", 1]},
    "nsga2": {"population_size": [1, 0, -3, "50", 2.5], "mutation_prob": [-0.1, 1.5, "x"],
              "crossover_prob": [1.01, -1], "swapping_prob": [2, "half"]},
    "qmc": {"qmc_type": [3, "sobel", "halton2", True], "scramble": ["yes", 1, "true"]},
    "random": {}, "grid": {},
}  # fmt: skip


def _space(**changes) -> dict:
    import copy

    out = copy.deepcopy(SPACE)
    out.update(changes)
    return out


sampler_mutations = st.one_of(
    st.sampled_from([(t, k, v) for t, opts in SAMPLER_BAD.items() for k, vs in opts.items() for v in vs]).map(
        lambda c: (_space(sampler={"type": c[0], "options": {c[1]: c[2]}}), f"sampler.options.{c[1]}")
    ),
    st.tuples(st.sampled_from(list(SAMPLER_BAD)), ident.map(lambda k: k + "_x")).map(
        lambda c: (_space(sampler={"type": c[0], "options": {c[1]: 1}}), f"sampler.options.{c[1]}")
    ),
    st.just((_space(sampler={"type": "tpe", "options": {"multivariate": False}}), "sampler.options.group")),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), st.just(True), st.just("seed")).map(
        lambda s: (_space(sampler={"type": "tpe", "seed": s}), "sampler.seed")
    ),
)
space_value_mutations = st.one_of(
    st.one_of(
        st.just(True),
        st.just(1),
        st.just("1,2"),
        st.lists(st.integers(-10, -1), min_size=1, max_size=2),
        st.lists(st.integers(2**32, 2**40), min_size=1, max_size=2),
        st.just([1, 1]),
        st.just([]),
        st.just([True, 2]),
    ).map(lambda s: (_space(seeds=s), "seeds")),
    st.sampled_from(["", " ", "a/b", "../x", "..", ".x", "a b", "x" * 101, "-x", "über"]).map(
        lambda n: (_space(name=n), "name")
    ),
    st.sampled_from(["", "a/b", "..", " x"]).map(lambda n: (_space(experiment=n), "experiment")),
    st.sampled_from(
        [
            "test/hm",
            "zs/test/acc",
            "cl/average",
            "cl/last",
            "./test/hm",
            "val/../test/hm",
            "TEST/hm",
            "test/cross/avg",
            "zs/cl/transfer",
            "",
            " ",
            "val/ hm",
            "test\\hm",
        ]
    ).map(lambda m: (_space(objective={"metric": m}), "objective.metric")),
    st.tuples(st.floats(1e-3, 1e-2), st.floats(1.5, 100)).map(
        lambda t: (
            _space(
                params={"train.lr": {"type": "float", "low": t[0], "high": t[0] * 1.1, "step": t[0] * t[1]}}
            ),
            "params[train.lr]",
        )
    ),
    st.tuples(st.integers(0, 10), st.sampled_from([3, 4, 6, 7])).map(
        lambda t: (
            _space(
                params={"train.warmup_steps": {"type": "int", "low": t[0], "high": t[0] + 10, "step": t[1]}}
            ),
            "params[train.warmup_steps]",
        )
    ),
    st.integers(6, 12).map(
        lambda k: (
            _space(
                sampler={"type": "grid"},
                params={"train.lr": {"type": "float", "low": 0.0001, "high": 0.5001, "step": 0.5 / 10**k}},
            ),
            "params[train.lr]",
        )
    ),
    st.integers(10**5, 2**32 - 1).map(
        lambda h: (
            _space(
                sampler={"type": "grid"}, params={"data.split_seed": {"type": "int", "low": 0, "high": h}}
            ),
            "params[data.split_seed]",
        )
    ),
    st.tuples(
        st.sampled_from(["trials", "concurrency"]), st.sampled_from([0, -1, 10**6, True, "many", 2.5])
    ).map(lambda t: (_space(**{t[0]: t[1]}), t[0])),
    st.tuples(st.sampled_from(["gpu", "cpu"]), st.sampled_from([-1, 1e9, float("inf"), "two", True, 1.5]))
    .filter(lambda t: not (t[0] == "cpu" and t[1] == 1.5))
    .map(lambda t: (_space(resources={t[0]: t[1]}), f"resources.{t[0]}")),
    st.sampled_from(
        [("reduction_factor", 1), ("reduction_factor", 1000), ("grace_period", 0), ("grace_period", True)]
    ).map(lambda t: (_space(early_stopping={t[0]: t[1]}), f"early_stopping.{t[0]}")),
    st.sampled_from([float("inf"), float("nan")]).map(
        lambda v: (
            _space(base={**SPACE["base"], "train": {"iterations": 20, "eta_min": v}}),
            "base.train.eta_min",
        )
    ),
)


@BUDGET
@given(st.one_of(sampler_mutations, space_value_mutations))
def test_space_fields_out_of_range_name_the_field(case):
    data, field = case
    path = write("space.yaml", dump_yaml(data))
    ok, why = library("space_fields", load_space, path, field)
    result = classify("space_fields", ["validate", str(path)], field, one_line=False)
    assert ok, (data, why)
    assert result.startswith("clean"), result


def test_numeric_parameter_keys_are_refused_from_python_too():
    """A dict built in Python can have an int key where YAML cannot (the loader refuses ``1:``)."""
    from ranksearch.space.load import validate_space

    with pytest.raises(ConfigError) as info:
        validate_space(_space(params={1: [1, 2], "adapter.r": [1, 2]}))
    assert info.value.problems[0][0] == "params.1"
    count("space_fields", "clean")


# =========================================================================================== CLI arguments
COMMANDS = ["trial", "validate", "pretrain", "families", "sweep", "schema", "prepare-data", "export", "report", "ui",
            "status", "best"]  # fmt: skip
GOOD_SPACE = write("good-space.yaml", dump_yaml(SPACE))
GOOD_TRIAL = write("good-trial.yaml", trial_yaml())


def _edits(word: str) -> st.SearchStrategy:
    """One-character typos of ``word``."""
    return st.tuples(
        st.integers(0, len(word)), st.sampled_from(string.ascii_lowercase), st.sampled_from("ids")
    ).map(
        lambda t: (
            (word[: t[0]] + t[1] + word[t[0] :])
            if t[2] == "i"
            else (word[: t[0]] + word[t[0] + 1 :])
            if t[2] == "d"
            else (word[: t[0]] + t[1] + word[t[0] + 1 :])
        )
    )


def _special_files() -> list[tuple[str, str]]:
    fifo = SCRATCH / "config.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    sparse = SCRATCH / "huge.yaml"
    with open(sparse, "wb") as f:  # sparse: 2 GiB on paper, nothing on disk
        f.truncate(2 << 30)
    loop = SCRATCH / "loop.yaml"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    return [
        (str(fifo), "FIFO"), ("/dev/zero", "device"), ("/dev/null", "device"), ("/dev/urandom", "device"),
        (str(SCRATCH), "folder"), (str(sparse), "limit"), (str(loop), str(loop)),
        (str(GOOD_TRIAL / "x.yaml"), "does not exist"), (str(SCRATCH / "missing.yaml"), "does not exist"),
        (str(SCRATCH / "caf\udce9.yaml"), "does not exist"),
    ]  # fmt: skip


SPECIAL = _special_files()
STORAGE = SCRATCH / "sweeps"
cli_cases = st.one_of(
    st.sampled_from(COMMANDS)
    .flatmap(_edits)
    .filter(lambda w: w not in COMMANDS and w.strip() and not w.startswith("-"))
    .map(lambda w: ([w, "x"], "No such command")),
    st.tuples(
        st.sampled_from(["status", "best", "report", "validate", "trial", "sweep", "export"]), ident
    ).map(lambda t: ([t[0], f"--{t[1]}-x", "x"], f"--{t[1]}-x")),
    st.sampled_from(["--jsn", "--quite", "--storag", "--tracking-ur", "--deb"]).map(
        lambda o: (["status", "x", o], o)
    ),
    st.sampled_from(["trial", "validate", "sweep", "prepare-data", "report", "status", "best"]).map(
        lambda c: ([c], "Missing")
    ),
    st.tuples(
        st.sampled_from(
            [
                ["sweep", str(GOOD_SPACE), "--gpus"],
                ["sweep", str(GOOD_SPACE), "--trials"],
                ["report", "x", "--top"],
                ["ui", "x", "--port"],
            ]
        ),
        st.one_of(
            st.text(string.ascii_letters + ".,", min_size=1, max_size=6),
            st.sampled_from(["1e9", "2.5", "0x10", ""]),
        ),
    ).map(lambda t: ([*t[0], t[1]], t[0][-1])),
    st.tuples(
        st.sampled_from(
            [
                (["sweep", str(GOOD_SPACE), "--gpus"], 0, 4096),
                (["sweep", str(GOOD_SPACE), "--trials"], 1, 100_000),
                (["report", "x", "--top"], 1, 50),
                (["ui", "x", "--port"], 0, 65535),
            ]
        ),
        st.integers(1, 10**12),
        st.booleans(),
    ).map(lambda t: ([*t[0][0], str(t[0][1] - t[1] if t[2] else t[0][2] + t[1])], t[0][0][-1])),
    st.tuples(
        st.sampled_from(["validate", "trial", "sweep"]),
        st.sampled_from(
            [
                "a",
                "=1",
                ".=1",
                "a..b=1",
                "train.=1",
                "seed=010",
                "train.augment=yes",
                "seed=!!int 3",
                'data.task="\\0"',
                "seed=1:30",
                "train.lr=.inf",
                "placement=[q",
                "seed=\udcff",
            ]
        ),
    ).map(
        lambda t: (
            [
                t[0],
                str(GOOD_SPACE if t[0] == "sweep" else GOOD_TRIAL),
                "--set",
                t[1],
                *(["--storage", str(STORAGE)] if t[0] == "sweep" else []),
            ],
            "--set",
        )
    ),
    st.tuples(st.sampled_from(["validate", "trial", "sweep"]), st.sampled_from(SPECIAL)).map(
        lambda t: ([t[0], t[1][0], *(["--storage", str(STORAGE)] if t[0] == "sweep" else [])], t[1][1])
    ),
    st.sampled_from(
        [
            ["sweep", str(GOOD_SPACE), "--name", n, "--storage", str(STORAGE)]
            for n in ["", "../x", "a/b", ".."]
        ]
    ).map(lambda a: (a, "--name")),
    st.just((["trial", str(GOOD_TRIAL), "--seeds", "1,x"], "--seeds")),
    st.just((["trial", str(GOOD_SPACE), "--params", "{not json"], "--params")),
    st.just((["trial", str(GOOD_SPACE), "--params", "[1, 2]"], "--params")),
)


@BUDGET
@given(cli_cases)
def test_cli_usage_and_input_errors_are_one_line_exit_2(case):
    args, names = case
    result = classify("cli_arguments", args, names)
    assert result.startswith("clean"), result
    assert not STORAGE.exists() or not any(STORAGE.iterdir()), "a rejected sweep created a folder"


@pytest.mark.parametrize(
    "args", [["--version"], ["--help"], ["validate", "--help"], ["validate", str(GOOD_TRIAL)], ["schema"]]
)
def test_cli_controls_succeed(args):
    kind, code, text = run_cli(args)
    count("valid_controls", "accepted" if (kind, code) == ("ran", 0) else "clean" if code == 2 else kind)
    assert (kind, code) == ("ran", 0), text
    if args == ["--version"]:
        from ranksearch import __version__

        assert text.strip() == f"ranksearch {__version__}"


def test_zz_record_the_counts():
    """Runs last in this module (file order): every category tried cases, all of them clean; write the counts."""
    flush()
    figures = counts()
    for name, c in figures.items():
        assert c["tried"] > 0, name
        assert c["traceback"] == c["hang"] == c["unclear"] == 0, (name, c)
        if name == "valid_controls":
            assert c["accepted"] == c["tried"], c
        else:
            assert c["clean"] == c["tried"], (name, c)
