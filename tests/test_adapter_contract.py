"""One contract over every registered adapter family (future families are covered automatically).

Identity at init, merged == unmerged, unmerge restores the base, adapter-only save/load, parameter names carry
the family prefix, and trainable-parameter counts on ViT-B/16 against the docs/methods.md formulas.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from ranksearch.adapters import all_families, get_family
from ranksearch.adapters.inject import adapter_layers, attach_adapters, merge_to_stock
from ranksearch.adapters.placement import resolve_sites
from ranksearch.errors import AdapterError
from ranksearch.models.attention import UnfusedAttention
from ranksearch.models.clip import build_model, tower_blocks

FAMILIES = sorted(all_families())
ALL_MATRICES = ["q", "k", "v", "o", "fc", "proj"]
# Families that only accept some matrices (DRA-style inserts at the attention / MLP outputs only).
MATRICES = {"dra": ["o", "proj"]}


def _sites(model: nn.Module, family: str, matrices: list[str] | None = None):
    depths = {t: len(b) for t, b in tower_blocks(model).items()}
    return resolve_sites("both", "all", matrices or MATRICES.get(family, ALL_MATRICES), depths)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    model, _ = build_model("rs-tiny-clip", None)
    return model


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 1000, (2, 16), generator=g)
    tokens[0, 5:], tokens[1, 9:] = 0, 0
    tokens[0, 5], tokens[1, 9] = 49407, 49407  # EOT (the largest id), then padding
    return images, tokens


def _encode(model: nn.Module, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(inputs[0]), model.encode_text(inputs[1])


def _adapted(base: nn.Module, name: str, config=None, total_steps: int = 100):
    model = copy.deepcopy(base)
    cls = get_family(name)
    family = cls(config if config is not None else cls.config_cls(), total_steps)
    attach_adapters(model, family, _sites(model, name))
    return model, family


@torch.no_grad()
def _randomise(family) -> None:
    for p in family.trainable_parameters():
        p.normal_(0.0, 0.1)


@pytest.mark.parametrize("name", FAMILIES)
def test_identity_at_init(tiny, inputs, name):
    model, family = _adapted(tiny, name)
    ref = _encode(tiny, inputs)
    out = _encode(model, inputs)
    same = all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, out, strict=True))
    assert same == family.identity_at_init(), f"{name}: identity_at_init() says {family.identity_at_init()}"


def test_rlrr_zero_init_is_identity(tiny, inputs):
    cfg = get_family("rlrr").config_cls(init="zero")
    model, family = _adapted(tiny, "rlrr", cfg)
    assert family.identity_at_init()
    for a, b in zip(_encode(tiny, inputs), _encode(model, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_parameters_carry_prefix_and_only_adapters_train(tiny, name):
    model, family = _adapted(tiny, name)
    cls = get_family(name)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(cls.prefix in n for n in trainable)
    assert {id(p) for p in family.trainable_parameters()} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    assert family.layers and all(layer in adapter_layers(model) for layer in family.layers)


@pytest.mark.parametrize("name", [n for n in FAMILIES if get_family(n).mergeable])
def test_merge_to_stock_equals_unmerged(tiny, inputs, name):
    model, family = _adapted(tiny, name)
    _randomise(family)
    unmerged = _encode(model, inputs)
    assert not all(torch.allclose(a, b) for a, b in zip(unmerged, _encode(tiny, inputs), strict=True))
    merge_to_stock(model)
    assert not any(type(m).__module__.startswith("ranksearch") for m in model.modules())
    for blocks in tower_blocks(model).values():
        assert all(type(b.attn) is nn.MultiheadAttention for b in blocks)
    assert set(model.state_dict()) == set(tiny.state_dict())
    for a, b in zip(unmerged, _encode(model, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in FAMILIES if get_family(n).mergeable])
def test_unmerge_restores_base(tiny, inputs, name):
    model, family = _adapted(tiny, name)
    _randomise(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unmerged = _encode(model, inputs)
    for layer in family.layers:
        layer.merge()
    merged = _encode(model, inputs)
    for layer in family.layers:
        layer.unmerge()
    after = model.state_dict()
    for k, v in before.items():
        # (w + Δ) − Δ is w up to float rounding; base.py subtracts the stored delta, not a recomputation.
        torch.testing.assert_close(after[k], v, rtol=0, atol=1e-6, msg=k)
    for a, b, c in zip(unmerged, merged, _encode(model, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in FAMILIES if not get_family(n).mergeable])
def test_non_mergeable_refuses(tiny, name):
    model, family = _adapted(tiny, name)
    with pytest.raises(AdapterError, match="cannot be merged"):
        family.layers[0].merge()
    with pytest.raises(AdapterError):
        merge_to_stock(model)
    assert any(isinstance(m, UnfusedAttention) for m in model.modules())  # nothing was changed


@pytest.mark.parametrize("name", FAMILIES)
def test_adapter_only_save_load_round_trip(tiny, inputs, name):
    torch.manual_seed(2)
    model, family = _adapted(tiny, name)
    _randomise(family)
    prefix = get_family(name).prefix
    state = {k: v for k, v in model.state_dict().items() if prefix in k}
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    torch.manual_seed(3)  # a different init, overwritten by the load
    fresh, _ = _adapted(tiny, name)
    result = fresh.load_state_dict(loaded, strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if prefix in k]
    for a, b in zip(_encode(model, inputs), _encode(fresh, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- trainable-parameter counts on ViT-B/16 (docs/methods.md: one section per family) -----------------------------------------
VIT_B = {"vision": (768, 3072, 12), "text": (512, 2048, 12)}  # width, MLP width, blocks


def _shapes(matrices: list[str]):
    """(d_in, d_out) of every adapted matrix of ViT-B/16, both towers."""
    for d, mlp, depth in VIT_B.values():
        dims = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc": (d, mlp), "proj": (mlp, d)}
        for _ in range(depth):
            yield from (dims[m] for m in matrices)


def _expected(name: str, matrices: list[str], cfg) -> int:
    if name == "lora":
        return sum(cfg.r * (i + o) for i, o in _shapes(matrices))
    if name == "codyra":
        return sum(cfg.r * (i + o) + cfg.r for i, o in _shapes(matrices))
    if name == "adalora":
        return sum(cfg.init_r * (i + o) + cfg.init_r for i, o in _shapes(matrices))
    if (
        name == "rlrr"
    ):  # s_left (d_out·r), s_right (r·d_in), shift (d_out); SSF (scale + shift) after 2 LNs per
        # block, and after each tower's embedding and final norm
        ssf = sum(2 * d * (2 * depth + 2) for d, _, depth in VIT_B.values()) if cfg.ssf else 0
        return sum(cfg.r * (i + o) + o for i, o in _shapes(matrices)) + ssf
    if name == "dra":  # D (r_max·d_in), U (d_out·r_max), gate w and b (2·d_out)
        r = max(cfg.group_ranks)
        return sum(r * (i + o) + (2 * o if cfg.channel_response else 0) for i, o in _shapes(matrices))
    raise KeyError(name)


COUNT_CASES = [
    ("lora", {"r": 2}, ["q", "k", "v"], 184_320),  # docs/methods.md, CLIP-LoRA
    ("codyra", {}, ALL_MATRICES, 4_425_984),  # 2,655,360 + 1,770,624 (section 2)
    ("rlrr", {}, ALL_MATRICES, 288_768 + 192_512),  # section 3 (288,768 for ViT-B); text: its analogue
    ("adalora", {}, ["q", "k", "v"], None),
    ("dra", {}, ["o", "proj"], None),
]


@pytest.fixture(scope="module")
def vit_b16() -> nn.Module:
    model, _ = build_model("ViT-B-16", None)
    return model


@pytest.mark.parametrize(("name", "overrides", "matrices", "stated"), COUNT_CASES)
def test_trainable_count_vit_b16(vit_b16, name, overrides, matrices, stated):
    cls = get_family(name)
    cfg = cls.config_cls(**overrides)
    model = copy.deepcopy(vit_b16)
    family = cls(cfg, 100)
    attach_adapters(model, family, _sites(model, name, matrices))
    count = sum(p.numel() for p in family.trainable_parameters())
    assert count == _expected(name, matrices, cfg)
    if stated is not None:
        assert count == stated
    del model


def test_every_family_has_a_count_case():
    assert set(FAMILIES) <= {c[0] for c in COUNT_CASES}, (
        "add a ViT-B/16 parameter-count case for the new family"
    )
