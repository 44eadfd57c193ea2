"""Family maths on hand-picked values: CoDyRA thresholds and κ ramp, AdaLoRA schedule, RLRR folding, DRA
grouping, continual metrics, telemetry export and plots, and ranks that really change during training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ranksearch.adapters import get_family
from ranksearch.adapters.base import Site
from ranksearch.adapters.codyra import kappa_at, threshold_code, threshold_paper
from ranksearch.adapters.dra import group_tokens, prefix_masks
from ranksearch.adapters.inject import attach_adapters
from ranksearch.adapters.placement import resolve_sites
from ranksearch.adapters.rlrr import RlrrLinear, SsfLayerNorm
from ranksearch.continual import average, boundary, continual_metrics, last, transfer
from ranksearch.errors import AdapterError
from ranksearch.models.clip import build_model, tower_blocks
from ranksearch.tracking.allocation import allocation_rows, allocation_table, rank_pattern
from ranksearch.tracking.plots import plot_allocation_heatmap, plot_rank_over_time

# --- CoDyRA ------------------------------------------------------------------------------------------------------


def test_codyra_code_threshold_zeroes_originals_between_kappa_and_two_kappa():
    k = 0.1
    g = torch.tensor([0.5, 0.15, 0.2, 0.1, 0.05, -0.15, -0.5, 0.0])
    out = threshold_code(g, k)
    # 0.5 -> 0.4; 0.15 -> 0.05 -> 0; 0.2 -> 0.1 (not < κ, kept); 0.1 untouched (not > κ, not < κ); 0.05 -> 0
    torch.testing.assert_close(out, torch.tensor([0.4, 0.0, 0.1, 0.1, 0.0, 0.0, -0.4, 0.0]))


def test_codyra_paper_threshold_is_soft_threshold():
    k = 0.1
    g = torch.tensor([0.5, 0.15, 0.2, 0.1, 0.05, -0.15, -0.5, 0.0])
    torch.testing.assert_close(
        threshold_paper(g, k), torch.tensor([0.4, 0.05, 0.1, 0.0, 0.0, -0.05, -0.4, 0.0])
    )


def test_codyra_operators_are_identity_at_kappa_zero():
    g = torch.randn(16)
    torch.testing.assert_close(threshold_code(g, 0.0), g)
    torch.testing.assert_close(threshold_paper(g, 0.0), g)


def test_codyra_kappa_ramp_matches_the_code_loop():
    total, frac, num, kmax = 500, 0.5, 50, 5e-3
    # independent replay of models/codyra.py::train_model's threshold bookkeeping
    lambdas = np.linspace(0, kmax, num)
    dense = frac * total
    every = int((total - dense) // num)
    tid, kappa, expected = 0, lambdas[0], []
    for it in range(total):
        if it >= dense and it % every == 0:
            tid += 1
            kappa = lambdas[min(num - 1, tid)]
        expected.append(kappa)
    got = [kappa_at(it, total, frac, num, kmax) for it in range(total)]
    assert got == pytest.approx(expected)
    assert kappa_at(249, total, frac, num, kmax) == 0.0
    assert kappa_at(250, total, frac, num, kmax) == pytest.approx(kmax / 49)
    assert kappa_at(254, total, frac, num, kmax) == pytest.approx(kmax / 49)
    assert kappa_at(255, total, frac, num, kmax) == pytest.approx(2 * kmax / 49)
    assert kappa_at(490, total, frac, num, kmax) == pytest.approx(kmax)
    assert kappa_at(499, total, frac, num, kmax) == pytest.approx(kmax)


def test_codyra_kappa_short_run_still_ramps():
    # T = 40, frac 0.5: (40 - 20) // 50 = 0 in the code (never ramps); we step every iteration instead.
    assert kappa_at(19, 40, 0.5, 50, 1.0) == 0.0
    assert kappa_at(20, 40, 0.5, 50, 1.0) == pytest.approx(1 / 49)
    assert kappa_at(39, 40, 0.5, 50, 1.0) == pytest.approx(20 / 49)


# --- AdaLoRA -----------------------------------------------------------------------------------------------------


def _peft_schedule(step, b0, bt, tinit, tfinal, total, delta_t):
    """Independent transcription of PEFT RankAllocator.budget_schedule."""
    if step <= tinit:
        return b0, False
    if step > total - tfinal:
        return bt, True
    mul_coeff = 1 - (step - tinit) / (total - tfinal - tinit)
    return int((b0 - bt) * (mul_coeff**3) + bt), step % delta_t == 0


def test_adalora_cubic_schedule():
    cls = get_family("adalora")
    cfg = cls.config_cls(init_r=12, target_r=4, t_init_frac=0.1, t_final_frac=0.2, delta_t=5)
    family = cls(cfg, 200)
    family.layers = [type("L", (), {"r": 12, "params_per_rank": lambda self: 1})() for _ in range(10)]
    b0, bt = family.budgets()
    assert (b0, bt) == (120, 40)
    for step in [1, 20, 21, 25, 50, 99, 100, 159, 160, 161, 200]:
        assert family.budget_schedule(step) == _peft_schedule(step, 120, 40, 20, 40, 200, 5), step
    assert family.budget_schedule(60)[0] == int(80 * (1 - 40 / 140) ** 3 + 40)


# --- RLRR --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 3])
def test_rlrr_fold_equals_unfolded_forward(r):
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = RlrrLinear(base, Site("vision", 0, "q"), r, "kaiming")
    with torch.no_grad():
        layer.rlrr_shift.normal_()
    x = torch.randn(2, 4, 6)
    w, b = base.weight.detach().clone(), base.bias.detach().clone()
    m = layer.rlrr_scale_left @ layer.rlrr_scale_right  # (d_out, d_in)
    expected = x @ (w * (1 + m)).t() + b + layer.rlrr_shift
    if r == 1:  # the paper's form diag(s_left) W diag(s_right)
        dw = torch.diag(layer.rlrr_scale_left[:, 0]) @ w @ torch.diag(layer.rlrr_scale_right[0])
        torch.testing.assert_close(layer.delta_weight(), dw)
    with torch.no_grad():
        unfolded = layer(x)
        layer.merge()
        folded = layer(x)
    torch.testing.assert_close(unfolded, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(folded, expected, rtol=0, atol=1e-5)


def test_ssf_folds_into_layernorm_affine():
    torch.manual_seed(0)
    ln = nn.LayerNorm(8)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    layer = SsfLayerNorm(ln, Site("vision", 0, "ln_1"), "kaiming")
    x = torch.randn(3, 8)
    gamma, beta = ln.weight.detach().clone(), ln.bias.detach().clone()
    s, f = layer.rlrr_ssf_scale.detach(), layer.rlrr_ssf_shift.detach()
    with torch.no_grad():
        before = layer(x)
        layer.merge()
    torch.testing.assert_close(ln.weight, gamma * s)
    torch.testing.assert_close(ln.bias, beta * s + f)
    torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-5)


# --- DRA-style ---------------------------------------------------------------------------------------------------


def test_dra_groups_by_quantile_with_forced_top():
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6]])  # 8 tokens; token 0 = CLS
    groups = group_tokens(scores, (0.25, 0.5, 0.25), top=torch.tensor([0]))
    # top 2: CLS (forced) and 0.9; middle 4: 0.8, 0.7, 0.6, 0.3; bottom 2: 0.2, 0.1
    assert groups.tolist() == [[0, 0, 2, 1, 2, 1, 1, 1]]
    unforced = group_tokens(scores, (0.25, 0.5, 0.25))
    assert unforced[0, 0] == 2 and unforced[0, 1] == 0


def test_dra_prefix_masks():
    masks = prefix_masks((8, 4, 0), 8)
    assert masks.tolist() == [[1.0] * 8, [1.0] * 4 + [0.0] * 4, [0.0] * 8]


def test_dra_uses_group_ranks_per_token():
    model, _ = build_model("rs-tiny-clip", None)
    cls = get_family("dra")
    family = cls(cls.config_cls(group_ranks=(4, 1), group_fractions=(0.5, 0.5), channel_response=False), 10)
    sites = resolve_sites("both", [0], ["o"], {t: len(b) for t, b in tower_blocks(model).items()})
    attach_adapters(model, family, sites)
    seen = {}
    for layer in family.layers:
        orig = layer._token_masks

        def spy(x, orig=orig, key=layer.site.tower, ctx=layer.ctx):
            m = orig(x)
            seen[key] = (m.sum(-1), ctx.groups)
            return m

        layer._token_masks = spy
    tokens = torch.randint(1, 1000, (2, 16))
    tokens[:, 6] = 49407
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 32, 32))
        model.encode_text(tokens)
    for ranks, groups in seen.values():
        assert set(ranks.unique().tolist()) == {4.0, 1.0}
        assert (ranks == torch.where(groups == 0, 4.0, 1.0)).all()
    assert (seen["vision"][1][:, 0] == 0).all()  # CLS in the top group
    assert (seen["text"][1][:, 6] == 0).all()  # EOT in the top group
    with pytest.raises(AdapterError, match="placement.matrices"):
        attach_adapters(copy.deepcopy(model), cls(cls.config_cls(), 10), [Site("vision", 0, "q")])


# --- continual metrics and boundary ----------------------------------------------------------------------------


def test_continual_metrics_on_hand_made_matrix():
    acc = [[80, 50, 40], [70, 90, 45], [60, 85, 95]]
    assert transfer(acc) == pytest.approx(((50) + (40 + 45) / 2) / 2)  # column 1: t<1; column 2: t<2
    assert average(acc) == pytest.approx(
        np.mean([np.mean([80, 70, 60]), np.mean([50, 90, 85]), np.mean([40, 45, 95])])
    )
    assert last(acc) == pytest.approx((60 + 85 + 95) / 3)
    assert set(continual_metrics(acc)) == {"transfer", "average", "last"}
    with pytest.raises(ValueError):
        last([[1, 2, 3]])


def test_codyra_boundary_folds_and_reinitialises():
    torch.manual_seed(0)
    model, _ = build_model("rs-tiny-clip", None)
    cls = get_family("codyra")
    family = cls(cls.config_cls(r=4), 10)
    sites = resolve_sites("vision", "all", ["q", "fc"], {t: len(b) for t, b in tower_blocks(model).items()})
    attach_adapters(model, family, sites)
    with torch.no_grad():
        for layer in family.layers:
            layer.codyra_B.normal_(0, 0.1)
            layer.codyra_gate[:2] = 0.0  # two pruned components
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.encode_image(images)
    folded = boundary(family)
    assert set(folded.values()) == {2}
    for layer in family.layers:
        assert not layer.merged and layer.rank() == 4 and layer.codyra_B.abs().sum() == 0
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), before, rtol=0, atol=1e-5)
    dra = get_family("dra")
    with pytest.raises(AdapterError):
        boundary(dra(dra.config_cls(), 10))


# --- telemetry ---------------------------------------------------------------------------------------------------


def _train(name: str, cfg, steps: int, matrices=("q", "v", "fc")):
    torch.manual_seed(0)
    model, _ = build_model("rs-tiny-clip", None)
    cls = get_family(name)
    family = cls(cfg, steps)
    sites = resolve_sites("both", "all", list(matrices), {t: len(b) for t, b in tower_blocks(model).items()})
    attach_adapters(model, family, sites)
    opt = torch.optim.Adam(family.trainable_parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 1000, (4, 16), generator=g)
    tokens[:, 8] = 49407
    target_i, target_t = torch.randn(4, 64, generator=g), torch.randn(4, 64, generator=g)
    rows = allocation_rows(family.layers, 0)
    for step in range(1, steps + 1):
        loss = (model.encode_image(images) - target_i).pow(2).mean() + (
            model.encode_text(tokens) - target_t
        ).pow(2).mean()
        reg = family.regularizer()
        if reg is not None:
            loss = loss + reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        family.after_step(step)
        if step % 5 == 0:
            rows += allocation_rows(family.layers, step)
    return family, rows


def test_codyra_ranks_change_during_training():
    cfg = get_family("codyra").config_cls(r=8, kappa_max=0.5, lambda_num=5, dense_frac=0.5)
    family, rows = _train("codyra", cfg, 30)
    ranks = [layer.rank() for layer in family.layers]
    assert all(r <= 8 for r in ranks) and sum(ranks) < 8 * len(ranks)
    assert rows[0]["rank"] == 8 and rows[-1]["step"] == 30
    assert {r["effective_rank"] for r in rows if r["step"] == 30} == set(ranks)


def test_adalora_ranks_change_during_training(tmp_path):
    cfg = get_family("adalora").config_cls(init_r=4, target_r=2, t_init_frac=0.2, t_final_frac=0.2, delta_t=2)
    family, rows = _train("adalora", cfg, 25)
    ranks = [layer.rank() for layer in family.layers]
    assert sum(ranks) == 2 * len(ranks)  # b_T = target_r × #modules, pooled over both towers
    assert len(set(ranks)) > 1 or ranks[0] == 2
    budgets = [h["budget"] for h in family.rank_history]
    assert budgets == sorted(budgets, reverse=True) and budgets[0] > budgets[-1] == 2 * len(ranks)
    assert family.regularizer() is not None
    table = allocation_table(rows)
    assert table.num_rows == len(rows) and "effective_rank" in table.column_names
    pattern = rank_pattern(rows)
    assert len(pattern) == len(family.layers) and sum(pattern.values()) == sum(ranks)
    assert "visual.transformer.resblocks.0.attn.q_proj" in pattern
    assert "transformer.resblocks.1.mlp.c_fc" in pattern
    heat = plot_allocation_heatmap(rows, tmp_path / "heat.png")
    over = plot_rank_over_time(rows, tmp_path / "over.png")
    for png in (heat, over):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_rank_pattern_export_hand_made():
    rows = [
        {
            "step": 0,
            "tower": "vision",
            "layer": 0,
            "module": "q",
            "rank": 8,
            "max_rank": 8,
            "effective_rank": 8,
        },
        {
            "step": 5,
            "tower": "vision",
            "layer": 0,
            "module": "q",
            "rank": 3,
            "max_rank": 8,
            "effective_rank": 2,
        },
        {
            "step": 5,
            "tower": "text",
            "layer": 2,
            "module": "proj",
            "rank": 1,
            "max_rank": 8,
            "effective_rank": 1,
        },
        {
            "step": 5,
            "tower": "vision",
            "layer": 1,
            "module": "ln_1",
            "rank": 0,
            "max_rank": 0,
            "effective_rank": 0,
        },
    ]
    assert rank_pattern(rows) == {
        "visual.transformer.resblocks.0.attn.q_proj": 3,
        "transformer.resblocks.2.mlp.c_proj": 1,
    }
    assert rank_pattern(rows, effective=True)["visual.transformer.resblocks.0.attn.q_proj"] == 2
