"""CoDyRA: continual dynamic rank-selective LoRA (Lu et al., arXiv 2412.01004), docs/methods.md, CoDyRA.

    y = x Wᵀ + b + ((Drop(x) Aᵀ) ⊙ g) Bᵀ,   ΔW = B diag(g) A,   no α scaling

A ∈ R^{r×d_in} Kaiming-uniform (a=√5), B ∈ R^{d_out×r} zeros, g ∈ R^{r} ~ N(0, 1) (or ones). Sparsity comes
from a proximal threshold on g after every optimizer step once past the dense phase (``after_step``), with κ
ramping over ``lambda_num`` evenly spaced values 0..κ_max, exactly as the code's ``train_model``. The effective
rank is the number of nonzero gates. A ``codyra_mask`` buffer lets a global budget switch components off.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ranksearch.adapters.base import AdapterFamily, AdapterLayer, Site
from ranksearch.adapters.budget import budget_after_step
from ranksearch.adapters.configs import CodyraConfig
from ranksearch.adapters.registry import register_family


def threshold_code(g: torch.Tensor, kappa: float) -> torch.Tensor:
    """The released code's operator: shrink values beyond ±κ by κ, then zero everything with |g| < κ.

    Applied in that order, so an entry whose original |g| lies in (κ, 2κ) is shrunk into (0, κ) and then zeroed
    (docs/methods.md, CoDyRA, code quirk).
    """
    g = g.clone()
    g[g > kappa] -= kappa
    g[g < -kappa] += kappa
    g[g.abs() < kappa] = 0.0
    return g


def threshold_paper(g: torch.Tensor, kappa: float) -> torch.Tensor:
    """The paper's soft threshold T_κ(g) = 1(|g| > κ)·(g − sign(g)κ)."""
    return torch.where(g.abs() > kappa, g - torch.sign(g) * kappa, torch.zeros_like(g))


THRESHOLDS = {"code": threshold_code, "paper": threshold_paper}


def dense_iters(total_steps: int, dense_frac: float) -> float:
    return dense_frac * total_steps  # a float, as in the code (args.dense_iters * total_iterations)


def kappa_at(iteration: int, total_steps: int, dense_frac: float, lambda_num: int, kappa_max: float) -> float:
    """κ in force after optimizer step ``iteration`` (0-based, the code's loop counter).

    The code starts at κ = lambdas[0] = 0 and, at the top of every iteration ``i ≥ dense_iters`` with
    ``i % every == 0`` (every = (T − dense_iters) // lambda_num), moves one value up the linspace, capped at the
    last. When ``every`` would be 0 (T < 2·lambda_num at frac 0.5) the code never ramps; we step every iteration
    instead, so short runs still prune.
    """
    dense = dense_iters(total_steps, dense_frac)
    every = max(1, int((total_steps - dense) // lambda_num))
    first = math.ceil(dense / every) * every  # first multiple of `every` at or after the dense phase
    count = 0 if iteration < first else (iteration - first) // every + 1
    lambdas = np.linspace(0, kappa_max, lambda_num)
    return float(lambdas[min(lambda_num - 1, count)])


class CodyraLinear(AdapterLayer):
    """``base(x) + ((Drop(x) Aᵀ) ⊙ g ⊙ mask) Bᵀ``; shapes: A (r, d_in), B (d_out, r), g and mask (r,)."""

    def __init__(self, base: nn.Linear, site: Site, r: int, gate_init: str, dropout: float):
        super().__init__(base, site)
        dev = base.weight.device
        self.r, self.gate_init = r, gate_init
        self.codyra_A = nn.Parameter(torch.empty(r, base.in_features, device=dev))
        self.codyra_B = nn.Parameter(torch.empty(base.out_features, r, device=dev))
        self.codyra_gate = nn.Parameter(torch.empty(r, device=dev))
        self.register_buffer("codyra_mask", torch.ones(r, device=dev))
        self.codyra_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reinitialize()

    @torch.no_grad()
    def reinitialize(self) -> bool:
        """Fresh A (Kaiming a=√5), B = 0, g ~ N(0,1) or ones, mask on: CoDyRA's ``increment_task`` reset."""
        nn.init.kaiming_uniform_(self.codyra_A, a=math.sqrt(5))
        self.codyra_B.zero_()
        if self.gate_init == "ones":
            self.codyra_gate.fill_(1.0)
        else:
            self.codyra_gate.normal_(0.0, 1.0)
        self.codyra_mask.fill_(1)
        return True

    def _g(self) -> torch.Tensor:
        return self.codyra_gate * self.codyra_mask  # (r,)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.codyra_dropout(x).to(self.codyra_A.dtype) @ self.codyra_A.t()  # (..., r)
        return (h * self._g()) @ self.codyra_B.t()  # (..., d_out)

    def delta_weight(self) -> torch.Tensor:
        return (self.codyra_B * self._g()) @ self.codyra_A  # B diag(g) A: (d_out, d_in)

    def lowrank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Module]:
        return self.codyra_A, self._g(), self.codyra_B, self.codyra_dropout

    def rank(self) -> int:
        return int(self._g().count_nonzero())  # effective rank ρ = ‖g ⊙ mask‖₀

    def max_rank(self) -> int:
        return self.r

    def importance(self) -> torch.Tensor:
        return self._g().detach().abs()  # |g_i| is CoDyRA's importance signal

    def rank_mask(self) -> torch.Tensor:
        return self.codyra_mask

    def params_per_rank(self) -> int:
        return self.base.in_features + self.base.out_features + 1

    @torch.no_grad()
    def prox_step(self, kappa: float, operator: str) -> None:
        self.codyra_gate.copy_(THRESHOLDS[operator](self.codyra_gate, kappa))


@register_family
class Codyra(AdapterFamily):
    name = "codyra"
    prefix = "codyra_"
    config_cls = CodyraConfig
    mergeable = True
    description = (
        "CoDyRA: LoRA with per-component gates B diag(g) A, proximal L1 on g selects the rank (Lu et al.)"
    )

    def make_layer(self, base: nn.Linear, site: Site) -> CodyraLinear:
        c = self.config
        return CodyraLinear(base, site, self.site_rank(site, c.r), c.gate_init, c.dropout)

    def kappa(self, step: int) -> float:
        """κ after loop step ``step`` (1-based: the loop passes the number of completed steps)."""
        c = self.config
        return kappa_at(step - 1, self.total_steps, c.dense_frac, c.lambda_num, c.kappa_max)

    def after_step(self, step: int) -> None:
        """Proximal step on every gate once past the dense phase (code: ``iteration > dense_iters``)."""
        c = self.config
        if step - 1 > dense_iters(self.total_steps, c.dense_frac):
            kappa = self.kappa(step)
            for layer in self.layers:
                layer.prox_step(kappa, c.threshold)
        budget_after_step(self, step)

    def start_task(self) -> None:
        self.rank_budget = None  # a new task restarts the budget schedule with fresh components
