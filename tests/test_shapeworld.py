"""The generated shape world: determinism, splits, domains."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from ranksearch.config.schema import DataConfig
from ranksearch.data import build_task
from ranksearch.data import shapeworld as sw
from ranksearch.data.transforms import OPENAI_MEAN, normalize
from ranksearch.errors import DataError


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"shots": 2, "test_per_class": 3, **kw})


def test_class_split_is_a_latin_square_cover():
    assert len(sw.CLASSNAMES) == 64 and len(set(sw.CLASSNAMES)) == 64
    assert len(sw.NEW_CLASSES) == 16 and len(sw.BASE_CLASSES) == 48
    assert set(sw.NEW_CLASSES).isdisjoint(sw.BASE_CLASSES)
    assert sw.class_index("red", "circle") in sw.NEW_CLASSES  # j = 0, k = 0
    assert sw.class_index("yellow", "circle") in sw.NEW_CLASSES  # j = 0, k = 3
    for word in sw.COLOURS + sw.SHAPES:
        assert sum(word in sw.CLASSNAMES[c].split() for c in sw.BASE_CLASSES) == 6
        assert sum(word in sw.CLASSNAMES[c].split() for c in sw.NEW_CLASSES) == 2


def test_build_task_shapes_and_protocols():
    task = build_task(_cfg(), image_size=32)
    assert task.base_classes == list(sw.BASE_CLASSES)
    assert len(task.new_classes) == 16
    assert task.templates == [sw.DEFAULT_TEMPLATE]
    # base-to-new validation rule: 12 of the 48 base classes are pseudo-new, held out of training
    assert len(task.val_new_classes) == 12 and set(task.val_new_classes) < set(sw.BASE_CLASSES)
    assert task.train.images.shape == (36 * 2, 3, 32, 32) and task.train.images.dtype == torch.uint8
    assert task.train.labels.dtype == torch.int64
    assert set(task.train.labels.tolist()) == set(sw.BASE_CLASSES) - set(task.val_new_classes)
    # validation never holds a real new class
    assert len(task.val) == 48 * 2 and set(task.val.labels.tolist()) == set(sw.BASE_CLASSES)
    assert len(task.test) == 64 * 3
    assert set(task.extra_tests) == {f"shapeworld-{d}" for d in sw.DOMAINS if d != "clutter"}

    few = build_task(
        _cfg(protocol="fewshot", shots=1, val_shots=1, template="a photo of a {}."), image_size=32
    )
    assert few.base_classes is None and few.templates == ["a photo of a {}."]
    assert len(few.train) == 64 and set(few.train.labels.tolist()) == set(range(64))


def test_val_shots_default_is_min_of_shots_and_4():
    assert len(build_task(_cfg(shots=8), 32).val) == 48 * 4  # base classes only under base2new
    assert len(build_task(_cfg(shots=8, protocol="fewshot"), 32).val) == 64 * 4


def test_same_seed_same_tensors_other_seed_different():
    a, b = build_task(_cfg(), 32), build_task(_cfg(), 32)
    c = build_task(_cfg(split_seed=2), 32)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
        assert torch.equal(getattr(a, name).labels, getattr(b, name).labels)
        assert not torch.equal(getattr(a, name).images, getattr(c, name).images)


def test_train_val_test_share_no_image():
    task = build_task(_cfg(shots=4, val_shots=4, test_per_class=4), 32)
    flat = [s.images.flatten(1) for s in (task.train, task.val, task.test)]
    for i in range(3):
        for j in range(i + 1, 3):
            # No identical image across splits (pairwise equality over all pairs).
            same = (flat[i][:, None, :] == flat[j][None, :, :]).all(-1)
            assert not same.any()


def test_image_size_other_than_32():
    split = sw.make_split([0, 1], 2, seed=0, stream="test", image_size=48)
    assert split.images.shape == (4, 3, 48, 48)


def test_unknown_domain_names_field_and_choices():
    with pytest.raises(DataError, match=r"data\.domain.*clutter"):
        build_task(_cfg(domain="sketch"), 32)


def test_domains_render_the_same_scenes_differently():
    clean = sw.domain_test_split("clean", per_class=2, seed=1)
    for domain in sw.DOMAINS[1:]:
        other = sw.domain_test_split(domain, per_class=2, seed=1)
        assert torch.equal(clean.labels, other.labels)
        diff = (clean.images.float() - other.images.float()).abs().mean()
        assert diff > 5, f"{domain} looks too much like clean ({diff:.1f})"
    # Clutter is brighter and busier than the dark, flat clean background.
    clutter = sw.domain_test_split("clutter", per_class=2, seed=1)
    assert clutter.images.float().mean() > clean.images.float().mean() + 20

    def busyness(x: torch.Tensor) -> float:  # mean absolute difference of horizontal neighbours
        return (x.float()[..., 1:] - x.float()[..., :-1]).abs().mean().item()

    assert busyness(clutter.images) > 1.5 * busyness(clean.images)


def test_pretraining_stream_holds_out_new_combos():
    rng = np.random.default_rng(0)
    images, caps, labels = sw.pretraining_batch(rng, 2000)
    assert images.shape == (2000, 3, 32, 32) and images.dtype == np.uint8
    assert set(labels.tolist()) == set(sw.BASE_CLASSES)
    for cap, label in zip(caps, labels, strict=True):
        colour, shape = sw.CLASSNAMES[label].split()
        assert cap.startswith("a ") and colour in cap.split() and shape in cap.split()
    # All four caption forms occur.
    assert any(c.split()[1] in sw.SIZES for c in caps) and any(" in the " in c for c in caps)
    assert any(len(c.split()) == 3 for c in caps)
    again = sw.pretraining_batch(np.random.default_rng(0), 2000)
    assert np.array_equal(images, again[0]) and caps == again[1]


def test_normalize_uses_openai_stats():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out[0, 0, 0, 0].item() == pytest.approx((1 - OPENAI_MEAN[0]) / 0.26862954, rel=1e-5)


def test_split_seed_bounds():
    """Seeds live in [0, 2**32 - 1] (numpy's range): a negative one is a config error, the largest one builds."""
    with pytest.raises(pydantic.ValidationError, match="split_seed"):
        _cfg(split_seed=-3)
    assert len(build_task(_cfg(split_seed=2**32 - 1, shots=1, val_shots=1, test_per_class=1), 32).train) == 36
