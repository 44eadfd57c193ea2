"""The adaptation world (ranksearch.data.world) and the rs-small-clip model it is measured with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranksearch.config.schema import DataConfig
from ranksearch.data import build_task, world
from ranksearch.data import shapeworld as sw
from ranksearch.errors import DataError
from ranksearch.trial import eval_steps


def test_small_clip_config_builds_with_its_depth():
    from ranksearch.models.clip import build_model, tower_blocks
    from ranksearch.pretrain import checkpoint_path, default_recipe

    model, size = build_model("rs-small-clip", pretrained=None)
    blocks = tower_blocks(model)
    assert (len(blocks["vision"]), len(blocks["text"]), size) == (6, 4, 32)
    assert model.visual.transformer.width == 128 and model.transformer.width == 128
    # its own recipe and cache key, distinct from the tiny model's
    small, tiny = default_recipe("rs-small-clip"), default_recipe("rs-tiny-clip")
    assert small.steps != tiny.steps and small.cache_key() != tiny.cache_key()
    assert checkpoint_path(small).name.startswith("rs-small-clip-shapeworld-")


def _cfg(**kw) -> DataConfig:
    return DataConfig(task="world", shots=2, test_per_class=2, **kw)


def test_world_is_deterministic_from_its_seed_and_sized_as_documented():
    a = build_task(_cfg(domain="mixed", split_seed=3), 32)
    b = build_task(_cfg(domain="mixed", split_seed=3), 32)
    c = build_task(_cfg(domain="mixed", split_seed=4), 32)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)
    assert not torch.equal(a.val.images, c.val.images)
    # validation: 21 per base class (48 x 21 = 1,008 images), all of them base classes
    assert len(a.val) == 48 * world.VAL_SHOTS >= 1000
    assert set(a.val.labels.tolist()) == set(sw.BASE_CLASSES)
    assert len(a.test) == 64 * 2 and len(a.extra_tests["world-clean"][1]) == 64 * 2
    assert a.classnames[sw.class_index("red", "star")] == "crimson star"
    assert a.name == "world-mixed" and build_task(_cfg(), 32).name == "world-mixed"  # the default task


def test_class_held_out_validation_rule_holds_on_every_world_task():
    for name in world.WORLD_TASKS:
        task = build_task(_cfg(domain=name), 32)
        held = set(task.val_new_classes)
        assert len(held) == 12  # a quarter of the 48 base classes, seeded
        assert held <= set(sw.BASE_CLASSES) and not held & set(sw.NEW_CLASSES)
        assert not held & set(task.train.labels.tolist())  # never trained on
        assert held <= set(task.val.labels.tolist())  # but scored as val/new
        assert not set(sw.NEW_CLASSES) & set(task.val.labels.tolist())  # no real new class in selection
        assert set(task.train.labels.tolist()) == set(task.train_classes)


def test_each_shift_does_what_it_says():
    labels = np.repeat(np.arange(64), 2)
    clean = world.render_task(labels, "pixel", 1, "test", shifted=False).astype(float)
    pixel = world.render_task(labels, "pixel", 1, "test").astype(float)
    # the sensor defocuses (plus noise): the pixels are the clean render blurred, the colours stay
    blurred = world.defocus(clean, world.DEFOCUS_SIGMA)
    assert np.abs(pixel - blurred).mean() < 9 < np.abs(pixel - clean).mean()
    assert (
        np.abs(pixel.mean(axis=(2, 3)) - clean.mean(axis=(2, 3))).max() < 6
    )  # mean colour of each image kept
    # edges are gone: the mean horizontal gradient drops to a fraction of the clean image's
    grad = lambda im: np.abs(np.diff(im, axis=3)).mean()  # noqa: E731
    assert grad(blurred) < 0.35 * grad(clean)
    # the blur preserves a constant image and is symmetric (a Gaussian of unit mass)
    flat = np.full((1, 3, 32, 32), 77.0, np.float32)
    assert np.allclose(world.defocus(flat, 2.5), 77.0, atol=1e-3)
    dot = np.zeros((1, 1, 33, 33), np.float32)
    dot[0, 0, 16, 16] = 1.0
    spread = world.defocus(dot, 2.5)[0, 0]
    assert (
        np.isclose(spread.sum(), 1.0, atol=1e-4)
        and np.allclose(spread, spread.T)
        and np.allclose(spread, spread[::-1])
    )
    # words: clean images, unseen colour words; no synonym occurs in any pretraining caption
    words = world.render_task(labels, "words", 1, "test").astype(float)
    assert np.array_equal(words, clean)
    caps = " ".join(sw.captions(sw.sample_scenes(labels, np.random.default_rng(0)), np.random.default_rng(1)))
    assert not set(world.SYNONYMS) & set(caps.split())
    # concept: a second, smaller object changes pixels the clean render leaves as background
    concept = world.render_task(labels, "concept", 1, "test").astype(float)
    assert (np.abs(concept - clean).max(axis=(1, 2, 3)) > 60).mean() > 0.9


def test_unknown_world_task_is_one_clear_error():
    with pytest.raises(DataError, match=r"data\.domain: unknown world task 'clutter'.*mixed"):
        build_task(_cfg(domain="clutter"), 32)


def test_geometric_eval_schedule_holds_quarter_and_half():
    steps = eval_steps(160, 8, "geometric")
    assert steps == [14, 20, 28, 40, 57, 80, 113, 160]
    assert 40 in steps and 80 in steps and all(b / a < 1.5 for a, b in zip(steps, steps[1:], strict=False))
    assert eval_steps(3, 8, "geometric") == [1, 2, 3]
    assert eval_steps(160, 4) == [40, 80, 120, 160]
