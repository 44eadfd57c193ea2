"""DRA-style dynamic rank adapter (reconstructed from the abstract), docs/methods.md, DRA-style.

**Reconstruction notice:** only the abstract of DRA (Wang et al., arXiv 2507.05668) is known. This module is
the "DRA-style (reconstructed from the abstract)" reference design of docs/methods.md, DRA-style, not the authors'
method. Per adapted block:

1. Importance: the block's attention probabilities P (N, H, L, S) (``UnfusedAttention.probs_hook``); vision:
   the CLS row averaged over heads; text: the EOT row (EOT = argmax token id, captured from the token
   embedding); detached. Option "column_mean": mean attention each token receives.
2. Grouping: tokens split into G groups by score quantile (``group_fractions``); CLS/EOT always in the top group.
3. Rank-masked parallel bottleneck on the wrapped linear's input x: ``Δ(x_t) = s · U(m_{g(t)} ⊙ (D x_t))``,
   D ∈ R^{r_max×d_in} (Kaiming), U ∈ R^{d_out×r_max} (zeros: identity at init), m_g a prefix mask of r_g ones.
4. Channel response: ``c = σ(w ⊙ mean_t y_t + b_c)`` multiplies Δ per instance and output channel. y_t is the
   wrapped linear's output token (d_out channels), since c_proj's input has 4d channels.
5. L1 term on the per-instance channel-gate activations c (``l1_target: gate``, the default): λ · mean over layers,
   instances and channels of |c|, so it pushes each instance to open few channels and is 0.5·λ at init (σ(0)).
   Without the channel response the same term is taken on the bottleneck activations m_g ⊙ D x. ``l1_target:
   adapter`` puts λ·(‖U‖₁ + ‖D‖₁) on the bottleneck weights instead; with D Kaiming-initialised that term is large
   from step 0, which is why it is not the default.

Insertion: ``placement.matrices`` picks it: ``o`` wraps the attention output (out_proj), ``proj`` the MLP
output (c_proj). The update depends on the tokens and the instance, so it cannot be merged (``mergeable=False``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ranksearch.adapters.base import AdapterFamily, AdapterLayer, Site
from ranksearch.adapters.budget import budget_after_step
from ranksearch.adapters.configs import DraConfig
from ranksearch.adapters.registry import register_family
from ranksearch.adapters.sites import unfuse_block_attention
from ranksearch.errors import AdapterError
from ranksearch.models.clip import tower_blocks

INSERTION_MATRICES = ("o", "proj")


def group_tokens(
    scores: torch.Tensor, fractions: tuple[float, ...], top: torch.Tensor | None = None
) -> torch.Tensor:
    """Group ids (N, L) by score quantile: group 0 = the top ``fractions[0]`` share of tokens, and so on.

    Args:
        scores: (N, L) token scores.
        fractions: share of tokens per group, most important first.
        top: (N,) token index per row forced into group 0 (CLS or EOT), or None.
    """
    n, length = scores.shape
    s = scores.float().clone()
    if top is not None:
        s[torch.arange(n, device=s.device), top] = math.inf
    order = torch.argsort(s, dim=1, descending=True, stable=True)  # (N, L) token indices, best first
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(length, device=s.device).expand(n, length))  # rank of each token
    cum = torch.cumsum(torch.tensor(fractions, dtype=torch.float64), 0) * length
    bounds = cum.round().long().clamp(min=1).to(s.device)  # group g holds positions [bounds[g-1], bounds[g])
    return torch.bucketize(position, bounds, right=True).clamp(max=len(fractions) - 1)


def prefix_masks(ranks: tuple[int, ...], r_max: int) -> torch.Tensor:
    """(G, r_max) 0/1 masks; row g keeps the first ranks[g] bottleneck dimensions."""
    return (torch.arange(r_max).unsqueeze(0) < torch.tensor(ranks).unsqueeze(1)).float()


class _Importance:
    """Shared per-family state: EOT positions of the current text batch."""

    def __init__(self) -> None:
        self.eot: torch.Tensor | None = None


class _BlockContext:
    """Token groups of one block's latest forward, written by its attention hook, read by its DRA layers."""

    def __init__(self, tower: str, cfg: DraConfig, shared: _Importance, has_cls: bool):
        self.tower, self.cfg, self.shared, self.has_cls = tower, cfg, shared, has_cls
        self.groups: torch.Tensor | None = None  # (N, L)

    def hook(self, probs: torch.Tensor) -> None:
        """``probs_hook`` of the block's UnfusedAttention: probs (N, H, L, S), already detached."""
        p = probs.float().mean(1)  # (N, L, S), averaged over heads
        n = p.shape[0]
        top = None
        if self.cfg.importance == "column_mean":
            scores = p.mean(1)  # (N, S): attention each token receives
        elif self.tower == "vision" and self.has_cls:
            scores, top = p[:, 0, :], torch.zeros(n, dtype=torch.long, device=p.device)  # CLS row
        elif self.tower == "text" and self.shared.eot is not None and self.shared.eot.shape[0] == n:
            top = self.shared.eot.to(p.device)
            scores = p[torch.arange(n, device=p.device), top, :]  # EOT row (N, S)
        else:
            scores = p.mean(1)
        self.groups = group_tokens(scores, self.cfg.group_fractions, top)


class DraLinear(AdapterLayer):
    """Wrapped out_proj / c_proj plus ``s · c ⊙ U(m_g ⊙ D x)``; D (r_max, d_in), U (d_out, r_max)."""

    mergeable = False

    def __init__(self, base: nn.Linear, site: Site, cfg: DraConfig, ctx: _BlockContext, token_dim: int):
        super().__init__(base, site)
        dev = base.weight.device
        self.cfg, self.ctx, self.token_dim = cfg, ctx, token_dim
        self.r_max = max(cfg.group_ranks)
        self.dra_down = nn.Parameter(torch.empty(self.r_max, base.in_features, device=dev))
        self.dra_up = nn.Parameter(torch.zeros(base.out_features, self.r_max, device=dev))
        self.register_buffer("dra_group_masks", prefix_masks(cfg.group_ranks, self.r_max).to(dev))
        self.register_buffer("dra_rank_mask", torch.ones(self.r_max, device=dev))
        if cfg.channel_response:
            self.dra_gate_w = nn.Parameter(torch.zeros(base.out_features, device=dev))
            self.dra_gate_b = nn.Parameter(torch.zeros(base.out_features, device=dev))
        self.gate_l1: torch.Tensor | None = None  # mean |gate activation| of the latest training forward
        self.reinitialize()

    @torch.no_grad()
    def reinitialize(self) -> bool:
        nn.init.kaiming_uniform_(self.dra_down, a=math.sqrt(5))
        self.dra_up.zero_()
        self.dra_rank_mask.fill_(1)
        return True

    def _token_masks(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, r_max) per-token masks; all tokens at the top group's rank when no groups are available."""
        masks = self.dra_group_masks * self.dra_rank_mask  # (G, r_max)
        g = self.ctx.groups
        n, length = x.shape[0], x.shape[1]
        if g is None or g.shape != (n, length):
            return masks[0].expand(n, length, -1)
        return masks[g]

    def _delta(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.token_dim == 0:  # (L, N, d) -> (N, L, d)
            x, y = x.transpose(0, 1), y.transpose(0, 1)
        h = x.to(self.dra_down.dtype) @ self.dra_down.t() * self._token_masks(x)  # (N, L, r_max)
        record = self.training and torch.is_grad_enabled()
        if record and not self.cfg.channel_response:
            self.gate_l1 = h.abs().mean()  # no gate: the L1 term acts on the bottleneck activations
        delta = h @ self.dra_up.t() * self.cfg.scale  # (N, L, d_out)
        if self.cfg.channel_response or self.cfg.channel_topk is not None:
            m = y.detach().float().mean(1)  # (N, d_out) mean response of each output channel
            if self.cfg.channel_response:
                gate = torch.sigmoid(
                    self.dra_gate_w * m + self.dra_gate_b
                )  # (N, d_out) per-instance activations
                if record:
                    self.gate_l1 = gate.abs().mean()  # read (and cleared) by the family's regularizer
                delta = delta * gate.unsqueeze(1)
            if self.cfg.channel_topk is not None:
                k = max(1, round(self.cfg.channel_topk * m.shape[-1]))
                idx = m.abs().topk(k, dim=-1).indices
                keep = torch.zeros_like(m).scatter_(1, idx, 1.0)  # (N, d_out)
                delta = delta * keep.unsqueeze(1)
        return delta.transpose(0, 1) if self.token_dim == 0 else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self._delta(x, y).to(y.dtype)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._delta(x, self.base(x))

    def merge(self) -> None:
        raise AdapterError(
            f"DRA-style adapter at {self.site.key} is token- and instance-dependent and cannot be merged into static "
            "weights; keep the adapter in the model for inference"
        )

    def delta_weight(self) -> torch.Tensor:
        raise AdapterError("DRA-style adapter has no static weight update")

    def rank(self) -> int:
        return int((self.dra_group_masks[0] * self.dra_rank_mask).sum())  # rank of the top group

    def max_rank(self) -> int:
        return self.r_max

    def importance(self) -> torch.Tensor:
        return self.component_scores()

    def component_scores(self) -> torch.Tensor:
        return (self.dra_up.detach().norm(dim=0) * self.dra_down.detach().norm(dim=1)).float()  # (r_max,)

    def rank_mask(self) -> torch.Tensor:
        return self.dra_rank_mask

    def params_per_rank(self) -> int:
        return self.base.in_features + self.base.out_features


@register_family
class Dra(AdapterFamily):
    name = "dra"
    prefix = "dra_"
    config_cls = DraConfig
    mergeable = False
    description = (
        "DRA-style (reconstructed from the abstract): attention-grouped tokens get per-group ranks in a bottleneck "
        "adapter with a channel-response gate; not mergeable"
    )

    def attach(self, model: nn.Module, sites: list[Site]) -> list[AdapterLayer]:
        """Hook the attention of every adapted block, then wrap its out_proj (``o``) and/or c_proj (``proj``)."""
        bad = sorted({s.module for s in sites} - set(INSERTION_MATRICES))
        if bad:
            raise AdapterError(
                f"dra inserts at the attention output (o) and/or MLP output (proj) only; placement.matrices has {bad}"
            )
        shared = _Importance()
        embedding = getattr(model, "token_embedding", None)
        if embedding is not None and any(s.tower == "text" for s in sites):
            # EOT position = argmax token id (open_clip's text pooling); captured before the text blocks run.
            def _capture(_module: nn.Module, args: tuple) -> None:
                shared.eot = args[0].argmax(dim=-1)

            self._hook_handle = embedding.register_forward_pre_hook(_capture)
        has_cls = getattr(getattr(model, "visual", None), "class_embedding", None) is not None
        blocks = tower_blocks(model)
        self._contexts: dict[tuple[str, int], _BlockContext] = {}
        self._token_dim: dict[tuple[str, int], int] = {}
        for tower, idx in sorted({(s.tower, s.layer) for s in sites}):
            attn = unfuse_block_attention(blocks[tower][idx])
            ctx = _BlockContext(tower, self.config, shared, has_cls)
            attn.probs_hook = ctx.hook
            self._contexts[(tower, idx)] = ctx
            self._token_dim[(tower, idx)] = 1 if attn.batch_first else 0
        return super().attach(model, sites)

    def make_layer(self, base: nn.Linear, site: Site) -> DraLinear:
        key = (site.tower, site.layer)
        # out_proj always sees (N, L, d) (UnfusedAttention works batch-first); c_proj sees the block's layout.
        token_dim = 1 if site.module == "o" else self._token_dim[key]
        return DraLinear(base, site, self.config, self._contexts[key], token_dim)

    def regularizer(self) -> torch.Tensor | None:
        c = self.config
        if c.l1_weight == 0 or not self.layers:
            return None
        if c.l1_target == "gate":
            # the activations of this step's forward (layers that did not run this step contribute nothing)
            acts = [layer.gate_l1 for layer in self.layers if layer.gate_l1 is not None]
            for layer in self.layers:
                layer.gate_l1 = None
            return c.l1_weight * torch.stack(acts).mean() if acts else None
        norms = [layer.dra_up.abs().sum() + layer.dra_down.abs().sum() for layer in self.layers]
        return c.l1_weight * torch.stack(norms).sum()

    def after_step(self, step: int) -> None:
        budget_after_step(self, step)
