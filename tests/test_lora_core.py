"""CLIP-LoRA core: attention unfusing, LoRA math, placement, merge/unmerge, adapter save/load."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ranksearch.adapters import get_family
from ranksearch.adapters.base import Site
from ranksearch.adapters.inject import adapter_layers, attach_adapters, merge_to_stock, unfuse_block_attention
from ranksearch.adapters.io import adapter_state_dict, load_adapter, save_adapter
from ranksearch.adapters.lora import LoraConfig, LoraLinear
from ranksearch.adapters.placement import layer_indices, resolve_sites
from ranksearch.errors import AdapterError
from ranksearch.models.attention import UnfusedAttention, fuse_attention
from ranksearch.models.clip import tower_blocks


def encode(model, inputs):
    images, tokens = inputs
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def adapt(model, cfg=None, towers="both", layers="all", matrices=("q", "k", "v")):
    cfg = cfg or LoraConfig()
    depths = {t: len(b) for t, b in tower_blocks(model).items()}
    family = get_family("lora")(cfg, total_steps=10)
    attach_adapters(model, family, resolve_sites(towers, layers, list(matrices), depths))
    return family


def randomise(model):
    torch.manual_seed(1)
    for layer in adapter_layers(model):
        nn.init.normal_(layer.lora_B, std=0.2)


def test_unfused_attention_equals_stock_mha_in_both_towers(tiny_model, tiny_inputs):
    ref_img, ref_txt = encode(tiny_model, tiny_inputs)
    for blocks in tower_blocks(tiny_model).values():
        for block in blocks:
            unfuse_block_attention(block)
    img, txt = encode(tiny_model, tiny_inputs)
    assert isinstance(tower_blocks(tiny_model)["text"][0].attn, UnfusedAttention)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=0)


def test_unfused_attention_masks_match_mha():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    attn = UnfusedAttention(mha)
    x = torch.randn(2, 5, 16)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    bool_mask = torch.rand(5, 5) > 0.7
    bool_mask.fill_diagonal_(False)
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": bool_mask}, {"key_padding_mask": pad}):
        torch.testing.assert_close(
            attn(x, x, x, **kwargs)[0], mha(x, x, x, need_weights=False, **kwargs)[0], atol=1e-5, rtol=0
        )
    # and back: the fused module is a stock MHA with the same outputs
    torch.testing.assert_close(
        fuse_attention(attn)(x, x, x, need_weights=False)[0], mha(x, x, x)[0], atol=1e-6, rtol=0
    )


def test_lora_is_identity_at_init(tiny_model, tiny_inputs):
    ref = encode(tiny_model, tiny_inputs)
    adapt(tiny_model)
    for got, want in zip(encode(tiny_model, tiny_inputs), ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_lora_forward_matches_formula():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    layer = LoraLinear(base, Site("vision", 0, "q"), r=4, alpha=2.0, scaling="sqrt", dropout=0.0)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 8)
    expected = (
        x @ base.weight.t() + base.bias + (2.0 / math.sqrt(4)) * (x @ layer.lora_A.t() @ layer.lora_B.t())
    )
    torch.testing.assert_close(layer(x), expected)
    linear = LoraLinear(
        nn.Linear(8, 6), Site("vision", 0, "q"), r=4, alpha=2.0, scaling="linear", dropout=0.0
    )
    assert linear.scale == pytest.approx(0.5)


def test_lora_dropout_acts_on_lora_input_only():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(8, 6), Site("text", 0, "v"), r=2, alpha=1.0, scaling="sqrt", dropout=0.5)
    x = torch.randn(4, 8)
    layer.train()
    # with B = 0 the LoRA branch is zero, so dropout must not change the output at all
    torch.testing.assert_close(layer(x), layer.base(x))


def test_only_lora_parameters_train(tiny_model):
    family = adapt(tiny_model)
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    # r=2 on q,k,v of 3 vision + 2 text blocks, width 64: 5 blocks × 3 × 2 × (64 + 64)
    assert sum(p.numel() for p in family.trainable_parameters()) == 5 * 3 * 2 * 128


def test_merged_equals_unmerged_and_unmerge_restores_base(tiny_model, tiny_inputs):
    base_state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    ref = encode(tiny_model, tiny_inputs)
    adapt(tiny_model, matrices=("q", "k", "v", "o", "fc", "proj"))
    randomise(tiny_model)
    unmerged = encode(tiny_model, tiny_inputs)
    assert (unmerged[0] - ref[0]).abs().max() > 1e-2  # the update really does something
    layers = adapter_layers(tiny_model)
    for layer in layers:
        layer.merge()
    for got, want in zip(encode(tiny_model, tiny_inputs), unmerged, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for layer in layers:
        layer.unmerge()
    for layer in layers:
        sd = layer.base.state_dict()
        assert torch.equal(sd["weight"], layer.base.weight)
    for got, want in zip(encode(tiny_model, tiny_inputs), unmerged, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # merge_to_stock: no ranksearch modules left, stock MHA back, same outputs
    merge_to_stock(tiny_model)
    assert not adapter_layers(tiny_model)
    assert all(
        isinstance(b.attn, nn.MultiheadAttention) for bl in tower_blocks(tiny_model).values() for b in bl
    )
    assert set(tiny_model.state_dict()) == set(base_state)
    for got, want in zip(encode(tiny_model, tiny_inputs), unmerged, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_unmerge_restores_base_weights_exactly(tiny_model):
    adapt(tiny_model)
    randomise(tiny_model)
    layers = adapter_layers(tiny_model)
    before = [layer.base.weight.clone() for layer in layers]
    for layer in layers:
        layer.merge()
        layer.merge()  # idempotent
    for layer in layers:
        layer.unmerge()
    for layer, w in zip(layers, before, strict=True):
        assert torch.equal(layer.base.weight, w)


def test_merge_refuses_non_finite_update(tiny_model):
    adapt(tiny_model)
    layer = adapter_layers(tiny_model)[0]
    with torch.no_grad():
        layer.lora_B[0, 0] = float("nan")
    with pytest.raises(AdapterError, match="non-finite"):
        layer.merge()


def test_adapter_save_load_round_trip(tiny_model, tiny_inputs, tmp_path):
    adapt(tiny_model, cfg=LoraConfig(r=4))
    randomise(tiny_model)
    want = encode(tiny_model, tiny_inputs)
    path = save_adapter(tiny_model, tmp_path / "adapter.safetensors", {"note": "x"})
    saved = adapter_state_dict(tiny_model)
    assert saved and all(".lora_" in k for k in saved)  # adapter tensors only, no base weights
    fresh = _clone_base(tiny_model)
    adapt(fresh, cfg=LoraConfig(r=4))
    assert load_adapter(fresh, path) == {"note": "x"}
    for got, exp in zip(encode(fresh, tiny_inputs), want, strict=True):
        torch.testing.assert_close(got, exp, atol=0, rtol=0)


def _clone_base(model):
    """A fresh tiny model holding ``model``'s base weights (adapters removed by merging a zero update)."""
    import copy

    clone = copy.deepcopy(model)
    for layer in adapter_layers(clone):
        nn.init.zeros_(layer.lora_B)
    return merge_to_stock(clone)


def test_load_adapter_rejects_corrupt_and_mismatched_files(tiny_model, tmp_path):
    adapt(tiny_model)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(AdapterError, match="corrupt"):
        load_adapter(tiny_model, bad)
    good = save_adapter(tiny_model, tmp_path / "a.safetensors")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(AdapterError):
        load_adapter(tiny_model, truncated)
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(tiny_model, tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ("all", list(range(12))),
        ("bottom", [0, 1, 2, 3]),
        ("mid", [4, 5, 6, 7]),
        ("up", [8, 9, 10, 11]),
        ("half-up", [6, 7, 8, 9, 10, 11]),
        ("half-bottom", [0, 1, 2, 3, 4, 5]),
        ("top3", [9, 10, 11]),
        ("2-4", [2, 3, 4]),
        ([5, 1, 5], [1, 5]),
    ],
)
def test_layer_positions_match_clip_lora_tables_for_12_blocks(selection, expected):
    assert layer_indices(selection, 12) == expected


def test_placement_errors_are_clear():
    with pytest.raises(ValueError, match="out of range"):
        layer_indices([0, 12], 12)
    with pytest.raises(ValueError, match="no adaptable text tower"):
        resolve_sites("text", "all", ["q"], {"vision": 3})


def test_placement_towers_and_matrices(tiny_model):
    adapt(tiny_model, towers="vision", layers="top1", matrices=("v", "o", "fc"))
    keys = [layer.site.key for layer in adapter_layers(tiny_model)]
    assert sorted(keys) == sorted(["vision.2.v", "vision.2.o", "vision.2.fc"])
    # the text tower keeps its stock attention when nothing is placed there
    assert isinstance(tower_blocks(tiny_model)["text"][0].attn, nn.MultiheadAttention)
