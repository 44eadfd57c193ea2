"""Shape-world pretraining and the checkpoint cache (short runs only; never the full default recipe)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ranksearch.pretrain as pt
from ranksearch.errors import ModelLoadError
from ranksearch.models.clip import build_model

# Enough steps to leave the initial log(batch) plateau of contrastive training (~10 s on 2 cores).
SHORT = pt.PretrainConfig(steps=40, batch_size=64, lr=2e-3, warmup_steps=10, data_size=1024)
# For cache tests: whether it learns does not matter, only that it runs and saves.
TINY = pt.PretrainConfig(steps=3, batch_size=32, warmup_steps=1, data_size=128)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def counted_pretrain(monkeypatch):
    """Wrap ``pretrain`` so tests can count how often the cache actually trains."""
    calls = []
    real = pt.pretrain

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(pt, "pretrain", wrapper)
    return calls


def test_short_pretrain_caches_a_loadable_checkpoint(cache, counted_pretrain):
    path = pt.ensure_checkpoint("rs-tiny-clip", TINY, progress=False)
    assert path.is_file() and path.parent.parent == cache and TINY.cache_key() in path.name
    assert len(counted_pretrain) == 1
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed, not left behind
    assert path.with_suffix(".json").is_file()

    model, size = build_model("rs-tiny-clip", pretrained=str(path))
    assert size == 32
    saved = torch.load(path, map_location="cpu")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name

    mtime = path.stat().st_mtime_ns
    assert pt.ensure_checkpoint("rs-tiny-clip", TINY, progress=False) == path
    assert len(counted_pretrain) == 1 and path.stat().st_mtime_ns == mtime


def test_loss_decreases_and_metrics(tmp_path):
    metrics = pt.pretrain(SHORT, tmp_path / "m.pt", progress=False, evaluate=False)
    assert len(metrics["losses"]) == SHORT.steps
    assert metrics["loss_last"] < metrics["loss_first"] - 0.2
    assert metrics["img_per_s"] > 0


def test_cache_key_follows_the_config(cache):
    keys = {SHORT.cache_key(), dataclasses.replace(SHORT, steps=21).cache_key()}
    keys.add(dataclasses.replace(SHORT, holdout_new=False).cache_key())
    assert len(keys) == 3
    assert SHORT.cache_key() == dataclasses.replace(SHORT).cache_key()  # stable for equal configs
    assert pt.checkpoint_path(SHORT) != pt.checkpoint_path(dataclasses.replace(SHORT, seed=1))
    assert pt.checkpoint_path(SHORT).is_relative_to(cache)


def test_cache_dir_fallbacks(monkeypatch, tmp_path):
    monkeypatch.delenv("RANKSEARCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert pt.cache_dir() == tmp_path / "ranksearch"


def test_interrupted_build_leaves_no_checkpoint(cache, monkeypatch):
    def boom(cfg, out_path, **kwargs):
        with open(out_path, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pt, "pretrain", boom)
    with pytest.raises(KeyboardInterrupt):
        pt.ensure_checkpoint("rs-tiny-clip", TINY, progress=False)
    assert not pt.checkpoint_path(TINY).exists()
    assert not list(pt.checkpoint_path(TINY).parent.glob("*.tmp"))


def test_only_tiny_models_have_shapeworld_weights(cache):
    with pytest.raises(ModelLoadError, match="shapeworld"):
        pt.ensure_checkpoint("ViT-B-32")


def test_contrastive_loss_treats_identical_captions_as_interchangeable_positives():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    swapped = txt[[0, 1, 3, 2]]
    scale = torch.tensor(2.0)
    dup = torch.tensor([0, 1, 2, 2])  # images 2 and 3 share a caption
    # Which copy of a duplicated caption sits on the diagonal must not matter ...
    assert torch.allclose(
        pt.contrastive_loss(img, txt, dup, scale), pt.contrastive_loss(img, swapped, dup, scale)
    )
    # ... whereas one-hot "diagonal" targets care, i.e. they treat the other copy as a negative.
    distinct = torch.arange(4)
    assert not torch.allclose(
        pt.contrastive_loss(img, txt, distinct, scale), pt.contrastive_loss(img, swapped, distinct, scale)
    )


def test_build_model_shapeworld_goes_through_the_cache(cache, counted_pretrain, monkeypatch):
    # Swap the default recipe for the tiny one so build_model's first-use path runs in a second.
    monkeypatch.setattr(
        pt, "default_recipe", lambda model_name: dataclasses.replace(TINY, model_name=model_name)
    )
    model, size = build_model("rs-tiny-clip", pretrained="shapeworld")
    assert size == 32 and len(counted_pretrain) == 1
    build_model("rs-tiny-clip", pretrained="shapeworld")
    assert len(counted_pretrain) == 1
