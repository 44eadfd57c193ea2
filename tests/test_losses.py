"""The papers' training losses on hand-computed examples: CoDyRA's symmetric loss and the DRA-style L1 term."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ranksearch.training.loop import clip_loss, text_to_image_loss


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    z = math.log(sum(math.exp(v - m) for v in row)) + m
    return [v - z for v in row]


def test_symmetric_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0], [0.5, -1.0]])  # 3 images x 2 classes
    labels = torch.tensor([0, 1, 0])
    # image -> text: mean over images of -log softmax over classes at the label
    i2t = -(_log_softmax([2.0, 0.0])[0] + _log_softmax([1.0, 3.0])[1] + _log_softmax([0.5, -1.0])[0]) / 3
    # text -> image: class 0's text over the 3 images, target images 0 and 2 (multi-hot, not normalised);
    # class 1's text, target image 1; averaged over the class rows
    col0, col1 = _log_softmax([2.0, 1.0, 0.5]), _log_softmax([0.0, 3.0, -1.0])
    t2i = (-(col0[0] + col0[2]) - col1[1]) / 2
    assert float(clip_loss(logits, labels, "ce")) == pytest.approx(i2t, rel=1e-6)
    assert float(clip_loss(logits, labels, "symmetric")) == pytest.approx(i2t + t2i, rel=1e-6)
    # earlier continual tasks' classes are rows with no image: they add nothing but count in the mean
    assert float(text_to_image_loss(logits, labels, prior_classes=3)) == pytest.approx(t2i * 2 / 5, rel=1e-6)


def test_text_to_image_term_replicates_codyras_code():
    """The code (models/codyra.py::train_model): logits over [seen classes, current classes], seen columns at -inf
    for image->text; t_logits = s·embeddings·outᵀ against an (all classes × batch) membership mask."""
    torch.manual_seed(0)
    seen, cur, batch, d = 4, 3, 6, 8
    embeddings = F.normalize(torch.randn(seen + cur, d), dim=-1)
    out = F.normalize(torch.randn(batch, d), dim=-1)
    labels = torch.randint(0, cur, (batch,))
    scale = 100.0
    code_labels = labels + seen
    logits_per_image = scale * out @ embeddings.t()
    logits_per_image[:, :seen] = float("-inf")
    ce_loss = F.cross_entropy(logits_per_image, code_labels)
    mask = torch.eq(code_labels.view(-1, 1), torch.arange(seen + cur).view(-1, 1).T).float().t()
    loss_ce_t = F.cross_entropy(scale * embeddings @ out.t(), mask)
    ours = clip_loss(scale * out @ embeddings[seen:].t(), labels, "symmetric", prior_classes=seen)
    torch.testing.assert_close(ours, ce_loss + loss_ce_t)


def _tiny_dra(**cfg):
    from ranksearch.adapters import get_family
    from ranksearch.adapters.inject import attach_adapters
    from ranksearch.adapters.placement import resolve_sites
    from ranksearch.models.clip import build_model, tower_blocks

    model, _ = build_model("rs-tiny-clip", None)
    depths = {t: len(b) for t, b in tower_blocks(model).items()}
    family = get_family("dra")(get_family("dra").config_cls(**cfg), 10)
    attach_adapters(model, family, resolve_sites("vision", "all", ["o", "proj"], depths))
    return model.train(), family


def test_dra_l1_is_on_the_gate_activations(tiny_inputs):
    images, _ = tiny_inputs
    model, family = _tiny_dra(l1_weight=1e-2)
    model.encode_image(images)
    reg = family.regularizer()
    assert float(reg.detach()) == pytest.approx(
        1e-2 * 0.5
    )  # every gate is sigmoid(0) = 0.5 at init: mean |c| = 0.5
    reg.backward()
    gate_grads = [layer.dra_gate_b.grad for layer in family.layers]
    assert all(g is not None and g.abs().sum() > 0 for g in gate_grads)  # it acts through the activations
    assert family.regularizer() is None  # consumed: a step without a forward adds nothing
    with torch.no_grad():
        model.eval()
        model.encode_image(images)
    assert family.regularizer() is None  # evaluation forwards are not regularised


def test_dra_l1_on_weights_is_large_at_init_which_is_why_it_is_not_the_default(tiny_inputs):
    images, _ = tiny_inputs
    model, family = _tiny_dra(l1_weight=1e-2, l1_target="adapter")
    model.encode_image(images)
    weights_term = float(family.regularizer().detach())
    assert weights_term > 20 * 1e-2 * 0.5  # the Kaiming-initialised D alone


def test_dra_l1_without_channel_response_uses_the_bottleneck_activations(tiny_inputs):
    images, _ = tiny_inputs
    model, family = _tiny_dra(l1_weight=1.0, channel_response=False)
    model.encode_image(images)
    reg = family.regularizer()
    assert reg is not None and float(reg.detach()) > 0
