"""AdaLoRA (Zhang et al., ICLR 2023) as implemented in Hugging Face PEFT, docs/methods.md, AdaLoRA.

    y = x W0ᵀ + b + Drop(x) (A ⊙ E)ᵀ Bᵀ · α / ranknum,   A ∈ R^{r×d_in}, E ∈ R^{r×1}, B ∈ R^{d_out×r}

E = 0, A, B ~ N(0, 0.02); ``ranknum = init_r`` is fixed. After every optimizer step (``after_step``): update the
sensitivity EMAs of every A, E, B element, score each triplet, and on masking steps of the cubic budget
schedule set E_i = 0 for the globally lowest triplet scores pooled over every module of both towers (through
the shared ``ranksearch.adapters.budget.allocate``). After ``T − t_final`` the pattern is frozen and
re-applied every step. The orthogonality term comes back from ``regularizer()``.

Two things PEFT's ``RankAllocator`` does not do: a step whose gradients are not all finite (an fp16 step the
GradScaler skipped) leaves the EMAs untouched — folding an inf into them would make a module's scores NaN for good
and prune it to rank 0 — and the EMAs are part of the trial's resumable state (``state_dict``), so a resumed trial
allocates exactly as an uninterrupted one. tests/test_adalora.py checks the schedule and the masks against PEFT's
own ``RankAllocator``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ranksearch.adapters.base import AdapterFamily, AdapterLayer, Site
from ranksearch.adapters.budget import allocate, cubic_budget
from ranksearch.adapters.configs import AdaloraConfig
from ranksearch.adapters.registry import register_family
from ranksearch.errors import ConfigError

log = logging.getLogger(__name__)


class SVDLinear(AdapterLayer):
    """``base(x) + (Drop(x) (A ⊙ E)ᵀ) Bᵀ · α/ranknum``; shapes A (r, d_in), E (r, 1), B (d_out, r), mask (r,)."""

    def __init__(self, base: nn.Linear, site: Site, r: int, alpha: float, dropout: float):
        super().__init__(base, site)
        dev = base.weight.device
        self.r, self.scale = r, alpha / float(r)  # ranknum = init_r, fixed: masking does not change it
        self.ada_A = nn.Parameter(torch.empty(r, base.in_features, device=dev))
        self.ada_E = nn.Parameter(torch.empty(r, 1, device=dev))
        self.ada_B = nn.Parameter(torch.empty(base.out_features, r, device=dev))
        self.register_buffer("ada_mask", torch.ones(r, device=dev))  # the allocated pattern (1 = kept)
        self.ada_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scores: torch.Tensor | None = None  # latest triplet scores (r,)
        self.reinitialize()

    @torch.no_grad()
    def reinitialize(self) -> bool:
        self.ada_E.zero_()
        self.ada_A.normal_(0.0, 0.02)
        self.ada_B.normal_(0.0, 0.02)
        self.ada_mask.fill_(1)
        self.scores = None
        return True

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ada_dropout(x).to(self.ada_A.dtype) @ (self.ada_A * self.ada_E).t()  # (..., r)
        return h @ self.ada_B.t() * self.scale  # (..., d_out)

    def delta_weight(self) -> torch.Tensor:
        return self.ada_B @ (self.ada_A * self.ada_E) * self.scale  # (d_out, d_in)

    def lowrank(self) -> tuple[torch.Tensor, float, torch.Tensor, nn.Module]:
        return self.ada_A * self.ada_E, self.scale, self.ada_B, self.ada_dropout

    def rank(self) -> int:
        return int(self.ada_mask.count_nonzero())  # allocated rank (PEFT's rank_pattern)

    def effective_rank(self) -> int:
        return int((self.ada_E.detach().view(-1) * self.ada_mask).count_nonzero())

    def max_rank(self) -> int:
        return self.r

    def importance(self) -> torch.Tensor:
        return torch.zeros(self.r) if self.scores is None else self.scores

    def rank_mask(self) -> torch.Tensor:
        return self.ada_mask

    def params_per_rank(self) -> int:
        return self.base.in_features + self.base.out_features + 1

    @torch.no_grad()
    def apply_mask(self) -> None:
        self.ada_E.mul_(self.ada_mask.view(-1, 1))  # masking = setting E_i to 0 (PEFT mask_to_budget)


@register_family
class Adalora(AdapterFamily):
    name = "adalora"
    prefix = "ada_"  # not "adalora_": that contains "lora_", CLIP-LoRA's prefix
    config_cls = AdaloraConfig
    mergeable = True
    description = (
        "AdaLoRA (PEFT): SVD triplets, sensitivity-EMA importance, cubic global budget over both towers"
    )

    def __init__(self, config: AdaloraConfig, total_steps: int):
        super().__init__(config, total_steps)
        if total_steps <= 0:
            raise ConfigError([("train.iterations", f"adalora needs total_steps > 0, got {total_steps}")])
        self.t_init = round(config.t_init_frac * total_steps)
        self.t_end = total_steps - round(config.t_final_frac * total_steps)  # T − t_final
        if not self.t_init < self.t_end:
            raise ConfigError(
                [("adapter.t_init_frac", f"t_init {self.t_init} must be < T − t_final {self.t_end}")]
            )
        # "<site key>.<A|E|B>" -> (sensitivity EMA Ī, uncertainty EMA Ū), shaped like the parameter
        self._ema: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rank_history: list[dict] = []  # {"step", "budget", "pattern": {site key: rank}} at every masking
        self.skipped_updates = 0  # steps whose gradients were not finite (importance left as it was)

    def make_layer(self, base: nn.Linear, site: Site) -> SVDLinear:
        c = self.config
        return SVDLinear(base, site, c.init_r, c.alpha, c.dropout)

    # --- budget ----------------------------------------------------------------------------------------------
    def _costs(self) -> list[int]:
        b = self.config.budget
        by_params = b is not None and b.total_params is not None
        return [layer.params_per_rank() if by_params else 1 for layer in self.layers]

    def budgets(self) -> tuple[float, float]:
        """(b0, b_T): all components, and target_r per module (or the budget section's total)."""
        costs = self._costs()
        b0 = sum(layer.r * c for layer, c in zip(self.layers, costs, strict=True))
        b = self.config.budget
        if b is not None and b.target is not None:
            return b0, b.target
        return b0, self.config.target_r * len(self.layers)

    def budget_schedule(self, step: int) -> tuple[float, bool]:
        """(budget, mask now?) at loop step ``step`` (PEFT ``RankAllocator.budget_schedule``)."""
        b0, bt = self.budgets()
        if step <= self.t_init:
            return b0, False
        if step > self.t_end:
            return bt, True
        return cubic_budget(step, b0, bt, self.t_init, self.t_end), step % self.config.delta_t == 0

    # --- importance ------------------------------------------------------------------------------------------
    def _params(self):
        """(EMA key, parameter) for every A, E and B, in layer order."""
        for layer in self.layers:
            for tag, p in (("A", layer.ada_A), ("E", layer.ada_E), ("B", layer.ada_B)):
                yield f"{layer.site.key}.{tag}", p

    @torch.no_grad()
    def update_importance(self) -> bool:
        """Ī ← β1 Ī + (1−β1)|θ∇θ|,  Ū ← β2 Ū + (1−β2)|I − Ī| for every element of A, E, B.

        Returns False (and changes nothing) when any gradient is not finite: the optimizer step it belongs to was
        skipped by the GradScaler, and an inf in the EMAs would never leave them.
        """
        params = [(k, p) for k, p in self._params() if p.grad is not None]
        if not params:
            return False
        grads = [p.grad for _, p in params]
        # one max-|g| per tensor (a foreach kernel), one check: inf and NaN survive the max, overflow cannot occur
        if not bool(torch.stack(torch._foreach_norm(grads, float("inf"))).isfinite().all()):
            self.skipped_updates += 1
            if self.skipped_updates == 1:
                log.warning("adalora: non-finite gradients at a step; importance update skipped (counted)")
            return False
        b1, b2 = self.config.beta1, self.config.beta2
        for key, p in params:
            if key not in self._ema:
                self._ema[key] = (torch.zeros_like(p), torch.zeros_like(p))
        avgs = [self._ema[k][0] for k, _ in params]
        uncs = [self._ema[k][1] for k, _ in params]
        # the per-element update of every A, E and B as a handful of foreach kernels over all tensors at once:
        # ipt = |θ ∇θ|,  Ī ← β1 Ī + (1−β1) ipt,  Ū ← β2 Ū + (1−β2) |ipt − Ī|   (in place; same values as the loop)
        ipt = torch._foreach_mul([p.detach() for _, p in params], grads)
        torch._foreach_abs_(ipt)
        torch._foreach_mul_(avgs, b1)
        torch._foreach_add_(avgs, torch._foreach_mul(ipt, 1 - b1))
        dev = torch._foreach_sub(ipt, avgs)
        torch._foreach_abs_(dev)
        torch._foreach_mul_(uncs, b2)
        torch._foreach_add_(uncs, torch._foreach_mul(dev, 1 - b2))
        return True

    def _score(self, layer: SVDLinear, tag: str) -> torch.Tensor:
        p = getattr(layer, f"ada_{tag}")
        avg, unc = self._ema.get(f"{layer.site.key}.{tag}", (torch.zeros_like(p), torch.zeros_like(p)))
        return avg * unc  # s = Ī ⊙ Ū

    @torch.no_grad()
    def triplet_scores(self) -> list[torch.Tensor]:
        """S_i = s(E_i) + mean_j s(A_ij) + mean_k s(B_ki) per module, each (r,)."""
        out = []
        for layer in self.layers:
            s = (
                self._score(layer, "E").view(-1)
                + self._score(layer, "A").mean(1)
                + self._score(layer, "B").mean(0)
            )
            layer.scores = s.detach().float().cpu()
            out.append(layer.scores)
        return out

    @torch.no_grad()
    def mask_to_budget(self, step: int, budget: float) -> dict[str, int]:
        b = self.config.budget
        keep = allocate(
            self.triplet_scores(),
            budget,
            costs=self._costs(),
            min_rank=0 if b is None else b.min_rank,
            max_rank=None if b is None or b.max_rank is None else b.max_rank,
            threshold=None if b is None else b.threshold,
        )
        for layer, k in zip(self.layers, keep, strict=True):
            layer.ada_mask.copy_(k.to(layer.ada_mask.dtype))
            layer.apply_mask()
        pattern = {layer.site.key: layer.rank() for layer in self.layers}
        self.rank_history.append({"step": step, "budget": budget, "pattern": pattern})
        return pattern

    def after_step(self, step: int) -> None:
        """PEFT ``update_and_allocate``: importance + masking before T − t_final, final mask at it, frozen after."""
        if step < self.t_end:
            self.update_importance()
            budget, mask_now = self.budget_schedule(step)
            if mask_now:
                self.mask_to_budget(step, budget)
        elif step == self.t_end:
            budget, _ = self.budget_schedule(step)
            self.mask_to_budget(step, budget)
            self._ema.clear()  # PEFT reset_ipt
        else:
            for layer in self.layers:
                layer.apply_mask()

    def regularizer(self) -> torch.Tensor | None:
        """orth_reg_weight · mean over all A and B of ‖A Aᵀ − I‖_F and ‖Bᵀ B − I‖_F."""
        if self.config.orth_reg_weight == 0 or not self.layers:
            return None
        # batched over the modules of one shape: one bmm and one batched norm per shape instead of a small matmul
        # and norm per module; the mean over all 2·L terms is the same
        groups: dict[tuple, list[torch.Tensor]] = {}
        for layer in self.layers:
            groups.setdefault(("A", *layer.ada_A.shape), []).append(layer.ada_A)  # (r, d_in): A Aᵀ
            groups.setdefault(("B", *layer.ada_B.shape), []).append(layer.ada_B.t())  # (r, d_out): Bᵀ B
        terms = []
        for mats in groups.values():
            m = torch.stack(mats)  # (G, r, d)
            cov = torch.bmm(m, m.transpose(1, 2))  # (G, r, r)
            eye = torch.eye(cov.shape[-1], device=cov.device, dtype=cov.dtype)
            terms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))  # (G,)
        return self.config.orth_reg_weight * torch.cat(terms).mean()

    def start_task(self) -> None:
        self._ema.clear()

    # --- resumable state (Trainer.state_dict) --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The importance EMAs and the allocation history: tensors and plain containers (``weights_only`` loads)."""
        return {
            "ema": {
                k: [avg.detach().cpu().clone(), unc.detach().cpu().clone()]
                for k, (avg, unc) in self._ema.items()
            },
            "rank_history": [dict(h) for h in self.rank_history],
            "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        devices = {key: p.device for key, p in self._params()}
        unknown = sorted(set(state.get("ema", {})) - set(devices))
        if unknown:
            raise ValueError(f"adalora state has EMAs for modules this trial does not have: {unknown[:3]}")
        # copies: the EMAs are updated in place, the caller's state must stay as it was
        self._ema = {
            k: (a.to(devices[k], copy=True), u.to(devices[k], copy=True))
            for k, (a, u) in state.get("ema", {}).items()
        }
        self.rank_history = [dict(h) for h in state.get("rank_history", [])]
        self.skipped_updates = int(state.get("skipped_updates", 0))
