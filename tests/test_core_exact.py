"""The training core's equal-work rewrites compute what the code they replace computed (fp64, 1e-10).

* q, k, v of an adapted attention: one fused frozen matmul plus one stacked low-rank product
  (``UnfusedAttention._add_stacked``) vs the three separate adapted projections (``set_fused_qkv(model, False)``);
* RLRR with its effective weight ``W ⊙ (1 + S_l S_r)`` (one matmul) vs the r-matmul form it replaced;
* AdaLoRA's vectorised importance update and batched orthogonality term vs the per-parameter loop.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ranksearch.adapters import get_family
from ranksearch.adapters.inject import adapter_layers, attach_adapters
from ranksearch.adapters.placement import resolve_sites
from ranksearch.models.attention import UnfusedAttention, set_fused_qkv
from ranksearch.models.clip import build_model, tower_blocks

TOL = {"atol": 1e-10, "rtol": 1e-10}


def _model(family: str, matrices: list[str], seed: int = 0, **cfg) -> tuple[nn.Module, object]:
    """The tiny CLIP in float64 with ``family`` on ``matrices`` of every block; every adapter parameter random."""
    torch.manual_seed(seed)
    model = build_model("rs-tiny-clip", None)[0]
    depths = {t: len(b) for t, b in tower_blocks(model).items()}
    fam = get_family(family)(get_family(family).config_cls(**cfg), 100)
    attach_adapters(model, fam, resolve_sites("both", "all", matrices, depths))
    model.double()  # moves every tensor: the q/k/v slices are re-stacked on first use
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in adapter_layers(model):
            for name, p in layer.named_parameters():
                if p.requires_grad:  # a non-identity update everywhere (B = 0 / E = 0 at init otherwise)
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model, fam


def _run(model: nn.Module, stacked: bool, train: bool = True, seed: int = 7, grads: bool = True):
    set_fused_qkv(model, stacked)
    model.train(train)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, 400, (4, 16), generator=g)
    torch.manual_seed(seed)  # adapter dropout draws from the global generator
    img, txt = model.encode_image(images), model.encode_text(tokens)
    if not grads:
        return img.detach(), txt.detach(), []
    params = [p for p in model.parameters() if p.requires_grad]
    # a merged projection's parameters take no part: their gradient is None on both paths
    grads = torch.autograd.grad(img.square().sum() + txt.square().sum(), params, allow_unused=True)
    return img, txt, [torch.zeros(()) if g is None else g for g in grads]


CASES = [
    ("lora", ["q", "k", "v"], {"r": 2, "dropout": 0.0}),
    ("lora", ["q", "v"], {"r": 4, "dropout": 0.0}),
    ("lora", ["q", "k", "v"], {"r": 2, "dropout": 0.25}),  # each projection its own mask, same RNG order
    ("codyra", ["q", "k", "v"], {"r": 3}),
    ("adalora", ["q", "k", "v"], {"init_r": 4, "target_r": 2}),
    ("rlrr", ["q", "k", "v"], {"ssf": False}),  # no low-rank factors: per-third updates on the fused matmul
]


@pytest.mark.parametrize(("family", "matrices", "cfg"), CASES)
def test_stacked_qkv_equals_separate_projections(family, matrices, cfg):
    model, _ = _model(family, matrices, **cfg)
    old = _run(model, stacked=False)
    new = _run(model, stacked=True)
    attns = [m for m in model.modules() if isinstance(m, UnfusedAttention)]
    assert attns and all(m._fused is not None for m in attns)  # the fused path really ran
    for a in attns:  # and read the q/k/v weights in place (one tensor, no copy)
        w = a._fused[1]
        base_q = a.q_proj.base if hasattr(a.q_proj, "base") else a.q_proj
        assert w.data_ptr() == base_q.weight.data_ptr() and w.shape[0] == 3 * a.embed_dim
    torch.testing.assert_close(new[0], old[0], **TOL)
    torch.testing.assert_close(new[1], old[1], **TOL)
    assert len(new[2]) == len(old[2]) > 0
    for g1, g0 in zip(new[2], old[2], strict=True):
        torch.testing.assert_close(g1, g0, **TOL)


def test_stacked_qkv_eval_with_partial_masks_and_a_merged_projection():
    model, _ = _model("lora", ["q", "k", "v"], r=4, dropout=0.25)
    layers = adapter_layers(model)
    with torch.no_grad():
        layers[0].lora_mask[1:3] = 0  # a budget switched components off
        layers[4].lora_mask.zero_()
    layers[5].merge()  # a merged projection adds no update of its own
    old = _run(model, stacked=False, train=False)
    new = _run(model, stacked=True, train=False)
    for a, b in zip(new[:2], old[:2], strict=True):
        torch.testing.assert_close(a, b, **TOL)
    for g1, g0 in zip(new[2], old[2], strict=True):
        torch.testing.assert_close(g1, g0, **TOL)


def test_fused_qkv_follows_a_merge_of_the_frozen_weights():
    """Merging adds into the q/k/v slices in place: the fused matmul sees the merged weights."""
    model, _ = _model("lora", ["q", "k", "v"], r=2, dropout=0.0)
    before = _run(model, stacked=True, train=False, grads=False)
    for layer in adapter_layers(model):
        layer.merge()
    merged = _run(model, stacked=True, train=False, grads=False)
    torch.testing.assert_close(merged[0], before[0], **TOL)
    torch.testing.assert_close(merged[1], before[1], **TOL)
