"""RLRR against the authors' code (zstarN70/RLRR models/networks.py, train_vtab.py): where SSF sits, which parameters
the optimizer decays, and the ablation switches (scaling sides, residual)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ranksearch.adapters import get_family
from ranksearch.adapters.base import Site
from ranksearch.adapters.inject import attach_adapters, merge_to_stock
from ranksearch.adapters.placement import resolve_sites
from ranksearch.adapters.rlrr import RlrrLinear, SsfEmbedding, SsfLayerNorm, SsfPatchEmbed
from ranksearch.continual import boundary
from ranksearch.models.clip import build_model, tower_blocks


def _adapted(towers="both", **cfg):
    model, _ = build_model("rs-tiny-clip", None)
    depths = {t: len(b) for t, b in tower_blocks(model).items()}
    family = get_family("rlrr")(get_family("rlrr").config_cls(**cfg), 10)
    attach_adapters(model, family, resolve_sites(towers, "all", ["q", "k", "v", "o", "fc", "proj"], depths))
    return model.eval(), family


def _outputs(model, tiny_inputs):
    images, tokens = tiny_inputs
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@torch.no_grad()
def _perturb(family):
    for p in family.trainable_parameters():
        p.add_(torch.randn_like(p) * 0.05)


def test_ssf_after_patch_embedding_and_final_norms():
    model, family = _adapted()
    assert isinstance(model.visual.conv1, SsfPatchEmbed) and isinstance(model.visual.ln_post, SsfLayerNorm)
    assert isinstance(model.token_embedding, SsfEmbedding) and isinstance(model.ln_final, SsfLayerNorm)
    keys = {layer.site.key for layer in family.layers}
    assert {"vision.-1.embed", "vision.3.ln_post", "text.-1.embed", "text.2.ln_final"} <= keys
    vision_only, _ = _adapted("vision")
    assert not isinstance(vision_only.token_embedding, SsfEmbedding)  # only adapted towers get them
    assert not isinstance(_adapted(ssf=False)[0].visual.conv1, SsfPatchEmbed)


def test_every_ssf_folds_into_plain_open_clip_weights(tiny_inputs):
    model, family = _adapted()  # kaiming init: not the identity, so folding has something to prove
    _perturb(family)
    before = _outputs(model, tiny_inputs)
    merge_to_stock(model)
    assert type(model.visual.conv1) is nn.Conv2d and model.visual.conv1.bias is None  # still open_clip's conv
    after = _outputs(model, tiny_inputs)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_continual_boundary_folds_the_patch_ssf(tiny_inputs):
    model, family = _adapted(init="zero")  # fresh adapters are the identity, so the output must not move
    _perturb(family)
    before = _outputs(model, tiny_inputs)
    boundary(family)
    for a, b in zip(before, _outputs(model, tiny_inputs), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_weight_decay_follows_the_codes_name_rule():
    """networks.py:303: no decay for names containing "bias" or "norm". So: shift_bias and the SSF after each norm
    are not decayed; the rescaling vectors and the patch-embedding SSF (ssf_*_patch) are."""
    model, family = _adapted("vision")
    decay, skip = family.parameter_groups(0.05)
    assert decay["weight_decay"] == 0.05 and skip["weight_decay"] == 0.0
    by_id = {id(p): (layer, name) for layer in family.layers for name, p in layer.named_parameters()}

    def kinds(group):
        return {(type(by_id[id(p)][0]).__name__, by_id[id(p)][1]) for p in group["params"]}

    assert kinds(decay) == {
        ("RlrrLinear", "rlrr_scale_left"),
        ("RlrrLinear", "rlrr_scale_right"),
        ("SsfPatchEmbed", "rlrr_ssf_scale"),
        ("SsfPatchEmbed", "rlrr_ssf_shift"),
    }
    assert kinds(skip) == {
        ("RlrrLinear", "rlrr_shift"),
        ("SsfLayerNorm", "rlrr_ssf_scale"),
        ("SsfLayerNorm", "rlrr_ssf_shift"),
    }
    # and the optimizer really does it: a step with zero gradients only shrinks the decayed tensors
    opt = torch.optim.AdamW(family.parameter_groups(0.5), lr=0.1)
    snapshot = {id(p): p.detach().clone() for p in family.trainable_parameters()}
    for p in family.trainable_parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for group, moved in ((decay, True), (skip, False)):
        for p in group["params"]:
            expected = snapshot[id(p)] * (1 - 0.1 * 0.5) if moved else snapshot[id(p)]
            torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("sides", ["both", "left", "right"])
@pytest.mark.parametrize("residual", [True, False])
def test_sides_and_residual_match_their_formulas(sides, residual):
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = RlrrLinear(base, Site("vision", 0, "q"), 1, "kaiming", sides, residual)
    trained = {n for n, p in layer.named_parameters() if p.requires_grad}
    expect = {"rlrr_shift"} | ({"rlrr_scale_left"} if sides != "right" else set())
    expect |= {"rlrr_scale_right"} if sides != "left" else set()
    assert trained == expect
    w, b = base.weight.detach(), base.bias.detach()
    sl = layer.rlrr_scale_left.detach()[:, 0] if sides != "right" else torch.ones(5)
    sr = layer.rlrr_scale_right.detach()[0] if sides != "left" else torch.ones(6)
    rescaled = torch.diag(sl) @ w @ torch.diag(sr)  # Eq. 16 with one side, or both
    w_new = w + rescaled if residual else rescaled
    x = torch.randn(3, 6)
    with torch.no_grad():
        layer.rlrr_shift.normal_()
        expected = x @ w_new.t() + b + layer.rlrr_shift
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        layer.merge()
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sides", ["both", "left", "right"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("r", [1, 3])
def test_zero_init_is_identity_and_trainable(sides, residual, r):
    if sides != "both" and r != 1:
        pytest.skip("one-sided rescaling is rank 1")
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = RlrrLinear(base, Site("vision", 0, "q"), r, "zero", sides, residual)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), base(x), atol=1e-6, rtol=1e-6)
    start = {n: p.detach().clone() for n, p in layer.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # with both sides and the residual, S_right moves once S_left has left 0
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
    for name, p in layer.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p.detach(), start[name]), f"{name} does not train from the identity start"


def test_one_sided_rescaling_rejects_a_rank():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="rank 1"):
        get_family("rlrr").config_cls(sides="left", r=2)
