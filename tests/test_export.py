"""Export: the merged checkpoint loads with open_clip alone and reproduces the adapted model's logits."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ranksearch.config import validate_trial_config
from ranksearch.errors import RanksearchError
from ranksearch.export import export_trial, rebuild_adapted_model
from ranksearch.trial import run_trial


def logits(model, images, tokens):
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        return model.logit_scale.exp() * img @ txt.t()


@pytest.mark.parametrize("family", ["lora", "dra"])
def test_exported_model_reproduces_adapted_logits(tmp_path, tiny_inputs, family):
    config = validate_trial_config(
        {
            "model": {"pretrained": None},
            "adapter": {"family": family},
            "placement": {"matrices": ["q", "k", "v"] if family == "lora" else ["o", "proj"]},
            "data": {"shots": 2, "test_per_class": 2},
            "train": {"iterations": 6, "batch_size": 16, "lr": 1e-2},
            "eval": {"evals": 1, "zero_shot": False},
            "tracking": {"enabled": False},
        }
    )
    run_trial(config, output_dir=tmp_path / "trial", progress=False)
    adapted, _, _ = rebuild_adapted_model(tmp_path / "trial")
    manifest = export_trial(tmp_path / "trial", tmp_path / "export")
    plain = open_clip.create_model(
        f"local-dir:{tmp_path / 'export'}"
    )  # open_clip alone, no ranksearch modules
    plain.eval()
    assert not any("ranksearch" in type(m).__module__ for m in plain.modules())
    images, tokens = tiny_inputs
    want, got = logits(adapted, images, tokens), logits(plain, images, tokens)
    rank_pattern = json.loads((tmp_path / "export" / "rank_pattern.json").read_text())
    assert rank_pattern and (tmp_path / "export" / "adapter.safetensors").is_file()
    if family == "lora":
        assert manifest["merged"] is True
        assert (want - got).abs().max() <= 1e-4
    else:  # not mergeable: base model + adapter, and the manifest says so
        assert manifest["merged"] is False and "not mergeable" in manifest["note"]


def test_export_never_overwrites(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(RanksearchError, match="not empty"):
        export_trial(tmp_path, tmp_path / "out")
