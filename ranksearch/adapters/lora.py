"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): fixed-rank LoRA, docs/methods.md, CLIP-LoRA.

    y = x W0ᵀ + b + s · Drop_p(x) Aᵀ Bᵀ,   A ∈ R^{r×d_in} (Kaiming-uniform, a=√5),  B ∈ R^{d_out×r} (zeros)

with s = α/√r (the CLIP-LoRA code; rsLoRA-style) or α/r. Dropout acts on the LoRA input only. A per-component
``lora_mask`` (ones by default) lets a global rank budget switch components off without changing shapes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ranksearch.adapters.base import AdapterFamily, AdapterLayer, Site
from ranksearch.adapters.budget import budget_after_step
from ranksearch.adapters.configs import LoraConfig
from ranksearch.adapters.registry import register_family


def lora_scale(alpha: float, r: int, scaling: str) -> float:
    return alpha / math.sqrt(r) if scaling == "sqrt" else alpha / r


class LoraLinear(AdapterLayer):
    """``base(x) + s · ((Drop(x) Aᵀ) ⊙ mask) Bᵀ``; shapes: A (r, d_in), B (d_out, r), mask (r,)."""

    def __init__(self, base: nn.Linear, site: Site, r: int, alpha: float, scaling: str, dropout: float):
        super().__init__(base, site)
        w = base.weight
        self.r, self.scale = r, lora_scale(alpha, r, scaling)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("lora_mask", torch.ones(r, device=w.device))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()  # (..., r)
        # mask and scale applied on the r-wide activations (not the d_out-wide output): one elementwise pass less
        # over (..., d_out) in the forward and in the backward; same product up to rounding
        return (h * (self.lora_mask * self.scale)) @ self.lora_B.t()  # (..., d_out)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B * self.lora_mask) @ self.lora_A * self.scale  # (d_out, d_in)

    def lowrank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Module]:
        return self.lora_A, self.lora_mask * self.scale, self.lora_B, self.lora_dropout

    def rank(self) -> int:
        return int(self.lora_mask.count_nonzero())

    def max_rank(self) -> int:
        return self.r

    # --- global rank budget (ranksearch.adapters.budget) and task boundaries ----------------------------------
    def rank_mask(self) -> torch.Tensor:
        return self.lora_mask

    def component_scores(self) -> torch.Tensor:
        """Norm of each rank-1 component s·B[:, i] A[i, :] = s·‖B_i‖·‖A_i‖ (LoRA has no learned importance)."""
        return (
            self.lora_B.detach().norm(dim=0) * self.lora_A.detach().norm(dim=1) * self.scale
        ).float()  # (r,)

    def params_per_rank(self) -> int:
        return self.base.in_features + self.base.out_features

    @torch.no_grad()
    def reinitialize(self) -> bool:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B.zero_()
        self.lora_mask.fill_(1)
        return True


@register_family
class Lora(AdapterFamily):
    name = "lora"
    prefix = "lora_"
    config_cls = LoraConfig
    mergeable = True
    description = "CLIP-LoRA: fixed-rank LoRA, s = alpha/sqrt(r), B = 0 init (Zanella & Ben Ayed 2024)"

    def make_layer(self, base: nn.Linear, site: Site) -> LoraLinear:
        c = self.config
        return LoraLinear(base, site, self.site_rank(site, c.r), c.alpha, c.scaling, c.dropout)

    def after_step(self, step: int) -> None:
        budget_after_step(self, step)  # no-op without a budget
