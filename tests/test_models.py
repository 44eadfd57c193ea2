"""Model construction: random init, local checkpoint files, local-dir, and clear errors offline."""

from __future__ import annotations

import json

import pytest
import torch

from ranksearch.errors import ModelLoadError
from ranksearch.models.clip import CONFIG_DIR, build_model, tower_blocks


def test_random_init_is_frozen_and_in_eval_mode():
    model, size = build_model("rs-tiny-clip", None)
    assert size == 32 and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert {t: len(b) for t, b in tower_blocks(model).items()} == {"vision": 3, "text": 2}


def test_checkpoint_path_round_trip(tmp_path):
    torch.manual_seed(3)
    model, _ = build_model("rs-tiny-clip", None)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded, _ = build_model("rs-tiny-clip", str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_local_dir_schema(tmp_path):
    model, _ = build_model("rs-tiny-clip", None)
    folder = tmp_path / "tiny"
    folder.mkdir()
    cfg = json.loads((CONFIG_DIR / "rs-tiny-clip.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    loaded, size = build_model("rs-tiny-clip", f"local-dir:{folder}")
    assert size == 32
    torch.testing.assert_close(loaded.logit_scale, model.logit_scale)
    torch.testing.assert_close(loaded.visual.conv1.weight, model.visual.conv1.weight)


def test_missing_checkpoint_and_unknown_model_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_model("rs-tiny-clip", str(tmp_path / "nope.pt"))
    with pytest.raises(ModelLoadError, match="unknown open_clip model"):
        build_model("not-a-model", None)


def test_pretrained_tag_offline_fails_fast_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline"):  # HF_HUB_OFFLINE: fails at once, no retries
        build_model("RN50", "openai")


def test_openai_tags_build_quick_gelu(monkeypatch):
    """OpenAI weights were trained with QuickGELU; open_clip's plain ViT-B-16 config has nn.GELU (and only warns)."""
    import open_clip
    from open_clip.transformer import QuickGELU

    from ranksearch.models.clip import activation_of, model_activation, needs_quick_gelu

    # the tag metadata decides, not a hard-coded list
    assert open_clip.get_pretrained_cfg("ViT-B-16", "openai")["quick_gelu"] is True
    assert needs_quick_gelu("ViT-B-16", "openai") and needs_quick_gelu("RN50", "openai")
    assert not needs_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") and not needs_quick_gelu("ViT-B-16", None)
    assert not needs_quick_gelu("rs-tiny-clip", "/some/checkpoint.pt")
    # build the real ViT-B-16 for the tag without a download: open_clip finds "no weights" and initialises
    # randomly, on the meta device (no memory, ~2 s); the architecture is what the tag decided
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: None)
    model, size = build_model("ViT-B-16", "openai", device="meta")
    assert size == 224
    mlp_activations = {type(b.mlp.gelu) for blocks in tower_blocks(model).values() for b in blocks}
    assert mlp_activations == {QuickGELU}
    assert activation_of(model) == model_activation("ViT-B-16", "openai") == "quick_gelu"
    assert model_activation("ViT-B-16", None) == model_activation("ViT-B-16", "laion2b_s34b_b88k") == "gelu"


def test_activation_of_local_dir_follows_its_config(tmp_path):
    from ranksearch.models.clip import activation_of, model_activation

    cfg = json.loads((CONFIG_DIR / "rs-tiny-clip.json").read_text())
    folder = tmp_path / "quick"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**cfg, "quick_gelu": True}}))
    model, _ = build_model("rs-tiny-clip", None)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    loaded, _ = build_model("rs-tiny-clip", f"local-dir:{folder}")
    assert activation_of(loaded) == model_activation("rs-tiny-clip", f"local-dir:{folder}") == "quick_gelu"
    assert activation_of(model) == model_activation("rs-tiny-clip", "shapeworld") == "gelu"
