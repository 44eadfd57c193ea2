"""RLRR: residual-based low-rank rescaling (Dong et al., CVPR 2024), METHODS.md section 3.

On every targeted linear:

    W' = W + diag(s_left) W diag(s_right) = W ⊙ (1 + s_left s_rightᵀ),   b' = b + f

with the rank-r generalisation (Supp. F) ``W' = W + W ⊙ (S_left S_right)``, S_left ∈ R^{d_out×r},
S_right ∈ R^{r×d_in} (r = 1 is the paper's method). Optionally an SSF scale/shift after the LayerNorms of every
adapted block (``y' = y ⊙ s + f`` after ln_1 and ln_2), folded into the LN affine parameters at merge:
γ' = γ ⊙ s, β' = β ⊙ s + f. Everything folds back into plain open_clip weights.

Initialisation: "kaiming" (the code: Kaiming-uniform on the 2-D scale tensors, shift 0, SSF scale ~ N(1, 0.02),
shift ~ N(0, 0.02)) is **not identity at init**; "zero" sets S_left = 0 (S_right stays Kaiming so its gradient
is nonzero — zeroing both factors would leave both with zero gradient) and SSF scale 1, shift 0, so the model
starts exactly at the pretrained one.
"""

from __future__ import annotations

import torch
from torch import nn

from ranksearch.adapters.base import AdapterFamily, AdapterLayer, Site
from ranksearch.adapters.configs import RlrrConfig
from ranksearch.adapters.registry import register_family
from ranksearch.models.clip import tower_blocks


class RlrrLinear(AdapterLayer):
    """``y = x (W ⊙ (1 + S_left S_right))ᵀ + b + f``; shapes S_left (d_out, r), S_right (r, d_in), f (d_out,)."""

    def __init__(self, base: nn.Linear, site: Site, r: int, init: str):
        super().__init__(base, site)
        dev = base.weight.device
        self.r, self.init = r, init
        self.rlrr_scale_left = nn.Parameter(torch.empty(base.out_features, r, device=dev))
        self.rlrr_scale_right = nn.Parameter(torch.empty(r, base.in_features, device=dev))
        self.rlrr_shift = nn.Parameter(torch.empty(base.out_features, device=dev))
        self.reinitialize()

    @torch.no_grad()
    def reinitialize(self) -> bool:
        # kaiming_uniform_ on the 2-D tensors as in the code: S_left has fan_in r (U(±√6) at r = 1), S_right fan_in
        # d_in (U(±√(6/d_in))), METHODS.md section 3.
        nn.init.kaiming_uniform_(self.rlrr_scale_right)
        if self.init == "zero":
            self.rlrr_scale_left.zero_()
        else:
            nn.init.kaiming_uniform_(self.rlrr_scale_left)
        self.rlrr_shift.zero_()
        return True

    def _w(self) -> torch.Tensor:
        return self.base.weight.to(self.rlrr_scale_left.dtype)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (W ⊙ Σ_k sl_k sr_kᵀ)ᵀ = Σ_k ((x ⊙ sr_k) Wᵀ) ⊙ sl_k: r matmuls, no (d_out, d_in) product materialised.
        xs = x.to(self.rlrr_scale_right.dtype).unsqueeze(-2) * self.rlrr_scale_right  # (..., r, d_in)
        h = xs @ self._w().t()  # (..., r, d_out)
        return (h * self.rlrr_scale_left.t()).sum(-2) + self.rlrr_shift  # (..., d_out)

    def delta_weight(self) -> torch.Tensor:
        return self._w() * (self.rlrr_scale_left @ self.rlrr_scale_right)  # (d_out, d_in)

    def delta_bias(self) -> torch.Tensor:
        return self.rlrr_shift

    def rank(self) -> int:
        return self.r  # rank of the multiplier; ΔW itself has the rank of W masked by it

    def merge(self) -> None:
        if self.base.bias is None:  # the shift f needs a bias to fold into
            self.base.bias = nn.Parameter(torch.zeros_like(self.rlrr_shift, dtype=self.base.weight.dtype))
            self.base.bias.requires_grad_(False)
        super().merge()


class SsfLayerNorm(AdapterLayer):
    """SSF after a LayerNorm: ``LN(x) ⊙ s + f``, merged as γ' = γ ⊙ s, β' = β ⊙ s + f (shapes (d,))."""

    def __init__(self, base: nn.LayerNorm, site: Site, init: str):
        super().__init__(base, site)
        d = base.weight.shape[0]
        self.init = init
        self.rlrr_ssf_scale = nn.Parameter(torch.empty(d, device=base.weight.device))
        self.rlrr_ssf_shift = nn.Parameter(torch.empty(d, device=base.weight.device))
        self.reinitialize()

    @torch.no_grad()
    def reinitialize(self) -> bool:
        if self.init == "zero":
            self.rlrr_ssf_scale.fill_(1.0)
            self.rlrr_ssf_shift.zero_()
        else:  # ssf_ada in the RLRR code
            self.rlrr_ssf_scale.normal_(1.0, 0.02)
            self.rlrr_ssf_shift.normal_(0.0, 0.02)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out * self.rlrr_ssf_scale.to(out.dtype) + self.rlrr_ssf_shift.to(out.dtype)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out * (self.rlrr_ssf_scale - 1) + self.rlrr_ssf_shift

    def delta_weight(self) -> torch.Tensor:
        return self.base.weight * (self.rlrr_ssf_scale - 1)  # γ ⊙ s − γ

    def delta_bias(self) -> torch.Tensor:
        return self.base.bias * (self.rlrr_ssf_scale - 1) + self.rlrr_ssf_shift  # β ⊙ s + f − β

    def rank(self) -> int:
        return 0  # not a low-rank update; reported with rank 0 and left out of rank patterns

    def max_rank(self) -> int:
        return 0


@register_family
class Rlrr(AdapterFamily):
    name = "rlrr"
    prefix = "rlrr_"
    config_cls = RlrrConfig
    mergeable = True
    description = (
        "RLRR: W ⊙ (1 + s_left s_rightᵀ) + shift on every linear, SSF after LayerNorms (Dong et al. 2024)"
    )

    def make_layer(self, base: nn.Linear, site: Site) -> RlrrLinear:
        return RlrrLinear(base, site, self.config.r, self.config.init)

    def attach(self, model: nn.Module, sites: list[Site]) -> list[AdapterLayer]:
        """Wrap every site's linear and, with ``ssf``, ln_1/ln_2 of every block that has a site."""
        layers = super().attach(model, sites)
        if self.config.ssf:
            blocks = tower_blocks(model)
            for tower, layer_idx in sorted({(s.tower, s.layer) for s in sites}):
                block = blocks[tower][layer_idx]
                for ln in ("ln_1", "ln_2"):
                    wrapped = SsfLayerNorm(getattr(block, ln), Site(tower, layer_idx, ln), self.config.init)
                    setattr(block, ln, wrapped)
                    layers.append(wrapped)
        self.layers = layers
        return layers

    def identity_at_init(self) -> bool:
        return self.config.init == "zero"
