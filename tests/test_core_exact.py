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
            for p in layer.parameters():
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
    # RLRR in its generic form (base + update): no low-rank factors, so per-third updates on the fused matmul
    ("rlrr", ["q", "k", "v"], {"ssf": False}),
]


@pytest.mark.parametrize(("family", "matrices", "cfg"), CASES)
def test_stacked_qkv_equals_separate_projections(family, matrices, cfg, monkeypatch):
    if family == "rlrr":
        from ranksearch.adapters.base import AdapterLayer
        from ranksearch.adapters.rlrr import RlrrLinear

        monkeypatch.setattr(RlrrLinear, "forward", AdapterLayer.forward)
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


@pytest.mark.parametrize(
    "cfg", [{"r": 1}, {"r": 3, "residual": False}, {"r": 1, "sides": "left", "ssf": False}]
)
def test_rlrr_effective_weight_equals_the_rescaled_matmuls(cfg, monkeypatch):
    """One matmul with W ⊙ (1 + S_l S_r) gives the outputs and gradients of base(x) + Σ_k ((x ⊙ sr_k) Wᵀ) ⊙ sl_k."""
    from ranksearch.adapters.base import AdapterLayer
    from ranksearch.adapters.rlrr import RlrrLinear

    model, _ = _model("rlrr", ["q", "k", "v", "o", "fc", "proj"], **cfg)
    new = _run(model, stacked=True)
    monkeypatch.setattr(RlrrLinear, "forward", AdapterLayer.forward)  # the form it replaced
    old = _run(model, stacked=True)
    for a, b in zip(new[:2], old[:2], strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert len(new[2]) == len(old[2]) > 0
    for g1, g0 in zip(new[2], old[2], strict=True):
        torch.testing.assert_close(g1, g0, **TOL)


def _adalora_reference_step(fam, ema: dict) -> None:
    """The per-parameter loop the vectorised update replaced (PEFT's RankAllocator.update_ipt)."""
    b1, b2 = fam.config.beta1, fam.config.beta2
    for key, p in fam._params():
        ipt = (p * p.grad).abs()
        avg, unc = ema.get(key, (torch.zeros_like(p), torch.zeros_like(p)))
        avg = b1 * avg + (1 - b1) * ipt
        unc = b2 * unc + (1 - b2) * (ipt - avg).abs()
        ema[key] = (avg, unc)


def _adalora_reference_orth(fam) -> torch.Tensor:
    terms = []
    for layer in fam.layers:
        for cov in (layer.ada_A @ layer.ada_A.t(), layer.ada_B.t() @ layer.ada_B):
            eye = torch.eye(cov.shape[0], dtype=cov.dtype)
            terms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))
    return fam.config.orth_reg_weight * torch.stack(terms).mean()


def test_adalora_vectorised_importance_and_orthogonality_equal_the_loop():
    model, fam = _model("adalora", ["q", "k", "v", "fc"], init_r=4, target_r=2, orth_reg_weight=0.3)
    params = [p for _, p in fam._params()]
    ema: dict = {}
    g = torch.Generator().manual_seed(5)
    for _ in range(4):  # several steps: the EMAs carry over
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        _adalora_reference_step(fam, ema)
        assert fam.update_importance()
    assert set(fam._ema) == set(ema) and len(ema) == 3 * len(fam.layers)
    for key, (avg, unc) in ema.items():
        torch.testing.assert_close(fam._ema[key][0], avg, atol=0, rtol=0)
        torch.testing.assert_close(fam._ema[key][1], unc, atol=0, rtol=0)
    reg, ref = fam.regularizer(), _adalora_reference_orth(fam)
    torch.testing.assert_close(reg, ref, **TOL)
    ga = torch.autograd.grad(reg, params, allow_unused=True)
    gb = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(ga, gb, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL)
    params[3].grad[0, 0] = float("nan")  # a skipped (non-finite) step changes nothing
    before = {k: (a.clone(), u.clone()) for k, (a, u) in fam._ema.items()}
    assert not fam.update_importance()
    assert all(
        torch.equal(fam._ema[k][0], a) and torch.equal(fam._ema[k][1], u) for k, (a, u) in before.items()
    )


def test_stacked_qkv_first_used_under_inference_mode_still_trains():
    """A first forward under torch.inference_mode (after a dtype move re-stacks q/k/v) leaves no inference tensor
    behind for training to trip over."""
    model, _ = _model("lora", ["q", "k", "v"], r=2, dropout=0.0)
    with torch.inference_mode():
        model.encode_image(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    img = model.encode_image(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    img.square().sum().backward()
    vision = [
        p for layer in adapter_layers(model) if layer.site.tower == "vision" for p in layer.parameters()
    ]
    assert vision and all(p.grad is not None for p in vision if p.requires_grad)
