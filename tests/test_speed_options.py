"""The training loop's speed options give the same numbers as the plain path (equivalence, not timing).

Timings live in ``bench/`` and ``docs/benchmarks.md``; here each shortcut is checked against the computation it
replaces: prompts cut after their end-of-text token, the frozen vision prefix served from a cache, fused q/k/v
projections.
"""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch
from torch import nn

from ranksearch.adapters import get_family
from ranksearch.adapters.inject import adapter_layers, attach_adapters
from ranksearch.adapters.placement import resolve_sites
from ranksearch.config.schema import TrainConfig
from ranksearch.models.attention import UnfusedAttention, set_fused_qkv
from ranksearch.models.clip import build_model, register_tiny_configs, tower_blocks
from ranksearch.training.loop import Trainer, fast_class_text_features, text_prefix_length
from ranksearch.training.text import class_text_features, tokenize_prompts


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return build_model("rs-tiny-clip", None)[0]


def _attach(model: nn.Module, family: str, towers: str, layers, matrices: list[str], **cfg):
    depths = {t: len(b) for t, b in tower_blocks(model).items()}
    fam = get_family(family)(get_family(family).config_cls(**cfg), 100)
    attach_adapters(model, fam, resolve_sites(towers, layers, matrices, depths))
    torch.manual_seed(1)
    for layer in adapter_layers(model):  # a non-identity update, so the adapted path matters
        for name, p in layer.named_parameters():
            if p.requires_grad and name.endswith(("lora_B", "dra_up")):
                nn.init.normal_(p, std=0.3)
    return fam


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    register_tiny_configs()
    tok = open_clip.get_tokenizer("rs-tiny-clip")
    return tokenize_prompts(
        tok, ["red star", "a small blue ring", "heart"], ["a photo of a {}.", "art of {}"]
    )


def test_text_cut_after_eot_equals_full_context(tokens):
    model = _tiny()
    _attach(model, "lora", "both", "all", ["q", "k", "v", "o"], dropout=0.0)
    length = text_prefix_length(model, tokens)
    assert length is not None and length < tokens.shape[1]
    full = class_text_features(model, tokens, 2)
    fast = fast_class_text_features(model, tokens, 2)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    # gradients too: the adapted text tower trains on the cut prompts
    grads = []
    for fn in (class_text_features, fast_class_text_features):
        model.zero_grad(set_to_none=True)
        fn(model, tokens, 2).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_text_is_not_cut_for_sequence_dependent_adapters(tokens):
    model = _tiny()
    _attach(model, "dra", "text", "all", ["o"])
    assert text_prefix_length(model, tokens) is None  # DRA groups tokens by share of the sequence
    torch.testing.assert_close(
        fast_class_text_features(model, tokens, 2), class_text_features(model, tokens, 2), atol=0, rtol=0
    )


def _trainer(model, fam, cache: bool, augment: bool = False) -> Trainer:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(12) % 3
    register_tiny_configs()
    toks = tokenize_prompts(open_clip.get_tokenizer("rs-tiny-clip"), ["a", "b", "c"], ["a photo of a {}."])
    cfg = TrainConfig(batch_size=4, iterations=9, augment=augment, cache_frozen_prefix=cache, lr=1e-2)
    text_adapted = any(layer.site.tower == "text" for layer in fam.layers)
    return Trainer(
        model,
        fam,
        images,
        labels,
        toks,
        1,
        cfg,
        9,
        torch.device("cpu"),
        "fp32",
        seed=3,
        text_adapted=text_adapted,
    )


@pytest.mark.parametrize(
    ("family", "towers", "layers", "matrices", "cfg"),
    [
        (
            "lora",
            "vision",
            [1, 2],
            ["q", "k", "v"],
            {"dropout": 0.25},
        ),  # top of the vision tower, with dropout
        # both towers; without SSF (RLRR's patch-embedding SSF makes the prefix trainable: no cache, see below)
        ("rlrr", "both", [1], ["q", "v"], {"ssf": False}),
        ("lora", "text", "all", ["q", "v"], {}),  # no vision adapter: the whole image tower is cached
    ],
)
def test_frozen_prefix_cache_gives_the_same_training(family, towers, layers, matrices, cfg):
    runs = []
    for cache in (False, True):
        model = _tiny()
        fam = _attach(model, family, towers, layers, matrices, **cfg)
        torch.manual_seed(5)  # adapter dropout draws from the global generator
        trainer = _trainer(model, fam, cache)
        assert (trainer.prefix_cache is not None) == cache
        losses = [trainer.train_step().loss for _ in range(9)]  # > 2 epochs of 12 images: cache hits
        params = torch.cat([p.detach().flatten() for p in fam.trainable_parameters()])
        runs.append((losses, params))
    torch.testing.assert_close(runs[1][0], runs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runs[1][1], runs[0][1], atol=1e-5, rtol=1e-4)


def test_frozen_prefix_cache_is_off_when_it_would_not_be_exact(caplog):
    model = _tiny()
    fam = _attach(model, "lora", "vision", [1, 2], ["q"])
    with caplog.at_level(logging.WARNING):
        assert _trainer(model, fam, cache=True, augment=True).prefix_cache is None
    assert "augment" in caplog.text
    model = _tiny()
    fam = _attach(model, "lora", "vision", "all", ["q"])  # lowest adapted block is the first: no prefix
    assert _trainer(model, fam, cache=True).prefix_cache is None
    model = _tiny()
    fam = _attach(model, "rlrr", "vision", [1, 2], ["q"])  # SSF after the patch embedding trains the prefix
    assert _trainer(model, fam, cache=True).prefix_cache is None


@pytest.mark.parametrize(
    ("family", "matrices", "cfg"),
    [
        ("lora", ["q", "k", "v"], {"dropout": 0.0}),
        ("lora", ["q", "v"], {}),
        ("rlrr", ["k"], {}),
        (None, [], {}),
    ],
)
def test_fused_qkv_equals_separate_projections(family, matrices, cfg):
    torch.manual_seed(0)
    images, toks = torch.randn(3, 3, 32, 32), torch.randint(1, 400, (4, 16))
    outs = []
    for fused in (False, True):
        model = _tiny()
        if family is None:  # unfused attention without adapters
            for blocks in tower_blocks(model).values():
                for block in blocks:
                    block.attn = UnfusedAttention(block.attn)
        else:
            _attach(model, family, "both", "all", matrices, **cfg)
        set_fused_qkv(model, fused)
        model.train()
        torch.manual_seed(7)
        img, txt = model.encode_image(images), model.encode_text(toks)
        attns = [m for m in model.modules() if isinstance(m, UnfusedAttention)]
        # the fused path really ran (RLRR computes its projection with its own effective weight: not fused)
        assert attns and all((m._fused is not None) == (fused and family != "rlrr") for m in attns)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad((img.square().sum() + txt.square().sum()), params) if params else ()
        outs.append((img, txt, grads))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-5)
    for g1, g0 in zip(outs[1][2], outs[0][2], strict=True):
        torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)
