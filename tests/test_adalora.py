"""AdaLoRA against PEFT's own ``RankAllocator`` (peft is in the dev extras), non-finite gradients, and resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")

from ranksearch.adapters.adalora import Adalora, AdaloraConfig, SVDLinear  # noqa: E402
from ranksearch.adapters.base import Site  # noqa: E402

SHAPES = [(8, 6), (6, 5), (5, 7)]  # (d_in, d_out) of three adapted linears


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.m0, self.m1, self.m2 = (nn.Linear(i, o) for i, o in SHAPES)


def _pair(init_r: int, target_r: int, tinit: int, tfinal: int, delta_t: int, total: int):
    """A PEFT AdaLoRA model and ranksearch's family on the same three linears, starting from the same A, E, B."""
    torch.manual_seed(0)
    peft_cfg = peft.AdaLoraConfig(
        target_modules=["m0", "m1", "m2"], init_r=init_r, target_r=target_r, tinit=tinit, tfinal=tfinal,
        deltaT=delta_t, total_step=total, beta1=0.85, beta2=0.85,
    )  # fmt: skip
    theirs = peft.get_peft_model(_Toy(), peft_cfg)
    ours_cfg = AdaloraConfig(
        init_r=init_r,
        target_r=target_r,
        t_init_frac=tinit / total,
        t_final_frac=tfinal / total,
        delta_t=delta_t,
    )
    family = Adalora(ours_cfg, total)
    family.layers = [
        SVDLinear(nn.Linear(i, o), Site("vision", k, "q"), init_r, 8.0, 0.0)
        for k, (i, o) in enumerate(SHAPES)
    ]
    pairs = []
    for k, layer in enumerate(family.layers):
        mod = getattr(theirs.base_model.model, f"m{k}")
        trio = [
            (mod.lora_A["default"], layer.ada_A),
            (mod.lora_E["default"], layer.ada_E),
            (mod.lora_B["default"], layer.ada_B),
        ]
        with torch.no_grad():
            for a, b in trio:
                a.normal_(0, 0.5)  # E starts at 0 in both; give every element a value to score
                b.copy_(a)
        pairs += trio
    return theirs, family, pairs


def _drive(theirs, family, pairs, total, inject_inf_at=None):
    """Random parameter moves and gradients, identical on both sides; both allocators run after every step."""
    gen = torch.Generator().manual_seed(1)
    for step in range(1, total + 1):
        with torch.no_grad():
            for a, b in pairs:
                move = torch.randn(a.shape, generator=gen) * 0.05
                a.add_(move)
                b.add_(move)
        for a, b in pairs:
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        if step == inject_inf_at:
            pairs[0][1].grad[0, 0] = float("inf")  # ours only: PEFT has no such case to compare with
        theirs.base_model.update_and_allocate(step)
        family.after_step(step)
        yield step


@pytest.mark.parametrize(
    "init_r, target_r, tinit, tfinal, delta_t, total",
    [(4, 2, 0, 0, 1, 20), (6, 2, 3, 5, 2, 24), (5, 1, 4, 4, 3, 30), (3, 3, 0, 2, 1, 10)],
)
def test_budget_schedule_equals_peft(init_r, target_r, tinit, tfinal, delta_t, total):
    theirs, family, _ = _pair(init_r, target_r, tinit, tfinal, delta_t, total)
    allocator = theirs.base_model.rankallocator
    for step in range(0, total + 3):
        assert family.budget_schedule(step) == allocator.budget_schedule(step), f"step {step}"


@pytest.mark.parametrize(
    "init_r, target_r, tinit, tfinal, delta_t, total", [(4, 2, 2, 3, 2, 16), (6, 1, 0, 0, 1, 12)]
)
def test_importance_and_masks_equal_peft(init_r, target_r, tinit, tfinal, delta_t, total):
    theirs, family, pairs = _pair(init_r, target_r, tinit, tfinal, delta_t, total)
    allocator = theirs.base_model.rankallocator
    for step in _drive(theirs, family, pairs, total):
        for k, layer in enumerate(family.layers):
            their_e = getattr(theirs.base_model.model, f"m{k}").lora_E["default"]
            assert torch.equal(their_e.detach() == 0, layer.ada_E.detach() == 0), (
                f"mask differs at step {step}"
            )
            name = f"base_model.model.m{k}.lora_A.default"
            if name in allocator.exp_avg_ipt and allocator.exp_avg_ipt:
                avg, unc = family._ema[f"{layer.site.key}.A"]
                torch.testing.assert_close(avg, allocator.exp_avg_ipt[name], atol=1e-6, rtol=1e-6)
                torch.testing.assert_close(unc, allocator.exp_avg_unc[name], atol=1e-6, rtol=1e-6)
    final = sum(int((layer.ada_E != 0).sum()) for layer in family.layers)
    assert final == target_r * len(SHAPES)


def test_a_non_finite_gradient_leaves_every_score_finite():
    """One skipped fp16 step (an inf gradient) must not poison the EMAs: before the fix the module's scores became
    NaN for good and the allocator pruned it to rank 0."""
    theirs, family, pairs = _pair(4, 2, 0, 0, 1, 20)
    for step in _drive(theirs, family, pairs, 20, inject_inf_at=3):
        scores = family.triplet_scores()
        assert all(torch.isfinite(s).all() for s in scores), f"non-finite scores at step {step}"
    assert family.skipped_updates == 1
    assert all(layer.rank() > 0 for layer in family.layers)


def test_resumed_adalora_trial_equals_the_uninterrupted_one(tmp_path):
    from ranksearch.config import validate_trial_config
    from ranksearch.trial import run_trial

    config = validate_trial_config(
        {
            "model": {"pretrained": None},
            "data": {"task": "shapeworld", "shots": 2, "test_per_class": 2},
            "adapter": {
                "family": "adalora",
                "init_r": 4,
                "target_r": 1,
                "t_init_frac": 0.2,
                "beta1": 0.99,
                "beta2": 0.99,
            },
            "placement": {"matrices": ["q", "v"]},
            "train": {"iterations": 12, "batch_size": 8, "lr": 5e-3},
            "eval": {"evals": 3, "zero_shot": False},
            "tracking": {"enabled": False},
        }
    )
    states: list[dict] = []
    full = run_trial(
        config, output_dir=tmp_path / "full", progress=False, on_eval=lambda ev: states.append(ev.state())
    )
    first = states[0]
    assert first["step"] == 4 and first["family"]["ema"], "the EMAs travel in the resumable state"
    path = tmp_path / "state.pt"
    torch.save(first, path)
    resumed = run_trial(
        config, output_dir=tmp_path / "resumed", progress=False, resume=torch.load(path, weights_only=True)
    )
    assert resumed.metrics == pytest.approx(full.metrics, abs=1e-6)
    pattern = lambda d: (d / "rank_pattern.json").read_text()  # noqa: E731
    assert pattern(tmp_path / "full") == pattern(tmp_path / "resumed")


def test_trainer_state_carries_the_importance_emas():
    """Resume at the Trainer level: the loaded EMAs equal the saved ones and both trainers continue identically;
    a state without them continues differently (so the equality is not vacuous)."""
    from ranksearch.config import validate_trial_config
    from ranksearch.data import build_task
    from ranksearch.session import TrialSession

    config = validate_trial_config(
        {
            "model": {"pretrained": None},
            "data": {"task": "shapeworld", "shots": 2, "test_per_class": 2},
            "adapter": {"family": "adalora", "init_r": 4, "target_r": 1, "t_init_frac": 0.2},
            "placement": {"matrices": ["q", "v"]},
            "train": {"iterations": 12, "batch_size": 8, "lr": 5e-3},
            "tracking": {"enabled": False},
        }
    )

    def trainer():
        torch.manual_seed(0)
        session = TrialSession(config, 12)
        return session.trainer_for(build_task(config.data, session.image_size), 12)

    from ranksearch.adapters.io import adapter_state_dict

    a = trainer()
    for _ in range(4):
        a.train_step()
    state = copy.deepcopy(a.state_dict(adapter_state_dict(a.model)))
    b, c = trainer(), trainer()
    b.load_state_dict(state)
    amnesic = copy.deepcopy(state)
    amnesic["family"]["ema"] = {}
    c.load_state_dict(amnesic)
    assert set(b.family._ema) == set(a.family._ema) and b.family._ema
    for _ in range(4):
        a.train_step(), b.train_step(), c.train_step()
    for key, (avg, unc) in a.family._ema.items():
        torch.testing.assert_close(b.family._ema[key][0], avg, atol=0, rtol=0)
        torch.testing.assert_close(b.family._ema[key][1], unc, atol=0, rtol=0)
    assert any(not torch.equal(c.family._ema[k][0], v[0]) for k, v in a.family._ema.items())
