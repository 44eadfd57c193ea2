"""Class text features: prompts -> normalised text embeddings, averaged over templates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tokenize_prompts(tokenizer, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """Token ids (C * T, context) for every class × template, class-major."""
    return tokenizer([t.format(c) for c in classnames for t in templates])


def class_text_features(model: nn.Module, tokens: torch.Tensor, num_templates: int) -> torch.Tensor:
    """(C * T, context) token ids -> (C, D) unit-norm class embeddings (mean over templates, renormalised).

    Gradients flow when the text tower is adapted; callers wrap it in ``torch.no_grad`` otherwise.
    """
    feats = F.normalize(model.encode_text(tokens), dim=-1)  # (C*T, D)
    feats = feats.view(-1, num_templates, feats.shape[-1]).mean(dim=1)  # (C, D)
    return F.normalize(feats, dim=-1)
