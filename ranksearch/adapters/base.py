"""The adapter interface the training loop talks to.

Two pieces, so that a new family plugs in without touching the loop:

* ``AdapterLayer`` wraps one frozen module (usually an ``nn.Linear``) at one ``Site`` and adds the
  family's update. It knows how to merge its update into the frozen weights and take it back out.
* ``AdapterFamily`` is the per-trial object of a family: it builds the layers for the resolved sites and owns
  the family's training-time behaviour (regularisers, per-step rank updates such as CoDyRA's proximal step or
  AdaLoRA's budget). The loop only calls ``regularizer`` and ``after_step``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ranksearch.adapters.placement import Site
from ranksearch.adapters.sites import replace_linear
from ranksearch.errors import AdapterError

__all__ = ["AdapterFamily", "AdapterLayer", "Site"]


class AdapterLayer(nn.Module):
    """Base class of an adapted linear: ``y = base(x) + update(x)``.

    Subclasses create their trainable parameters with the family's parameter prefix and implement
    ``adapter_forward`` (the extra term) and ``delta_weight`` (the same update as a weight, for merging).
    The frozen base stays an ordinary ``nn.Linear`` so merged weights are plain open_clip weights.
    """

    mergeable: ClassVar[bool] = True

    def __init__(self, base: nn.Linear, site: Site):
        super().__init__()
        self.base = base
        self.site = site
        self.merged = False
        for p in self.base.parameters():
            p.requires_grad_(False)

    # --- what a family implements -------------------------------------------------------------------
    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update term for input x (..., d_in) -> (..., d_out)."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """The update as a (d_out, d_in) weight; ``delta_bias`` likewise for the bias."""
        raise NotImplementedError

    def delta_bias(self) -> torch.Tensor | None:
        return None

    def lowrank(self) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor, nn.Module] | None:
        """``(A, gain, B, dropout)`` when ``adapter_forward(x) = ((dropout(x) Aᵀ) ⊙ gain) Bᵀ`` (A (r, d_in), gain
        (r,) or a number, B (d_out, r)), so attention can stack q, k, v's updates into one product
        (``UnfusedAttention``); None (the default) when the update has no such form."""
        return None

    def rank(self) -> int:
        """Current (effective) rank of the update."""
        raise NotImplementedError

    def max_rank(self) -> int:
        return self.rank()

    def importance(self) -> torch.Tensor | None:
        """Per-component importance scores, if the family has them (for telemetry)."""
        return None

    def effective_rank(self) -> int:
        """Rank of the update as it acts now (e.g. nonzero gates); defaults to ``rank()``."""
        return self.rank()

    def rank_mask(self) -> torch.Tensor | None:
        """The (max_rank,) 0/1 buffer a global rank budget writes to switch components off.

        None (the default) means the family's rank cannot be changed by a budget.
        """
        return None

    def component_scores(self) -> torch.Tensor | None:
        """Per-component scores (max_rank,) a rank budget ranks components by; defaults to ``importance()``."""
        return self.importance()

    def params_per_rank(self) -> int:
        """Trainable parameters one rank-1 component costs (for parameter budgets); 0 if not rank-based."""
        return 0

    def reinitialize(self) -> bool:
        """Re-initialise the trainable parameters to their init state (continual-learning task boundary).

        Returns True when done. The default does nothing and returns False, so callers can refuse families that
        do not support it before changing anything.
        """
        return False

    # --- shared behaviour -----------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (open_clip reads ``c_fc.weight.dtype`` to pick its cast dtype)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.adapter_forward(x).to(out.dtype)

    def fusable_linear(self) -> nn.Linear | None:
        """The frozen linear when this layer's forward is the generic ``base(x) + adapter_forward(x)``, else None.

        Fused attention computes q, k and v of such layers with one matmul of the three base weights.
        """
        generic = type(self).forward is AdapterLayer.forward
        return self.base if generic and type(self.base) is nn.Linear else None

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the frozen weights (idempotent). Raises on non-finite updates."""
        if not self.mergeable:
            raise AdapterError(
                f"{type(self).__name__} at {self.site.key} cannot be merged into static weights"
            )
        if self.merged:
            return
        dw, db = self.delta_weight(), self.delta_bias()
        if not torch.isfinite(dw).all() or (db is not None and not torch.isfinite(db).all()):
            raise AdapterError(f"non-finite adapter update at {self.site.key}; refusing to merge")
        # keep the exact pre-merge values: (W + ΔW) - ΔW is not bit-identical to W in floating point
        self._pre_merge = (
            self.base.weight.detach().clone(),
            None if db is None else self.base.bias.detach().clone(),
        )
        self.base.weight.add_(dw.to(self.base.weight.dtype))
        if db is not None:
            self.base.bias.add_(db.to(self.base.bias.dtype))
        self.merged = True

    @torch.no_grad()
    def fold_delta(self, delta_weight: torch.Tensor, delta_bias: torch.Tensor | None) -> None:
        """Add a precomputed update into the frozen weights for good (a continual task boundary; no unmerge)."""
        self.base.weight.add_(delta_weight.to(self.base.weight.dtype))
        if delta_bias is not None:
            if self.base.bias is None:
                self.base.bias = nn.Parameter(torch.zeros_like(delta_bias, dtype=self.base.weight.dtype))
                self.base.bias.requires_grad_(False)
            self.base.bias.add_(delta_bias.to(self.base.bias.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weights exactly as they were before ``merge``."""
        if not self.merged:
            return
        weight, bias = self._pre_merge
        self.base.weight.copy_(weight)
        if bias is not None:
            self.base.bias.copy_(bias)
        del self._pre_merge
        self.merged = False


class AdapterFamily:
    """A registered adapter family. One instance per trial.

    Class attributes a family sets: ``name`` (registry key, lowercase), ``prefix`` (every trainable
    parameter name of its layers contains it), ``config_cls`` (its pydantic config section), ``mergeable``
    and ``description`` (one line, shown in docs and ``ranksearch families``).
    """

    name: ClassVar[str]
    prefix: ClassVar[str]
    config_cls: ClassVar[type]
    mergeable: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def __init__(self, config: Any, total_steps: int):
        self.config = config
        self.total_steps = total_steps
        self.layers: list[AdapterLayer] = []

    def make_layer(self, base: nn.Linear, site: Site) -> AdapterLayer:
        """Build the adapter layer that wraps ``base`` at ``site``."""
        raise NotImplementedError

    def attach(self, model: nn.Module, sites: list[Site]) -> list[AdapterLayer]:
        """Wrap every site's linear in ``model`` (already unfused) and remember the layers.

        Families that also touch other modules (LayerNorm scale/shift, attention hooks) override this and
        call ``super().attach``.
        """
        sites = [site for site in sites if self.site_rank(site) != 0]  # rank 0 in a rank pattern: not adapted
        self.layers = [
            replace_linear(model, site, lambda base, s=site: self.make_layer(base, s)) for site in sites
        ]
        return self.layers

    def site_rank(self, site: Site, default: int | None = None) -> int | None:
        """The site's rank from ``adapter.rank_pattern`` (families that have one), else ``default``."""
        pattern = getattr(self.config, "rank_pattern", None) or {}
        return pattern.get(site.key, default)

    def regularizer(self) -> torch.Tensor | None:
        """An extra loss term (e.g. AdaLoRA's orthogonality, DRA's L1); None when the family has none."""
        return None

    def after_step(self, step: int) -> None:
        """Called after ``optimizer.step()`` and before ``zero_grad()`` (gradients still present)."""

    def identity_at_init(self) -> bool:
        """Whether a freshly attached adapter leaves the model's outputs unchanged (checked by the contract test)."""
        return True

    def start_task(self) -> None:
        """Called at a continual-learning task boundary, after the adapters were folded into the base weights and
        re-initialised (``ranksearch.continual.boundary``); resets per-task schedule state. Default: nothing."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.parameters() if p.requires_grad]

    def no_decay(self, name: str, param: nn.Parameter) -> bool:
        """Whether the optimizer's weight decay skips this parameter (``name`` as in ``layer.named_parameters()``).

        Default: nothing is skipped (CLIP-LoRA and CoDyRA decay every adapter parameter). RLRR follows its code's
        rule instead.
        """
        return False

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: ``weight_decay`` for most parameters, 0 for those ``no_decay`` names."""
        decay, skip = [], []
        for layer in self.layers:
            for name, p in layer.named_parameters():
                if p.requires_grad:
                    (skip if self.no_decay(name, p) else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}] if decay else []
        return groups + ([{"params": skip, "weight_decay": 0.0}] if skip else [])
