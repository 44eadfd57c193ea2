"""Nested-rank adapters: rank r of a site is the first r components of its max-rank adapter (DyLoRA prefixes).

A ``NestedLoraLinear`` built with rank R acts, after ``set_rank(r)``, exactly as a ``LoraLinear`` of rank r
whose A and B are the first r rows of A and the first r columns of B, including its scale
``lora_scale(alpha, r, scaling)`` (DyLoRA rescales by the sampled rank likewise), so a sub-allocation retrained
from scratch as an ordinary LoRA trial has the same parametrisation as the one scored in the supernet.
``NestedCodyraLinear`` likewise keeps the first r gated components (CoDyRA has no alpha scale).

The forward (and ``lowrank``, the factors ``UnfusedAttention`` stacks for q/k/v) slices the active prefix instead
of multiplying by a 0/1 mask: the same operations as the truncated adapter (bit-identical results,
tests/test_oneshot.py) and less work for small ranks. ``lora_mask`` /
``codyra_mask`` are kept equal to the prefix so telemetry (allocation.parquet) and budgets read the rank as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ranksearch.adapters.base import AdapterLayer, Site
from ranksearch.adapters.codyra import Codyra, CodyraLinear
from ranksearch.adapters.lora import Lora, LoraLinear, lora_scale
from ranksearch.errors import ConfigError

NESTED_FAMILIES = ("lora", "codyra")


class _Nested:
    """Shared prefix-rank state: ``active`` components of ``r`` are on (the mask buffer mirrors it)."""

    r: int
    active: int

    def mask_buffer(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def set_rank(self, rank: int) -> None:
        if not 0 <= rank <= self.r:
            raise ValueError(f"{self.site.key}: rank {rank} outside [0, {self.r}]")
        self.active = int(rank)
        mask = self.mask_buffer()
        mask.zero_()
        mask[:rank] = 1

    def rank(self) -> int:
        return self.active

    def _zeros(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((*x.shape[:-1], self.base.out_features), dtype=torch.float32)


class NestedLoraLinear(_Nested, LoraLinear):
    """``base(x) + lora_scale(α, k) · (Drop(x) A[:k]ᵀ) B[:, :k]ᵀ`` at active rank k; A (R, d_in), B (d_out, R)."""

    def __init__(self, base: nn.Linear, site: Site, r: int, alpha: float, scaling: str, dropout: float):
        super().__init__(base, site, r, alpha, scaling, dropout)
        self.alpha, self.scaling, self.active = alpha, scaling, r

    def mask_buffer(self) -> torch.Tensor:
        return self.lora_mask

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active
        if k == 0:
            return self._zeros(x)
        # the truncated LoraLinear's exact operations: (h * (ones(k) * s)) @ B_kᵀ with B_k contiguous
        h = self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A[:k].t()  # (..., k)
        s = lora_scale(self.alpha, k, self.scaling)
        return (h * (self.lora_mask[:k] * s)) @ self.lora_B[:, :k].contiguous().t()  # (..., d_out)

    def lowrank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Module] | None:
        """The active prefix's factors (``UnfusedAttention`` stacks q/k/v's); None at rank 0 (forward adds 0)."""
        k = self.active
        if k == 0:
            return None
        s = lora_scale(self.alpha, k, self.scaling)
        return self.lora_A[:k], self.lora_mask[:k] * s, self.lora_B[:, :k].contiguous(), self.lora_dropout

    def delta_weight(self) -> torch.Tensor:
        k = self.active
        if k == 0:
            return self.lora_B.new_zeros(self.base.out_features, self.base.in_features)
        s = lora_scale(self.alpha, k, self.scaling)
        return (self.lora_B[:, :k].contiguous() * self.lora_mask[:k]) @ self.lora_A[:k] * s  # (d_out, d_in)


class NestedCodyraLinear(_Nested, CodyraLinear):
    """``base(x) + ((Drop(x) A[:k]ᵀ) ⊙ g[:k]) B[:, :k]ᵀ`` at active rank k."""

    def __init__(self, base: nn.Linear, site: Site, r: int, gate_init: str, dropout: float):
        super().__init__(base, site, r, gate_init, dropout)
        self.active = r

    def mask_buffer(self) -> torch.Tensor:
        return self.codyra_mask

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active
        if k == 0:
            return self._zeros(x)
        h = self.codyra_dropout(x).to(self.codyra_A.dtype) @ self.codyra_A[:k].t()  # (..., k)
        g = self.codyra_gate[:k] * self.codyra_mask[:k]  # (k,)
        return (h * g) @ self.codyra_B[:, :k].contiguous().t()  # (..., d_out)

    def lowrank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Module] | None:
        k = self.active
        if k == 0:
            return None
        g = self.codyra_gate[:k] * self.codyra_mask[:k]
        return self.codyra_A[:k], g, self.codyra_B[:, :k].contiguous(), self.codyra_dropout

    def delta_weight(self) -> torch.Tensor:
        k = self.active
        if k == 0:
            return self.codyra_B.new_zeros(self.base.out_features, self.base.in_features)
        g = self.codyra_gate[:k] * self.codyra_mask[:k]
        return (self.codyra_B[:, :k].contiguous() * g) @ self.codyra_A[:k]  # (d_out, d_in)


class NestedLora(Lora):
    """CLIP-LoRA with nested-rank layers; no global budget (the one-shot search decides the ranks)."""

    def make_layer(self, base: nn.Linear, site: Site) -> NestedLoraLinear:
        c = self.config
        return NestedLoraLinear(base, site, c.r, c.alpha, c.scaling, c.dropout)

    def after_step(self, step: int) -> None:
        """Nothing: a budget or schedule would move the masks the sandwich rule sets."""


class NestedCodyra(Codyra):
    """CoDyRA with nested-rank layers: the gates train densely (no proximal step, no budget); the prefix decides."""

    def make_layer(self, base: nn.Linear, site: Site) -> NestedCodyraLinear:
        c = self.config
        return NestedCodyraLinear(base, site, c.r, c.gate_init, c.dropout)

    def after_step(self, step: int) -> None:
        """No proximal threshold: zeroed gates would break the prefix nesting."""


NESTED = {"lora": NestedLora, "codyra": NestedCodyra}


def nested_family(name: str) -> type:
    """The nested-rank family class for a family name; ``ConfigError`` for a family that cannot nest."""
    if name not in NESTED:
        raise ConfigError(
            [
                (
                    "adapter.family",
                    f"one-shot search nests LoRA-style ranks: {', '.join(NESTED_FAMILIES)}, not {name!r}",
                )
            ]
        )
    return NESTED[name]


def nested_layers(layers: Sequence[AdapterLayer]) -> list[_Nested]:
    return [layer for layer in layers if isinstance(layer, _Nested)]


def apply_allocation(layers: Sequence[AdapterLayer], ranks: Sequence[int] | Mapping[str, int]) -> None:
    """Set every nested layer's active rank: a sequence in layer order, or a site key -> rank mapping."""
    layers = nested_layers(layers)
    if isinstance(ranks, Mapping):
        missing = [ly.site.key for ly in layers if ly.site.key not in ranks]
        if missing:
            raise ValueError(f"allocation has no rank for sites {missing[:3]}")
        ranks = [ranks[ly.site.key] for ly in layers]
    if len(ranks) != len(layers):
        raise ValueError(f"allocation has {len(ranks)} ranks for {len(layers)} sites")
    for layer, r in zip(layers, ranks, strict=True):
        layer.set_rank(int(r))
