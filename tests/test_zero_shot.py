"""The zero-shot row is the untouched pretrained model, for every registered family.

A fresh adapter is not identity for every family (RLRR's Kaiming-initialised multipliers and SSF change the
outputs before any training), so the zero-shot evaluation must not run through it.
"""

from __future__ import annotations

import types

import pytest
import torch

from ranksearch.adapters import all_families, get_family
from ranksearch.adapters.inject import unadapted
from ranksearch.config import validate_trial_config
from ranksearch.models.attention import UnfusedAttention
from ranksearch.models.clip import build_model
from ranksearch.session import TrialSession
from ranksearch.trial import TrialRun, seed_everything

FAMILIES = sorted(all_families())
# every matrix a family accepts, so attention is unfused and the MLP is adapted too
MATRICES = {"dra": ["o", "proj"]}


def _config(family: str):
    return validate_trial_config(
        {
            "seed": 3,
            "model": {"pretrained": None},
            "data": {"shots": 1, "test_per_class": 2},
            "adapter": {"family": family},
            "placement": {"matrices": MATRICES.get(family, ["q", "k", "v", "o", "fc", "proj"])},
            "train": {"iterations": 1},
            "eval": {"evals": 1},
        }
    )


def _untouched(config, run: TrialRun) -> tuple[torch.nn.Module, dict[str, float]]:
    """The same pretrained model built afresh (same seed), never adapted, scored on the run's own task."""
    seed_everything(config.seed)
    model, _ = build_model(config.model.name, config.model.pretrained)
    s = run.session
    stub = types.SimpleNamespace(model=model, tokenizer=s.tokenizer, device=s.device, autocast=s.autocast)
    stub.config = config
    stub.text_features = lambda names, templates: TrialSession.text_features(stub, names, templates)
    metrics = {
        **TrialSession.evaluate(stub, run.task, "val"),
        **TrialSession.evaluate(stub, run.task, "test"),
    }
    return model, {f"zs/{k}": v for k, v in metrics.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_shot_is_the_untouched_model(family, tmp_path):
    config = _config(family)
    run = TrialRun(config, tmp_path / family)
    fresh, expected = _untouched(config, run)
    assert run.zero_shot == expected  # every zs/ metric, exactly

    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    tokens = run.session.tokenizer(["a red star", "a blue ring"])
    with torch.no_grad():
        want = fresh.encode_image(images), fresh.encode_text(tokens)
        adapted = run.model.encode_image(images), run.model.encode_text(tokens)
        with unadapted(run.model) as bare:
            got = bare.encode_image(images), bare.encode_text(tokens)
        again = run.model.encode_image(images), run.model.encode_text(tokens)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    # the adapter is back, unchanged, and (where the family's init is not identity) it does change the outputs
    assert all(torch.equal(a, b) for a, b in zip(again, adapted, strict=True))
    assert any(isinstance(m, UnfusedAttention) for m in run.model.modules()) or family == "dra"
    family_obj = get_family(family)(config.adapter, 1)
    if not family_obj.identity_at_init():
        assert not torch.allclose(adapted[0], want[0], atol=1e-4)
