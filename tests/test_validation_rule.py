"""The base-to-new validation rule: selection estimates new-class generalisation without any new class.

Under ``base2new`` a seeded share of the *base* classes (``data.val_new_fraction``) is held out of training as
pseudo-new classes; validation holds base classes only and is scored trained-base vs pseudo-new; the test split
is scored real base vs real new (docs/data.md). Checked on the built-in world, on the CoOp layout, through the
real evaluation code, and across processes (the same classes on every trial and machine).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ranksearch.config.schema import DataConfig, TrialConfig
from ranksearch.data import build_task
from ranksearch.data import shapeworld as sw
from ranksearch.data.fewshot import base2new_validation, pseudo_new_classes
from ranksearch.data.task import Split, Task
from ranksearch.errors import DataError


def _sw(**kw) -> DataConfig:
    return DataConfig(**{"task": "shapeworld", "shots": 2, "test_per_class": 2, **kw})


def test_pseudo_new_draw_sizes_and_bounds() -> None:
    assert pseudo_new_classes(range(48), 0.25, 1) != pseudo_new_classes(range(48), 0.25, 2)
    assert len(pseudo_new_classes(range(48), 0.25, 1)) == 12
    assert len(pseudo_new_classes(range(19), 0.25, 1)) == 5  # Oxford Pets: 37 classes, 19 base
    assert len(pseudo_new_classes(range(5), 0.25, 1)) == 2  # EuroSAT: never a 1-class "new" group
    assert len(pseudo_new_classes(range(5), 0.9, 1)) == 3  # ... nor a 1-class trained group
    assert len(pseudo_new_classes(range(3), 0.25, 1)) == 1
    assert pseudo_new_classes(range(48), 0.0, 1) == []
    with pytest.raises(DataError, match="val_new_fraction"):
        pseudo_new_classes([7], 0.25, 1)
    for seed in range(20):  # always a subset of the base classes, sorted, no repeats
        held = pseudo_new_classes([3, 9, 4, 11, 20, 6], 0.5, seed)
        assert held == sorted(set(held)) and set(held) < {3, 9, 4, 11, 20, 6}


def test_same_seed_same_classes_in_another_process() -> None:
    """Across trials and machines: no dependence on hash seeds or process state."""
    code = "from ranksearch.data.fewshot import pseudo_new_classes as p; print(p(range(48), 0.25, 3))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": h}, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
        for h in ("0", "1", "12345")
    }  # fmt: skip
    assert outs == {str(pseudo_new_classes(range(48), 0.25, 3))}


def test_built_in_world_validation_never_sees_a_new_class() -> None:
    task = build_task(_sw(), 32)
    held = set(task.val_new_classes)
    assert len(held) == 12 and held < set(sw.BASE_CLASSES)
    assert set(task.val.labels.tolist()) == set(sw.BASE_CLASSES)  # no real new class in selection
    assert set(task.train.labels.tolist()) == set(sw.BASE_CLASSES) - held  # pseudo-new never trained
    assert set(task.test.labels.tolist()) == set(range(64))  # the test split is untouched
    assert task.scored_classes("val") == (task.train_classes, sorted(held))
    assert task.scored_classes("test") == (list(sw.BASE_CLASSES), list(sw.NEW_CLASSES))
    # the same for every trial of a sweep: trials differ in their trial seed, not in data.split_seed
    other = build_task(_sw(), 32)
    assert other.val_new_classes == task.val_new_classes
    assert torch.equal(other.train.labels, task.train.labels)


def test_fraction_zero_trains_every_base_class() -> None:
    task = build_task(_sw(val_new_fraction=0), 32)
    assert task.val_new_classes == [] and task.train_classes == list(sw.BASE_CLASSES)
    assert set(task.val.labels.tolist()) == set(sw.BASE_CLASSES)


def test_fewshot_protocol_is_unaffected() -> None:
    task = build_task(_sw(protocol="fewshot"), 32)
    assert task.val_new_classes == [] and task.scored_classes("val") is None
    assert set(task.train.labels.tolist()) == set(range(64))


def _tiny_task(val_labels: list[int]) -> Task:
    def split(labels: list[int]) -> Split:
        return Split(torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8), torch.tensor(labels))

    return Task(
        "t",
        [f"c{i}" for i in range(8)],
        ["{}"],
        split([0, 1, 2, 3]),
        split(val_labels),
        split(list(range(8))),
        [0, 1, 2, 3],
    )


def test_declared_pseudo_new_classes_win_and_are_checked() -> None:
    task = _tiny_task([0, 1, 2, 3, 4])
    task.val_new_classes = [2, 3]
    out = base2new_validation(task, 0.25, 1)
    assert out.val_new_classes == [2, 3] and out.train_classes == [0, 1]
    assert out.val.labels.tolist() == [0, 1, 2, 3]  # class 4 (a real new class) dropped from validation
    bad = _tiny_task([0, 1, 2, 3])
    bad.val_new_classes = [5]
    with pytest.raises(DataError, match="not base classes"):
        base2new_validation(bad, 0.25, 1)


def test_validation_without_images_of_a_group_is_an_error() -> None:
    task = _tiny_task([0, 0, 1])  # no validation image of classes 2, 3
    task.val_new_classes = [2, 3]
    with pytest.raises(DataError, match="no image of the pseudo-new classes"):
        base2new_validation(task, 0.25, 1)


def test_evaluation_scores_pseudo_split_on_val_and_real_split_on_test() -> None:
    """Through the real session: val/new is the pseudo-new classes among themselves; all finite."""
    from ranksearch.session import TrialSession
    from ranksearch.training.evaluate import image_features, subset_accuracy

    config = TrialConfig.model_validate(
        {
            "model": {"pretrained": None},
            "data": {"shots": 1, "test_per_class": 2},
            "train": {"iterations": 1},
            "eval": {"evals": 1},
        }
    )
    session = TrialSession(config, 1)
    task = build_task(config.data, session.image_size)
    val, test = session.evaluate(task, "val"), session.evaluate(task, "test")
    assert all(math.isfinite(val[k]) for k in ("val/base", "val/new", "val/hm"))
    assert all(math.isfinite(test[k]) for k in ("test/base", "test/new", "test/hm"))
    text = session.text_features(task.classnames, task.templates)
    feats = image_features(session.model, task.val.images, session.device, 256, session.autocast)
    assert val["val/new"] == pytest.approx(
        subset_accuracy(feats, task.val.labels, text, task.val_new_classes)
    )
    assert val["val/base"] == pytest.approx(subset_accuracy(feats, task.val.labels, text, task.train_classes))
    zero = build_task(config.data.model_copy(update={"val_new_fraction": 0.0}), session.image_size)
    assert set(session.evaluate(zero, "val")) == {"val/base"}


def test_trial_records_the_rule(tmp_path) -> None:
    """A finished trial says which classes were pseudo-new (metrics.json), so a result can be audited."""
    from ranksearch.trial import run_trial

    config = TrialConfig.model_validate(
        {
            "model": {"pretrained": None},
            "data": {"shots": 1, "test_per_class": 1},
            "train": {"iterations": 2, "batch_size": 8},
            "eval": {"evals": 1},
            "tracking": {"enabled": False},
        }
    )
    result = run_trial(config, output_dir=tmp_path, progress=False)
    assert result.status == "completed"
    assert all(math.isfinite(result.metrics[k]) for k in ("val/hm", "zs/val/hm", "test/hm"))
    recorded = json.loads((tmp_path / "metrics.json").read_text())["classes"]
    assert recorded["val_new"] == pseudo_new_classes(sw.BASE_CLASSES, 0.25, 1)
    assert recorded["base"] == list(sw.BASE_CLASSES)


@pytest.mark.parametrize(
    ("data", "objective", "message"),
    [
        (
            {"protocol": "fewshot"},
            "val/hm",
            "'val/hm' never exists under data.protocol 'fewshot': trials report val/acc",
        ),
        ({"val_new_fraction": 0}, "val/new", "with data.val_new_fraction 0: trials report val/base"),
        ({}, "val/acc", "'val/acc' never exists under data.protocol 'base2new'"),
        ({"protocol": "fewshot"}, "zs/val/base", "'zs/val/base' never exists"),
    ],
)
def test_an_objective_that_can_never_exist_is_a_validate_error(data, objective, message) -> None:
    from ranksearch.errors import ConfigError
    from ranksearch.space.load import validate_space

    space = {
        "base": {"data": data},
        "params": {"train.lr": [0.001, 0.01]},
        "objective": {"metric": objective},
    }
    with pytest.raises(ConfigError) as e:
        validate_space(space)
    assert any(path == "objective.metric" and message in msg for path, msg in e.value.problems), (
        e.value.problems
    )
    ok = {**space, "objective": {"metric": "val/hm" if data == {} else "val/base" if data else "val/acc"}}
    if data.get("protocol") == "fewshot":
        ok["objective"] = {"metric": "val/acc"}
    validate_space(ok)  # the metric the trials do report is fine
