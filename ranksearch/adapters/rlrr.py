"""RLRR: residual-based low-rank rescaling (Dong et al., CVPR 2024), docs/methods.md.

On every targeted linear (zstarN70/RLRR ``models/networks.py::RLRRLinear``):

    W' = W + diag(s_left) W diag(s_right) = W ⊙ (1 + s_left s_rightᵀ),   b' = b + f

with the rank-r generalisation (Supp. F) ``W' = W + W ⊙ (S_left S_right)``, S_left ∈ R^{d_out×r},
S_right ∈ R^{r×d_in} (r = 1 is the paper's method). The paper's ablation switches (Table 6) are ``sides`` (rescale
rows only, columns only, or both) and ``residual`` (drop the ``W +`` term: ``W' = W ⊙ (S_left S_right)``).

SSF scale/shift ``y' = y ⊙ s + f`` (``ssf``) sits where the code puts it: after ln_1 and ln_2 of every adapted block,
after the patch embedding and after the final norm of every adapted tower (the text tower's analogues: after the
token embedding and after ln_final). Each folds back into plain open_clip weights: into the LayerNorm affine
(γ' = γ ⊙ s, β' = β ⊙ s + f), into the patch convolution (its weight ⊙ s; the shift into the patch rows of the
positional embedding, which is added right after) and into the token-embedding table.

Weight decay follows the code's rule (``RLRRVisionTransformer.get_parameters``: none for parameter names containing
"bias" or "norm"): the shift f and every SSF after a norm are not decayed, the rescaling vectors are, and so is the
patch-embedding SSF (its names ``ssf_*_patch`` contain neither word — a quirk kept on purpose).

Initialisation: "kaiming" (the code: Kaiming-uniform on the 2-D scale tensors, shift 0, SSF scale ~ N(1, 0.02),
shift ~ N(0, 0.02)) is **not identity at init**; "zero" starts exactly at the pretrained model: with the residual
the rescaling multiplier is 0 (S_left = 0, S_right Kaiming so that S_left still gets a gradient), without it the
multiplier is 1; SSF scale 1, shift 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ranksearch.adapters.base import AdapterFamily, AdapterLayer, Site
from ranksearch.adapters.configs import RlrrConfig
from ranksearch.adapters.registry import register_family
from ranksearch.models.clip import tower_blocks


class RlrrLinear(AdapterLayer):
    """``y = x (W ⊙ M')ᵀ + b + f`` with M' = 1 + S_left S_right (residual) or S_left S_right; shapes S_left
    (d_out, r), S_right (r, d_in), f (d_out,). A side that is not rescaled is a fixed buffer of ones."""

    def __init__(
        self, base: nn.Linear, site: Site, r: int, init: str, sides: str = "both", residual: bool = True
    ):
        super().__init__(base, site)
        dev = base.weight.device
        self.r, self.init, self.sides, self.residual = r, init, sides, residual
        left = torch.empty(base.out_features, r, device=dev)
        right = torch.empty(r, base.in_features, device=dev)
        for name, tensor, trained in (
            ("rlrr_scale_left", left, sides in ("both", "left")),
            ("rlrr_scale_right", right, sides in ("both", "right")),
        ):
            if trained:
                setattr(self, name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor.fill_(1.0))
        self.rlrr_shift = nn.Parameter(torch.empty(base.out_features, device=dev))
        self.reinitialize()

    @torch.no_grad()
    def reinitialize(self) -> bool:
        # kaiming_uniform_ on the 2-D tensors as in the code: S_left has fan_in r (U(±√6) at r = 1), S_right fan_in
        # d_in (U(±√(6/d_in))) (networks.py:56-57). A side that is not rescaled stays a buffer of ones.
        left, right = self.rlrr_scale_left, self.rlrr_scale_right
        trained_left, trained_right = isinstance(left, nn.Parameter), isinstance(right, nn.Parameter)
        for tensor, trained in ((left, trained_left), (right, trained_right)):
            if trained:
                nn.init.kaiming_uniform_(tensor)
        if self.init == "zero":
            if self.residual:  # multiplier 0; the other factor stays random so this one gets a gradient
                (left if trained_left else right).zero_()
            elif trained_left and trained_right:  # multiplier 1, carried by component 0
                left.zero_()
                left[:, 0] = 1.0
                right[0] = 1.0
            else:
                (left if trained_left else right).fill_(1.0)
        self.rlrr_shift.zero_()
        return True

    def _w(self) -> torch.Tensor:
        return self.base.weight.to(self.rlrr_shift.dtype)

    def effective_weight(self) -> torch.Tensor:
        """W ⊙ (1 + S_left S_right) (residual) or W ⊙ (S_left S_right): (d_out, d_in)."""
        w = self._w()
        m = self.multiplier()
        return torch.addcmul(w, w, m) if self.residual else w * m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W'ᵀ + b + f`` with the effective weight W': one matmul (autograd forms the one weight gradient
        S_left and S_right need), instead of the base matmul plus r rescaled ones (``adapter_forward``)."""
        if self.merged:
            return self.base(x)
        w = self.effective_weight()
        bias = self.rlrr_shift if self.base.bias is None else self.base.bias.to(w.dtype) + self.rlrr_shift
        out = F.linear(x.to(w.dtype), w, bias)
        return out if torch.is_autocast_enabled(x.device.type) else out.to(x.dtype)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update alone, ``x (W ⊙ M)ᵀ + f`` (for callers that add it to a shared ``base(x)``).

        x (W ⊙ Σ_k sl_k sr_kᵀ)ᵀ = Σ_k ((x ⊙ sr_k) Wᵀ) ⊙ sl_k: r matmuls, no (d_out, d_in) product materialised.
        """
        x = x.to(self.rlrr_shift.dtype)
        w = self._w()
        xs = x.unsqueeze(-2) * self.rlrr_scale_right  # (..., r, d_in)
        h = (xs @ w.t() * self.rlrr_scale_left.t()).sum(-2)  # (..., d_out)
        if not self.residual:
            h = h - x @ w.t()  # W' = W ⊙ M: the base output is taken back out
        return h + self.rlrr_shift

    def multiplier(self) -> torch.Tensor:
        """M = S_left S_right (d_out, d_in)."""
        return self.rlrr_scale_left @ self.rlrr_scale_right

    def delta_weight(self) -> torch.Tensor:
        m = self.multiplier()
        return self._w() * (m if self.residual else m - 1)  # (d_out, d_in)

    def delta_bias(self) -> torch.Tensor:
        return self.rlrr_shift

    def rank(self) -> int:
        return self.r  # rank of the multiplier; ΔW itself has the rank of W masked by it

    def merge(self) -> None:
        if self.base.bias is None:  # the shift f needs a bias to fold into
            self.base.bias = nn.Parameter(torch.zeros_like(self.rlrr_shift, dtype=self.base.weight.dtype))
            self.base.bias.requires_grad_(False)
        super().merge()


class _Ssf(AdapterLayer):
    """An SSF scale/shift ``out ⊙ s + f`` after a module, over its last (channel) dimension; shapes s, f (d,)."""

    def __init__(self, base: nn.Module, site: Site, init: str, dim: int):
        super().__init__(base, site)
        dev = base.weight.device
        self.init = init
        self.rlrr_ssf_scale = nn.Parameter(torch.empty(dim, device=dev))
        self.rlrr_ssf_shift = nn.Parameter(torch.empty(dim, device=dev))
        self.reinitialize()

    @torch.no_grad()
    def reinitialize(self) -> bool:
        if self.init == "zero":
            self.rlrr_ssf_scale.fill_(1.0)
            self.rlrr_ssf_shift.zero_()
        else:  # init_ssf_scale_shift in the RLRR code (networks.py:138-145)
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

    def rank(self) -> int:
        return 0  # not a low-rank update; reported with rank 0 and left out of rank patterns

    def max_rank(self) -> int:
        return 0


class SsfLayerNorm(_Ssf):
    """SSF after a LayerNorm: ``LN(x) ⊙ s + f``, merged as γ' = γ ⊙ s, β' = β ⊙ s + f."""

    def __init__(self, base: nn.LayerNorm, site: Site, init: str):
        super().__init__(base, site, init, base.weight.shape[0])

    def delta_weight(self) -> torch.Tensor:
        return self.base.weight * (self.rlrr_ssf_scale - 1)  # γ ⊙ s − γ

    def delta_bias(self) -> torch.Tensor:
        return self.base.bias * (self.rlrr_ssf_scale - 1) + self.rlrr_ssf_shift  # β ⊙ s + f − β


class SsfEmbedding(_Ssf):
    """SSF after the text tower's token embedding: every table row e -> e ⊙ s + f (folds into the table)."""

    def __init__(self, base: nn.Embedding, site: Site, init: str):
        super().__init__(base, site, init, base.embedding_dim)

    def delta_weight(self) -> torch.Tensor:
        return self.base.weight * (self.rlrr_ssf_scale - 1) + self.rlrr_ssf_shift  # (vocab, d)


class SsfPatchEmbed(_Ssf):
    """SSF after the patch convolution (before the class token and positional embedding are added).

    ``conv(x) ⊙ s + f`` per output channel. Folding: the conv weight is scaled per output channel; open_clip's patch
    convolution has no bias, so the shift goes into the patch rows of the positional embedding, which the tower adds
    to exactly these tokens next (``VisionTransformer._embeds``).
    """

    def __init__(self, base: nn.Conv2d, site: Site, init: str, positional: nn.Parameter):
        super().__init__(base, site, init, base.out_channels)
        self._positional = [
            positional
        ]  # a list: not a submodule/parameter of this layer (it belongs to the tower)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # (B, d, g, g)
        if self.merged:
            return out
        s = self.rlrr_ssf_scale.to(out.dtype).view(1, -1, 1, 1)
        return out * s + self.rlrr_ssf_shift.to(out.dtype).view(1, -1, 1, 1)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out * (self.rlrr_ssf_scale - 1).view(1, -1, 1, 1) + self.rlrr_ssf_shift.view(1, -1, 1, 1)

    def delta_weight(self) -> torch.Tensor:
        return self.base.weight * (self.rlrr_ssf_scale - 1).view(-1, 1, 1, 1)  # (d, 3, p, p)

    def delta_bias(self) -> None:
        return None

    @torch.no_grad()
    def fold_delta(self, delta_weight: torch.Tensor, delta_bias: torch.Tensor | None) -> None:
        """Fold for good: conv weight ⊙ s, the shift into the patch rows of the positional embedding."""
        pos = self._positional[0]
        self.base.weight.add_(delta_weight.to(self.base.weight.dtype))
        pos[1:].add_(self.rlrr_ssf_shift.detach().to(pos.dtype))

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        pos = self._positional[0]
        self._pre_merge_pos = pos.detach().clone()
        super().merge()  # the weight (its bias part is None)
        pos[1:].add_(self.rlrr_ssf_shift.to(pos.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self._positional[0].copy_(self._pre_merge_pos)
        del self._pre_merge_pos
        super().unmerge()


@register_family
class Rlrr(AdapterFamily):
    name = "rlrr"
    prefix = "rlrr_"
    config_cls = RlrrConfig
    mergeable = True
    description = "RLRR: W ⊙ (1 + s_left s_rightᵀ) + shift on every linear, SSF after norms and embeddings (Dong et al. 2024)"

    def make_layer(self, base: nn.Linear, site: Site) -> RlrrLinear:
        c = self.config
        return RlrrLinear(base, site, c.r, c.init, c.sides, c.residual)

    def attach(self, model: nn.Module, sites: list[Site]) -> list[AdapterLayer]:
        """Wrap every site's linear and, with ``ssf``, the norms of adapted blocks and each adapted tower's
        embedding and final norm."""
        layers = super().attach(model, sites)
        if self.config.ssf:
            init = self.config.init
            blocks = tower_blocks(model)
            for tower, layer_idx in sorted({(s.tower, s.layer) for s in sites}):
                block = blocks[tower][layer_idx]
                for ln in ("ln_1", "ln_2"):
                    wrapped = SsfLayerNorm(getattr(block, ln), Site(tower, layer_idx, ln), init)
                    setattr(block, ln, wrapped)
                    layers.append(wrapped)
            for tower in sorted({s.tower for s in sites}):
                layers.extend(_wrap_tower_ends(model, tower, len(blocks[tower]), init))
        self.layers = layers
        return layers

    def no_decay(self, name: str, param: nn.Parameter) -> bool:
        """The code's rule: no weight decay for names with "bias" or "norm" (networks.py:303)."""
        return name == "rlrr_shift" or (name.startswith("rlrr_ssf_") and not self._is_patch_ssf(param))

    def _is_patch_ssf(self, param: nn.Parameter) -> bool:
        return any(
            isinstance(ly, SsfPatchEmbed) and any(p is param for p in ly.parameters()) for ly in self.layers
        )

    def identity_at_init(self) -> bool:
        return self.config.init == "zero"


def _wrap_tower_ends(model: nn.Module, tower: str, depth: int, init: str) -> list[AdapterLayer]:
    """SSF after a tower's input embedding (site layer -1) and after its final norm (site layer = depth)."""
    out: list[AdapterLayer] = []
    if tower == "vision":
        visual = model.visual
        if isinstance(getattr(visual, "conv1", None), nn.Conv2d) and visual.conv1.bias is None:
            visual.conv1 = SsfPatchEmbed(
                visual.conv1, Site(tower, -1, "embed"), init, visual.positional_embedding
            )
            out.append(visual.conv1)
        if isinstance(getattr(visual, "ln_post", None), nn.LayerNorm):
            visual.ln_post = SsfLayerNorm(visual.ln_post, Site(tower, depth, "ln_post"), init)
            out.append(visual.ln_post)
    else:
        if isinstance(getattr(model, "token_embedding", None), nn.Embedding):
            model.token_embedding = SsfEmbedding(model.token_embedding, Site(tower, -1, "embed"), init)
            out.append(model.token_embedding)
        if isinstance(getattr(model, "ln_final", None), nn.LayerNorm):
            model.ln_final = SsfLayerNorm(model.ln_final, Site(tower, depth, "ln_final"), init)
            out.append(model.ln_final)
    return out
