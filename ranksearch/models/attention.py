"""Unfuse ``nn.MultiheadAttention`` into explicit q/k/v/o linears, and fuse it back.

open_clip 3.3 keeps q/k/v in one fused ``in_proj_weight`` and its MHA forward reads ``out_proj.weight``
directly, so a wrapper around ``out_proj`` would be bypassed. ``UnfusedAttention`` is a drop-in replacement
(same call signature as the MHA inside ``ResidualAttentionBlock``) whose four projections are ordinary
``nn.Linear`` modules that adapters can wrap. ``fuse_attention`` turns it back into a stock MHA, so a merged
model is a plain open_clip model again.

``fuse_qkv`` (on by default; ``set_fused_qkv``) computes self-attention's q, k and v as the stock MHA does, with
one matmul over the three frozen weights, and adds the adapters' updates with **one stacked low-rank product**:
the adapters whose update is ``((Drop(x) Aᵀ) ⊙ gain) Bᵀ`` (``AdapterLayer.lowrank``: LoRA, CoDyRA, AdaLoRA) have
their A's stacked into one (Σr, d) matrix and their B's into one block-diagonal (3d, Σr) matrix, and the update
is accumulated into the frozen output by the same GEMM (``addmm``), so neither the three (tokens × d) updates nor
their sums are materialised, forward or backward (the input gradient is two matmuls instead of six plus five
additions). The q/k/v weights of an ``UnfusedAttention`` are slices of one (3d, d) tensor, so the fused matmul
needs no copy of them (a copy is made, once, only if something replaced them, e.g. a device move).
``tests/test_stacked_qkv.py`` checks it against the separate projections (fp64, 1e-10).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class UnfusedAttention(nn.Module):
    """Multi-head self-attention with separate ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` linears.

    Numerically equal to ``nn.MultiheadAttention`` (float32, tolerance 1e-5) for the calls open_clip makes.
    ``probs_hook``, when set, makes the forward compute attention explicitly and pass the probabilities
    (N, H, L, S) to the hook (used by attention-importance families such as DRA-style).
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        d, self.num_heads = mha.embed_dim, mha.num_heads
        if mha.in_proj_weight is None or not mha._qkv_same_embed_dim:
            raise ValueError("only self-attention with a fused in_proj_weight can be unfused")
        self.embed_dim = d
        self.head_dim = d // self.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        has_bias = mha.in_proj_bias is not None
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias
        kw = {"device": w.device, "dtype": w.dtype}
        # skip_init: the weights are copied from the MHA below, so drawing a random init would only consume the
        # global generator (and make an adapter's init depend on whether its block was already unfused)
        self.q_proj, self.k_proj, self.v_proj = (
            nn.utils.skip_init(nn.Linear, d, d, bias=has_bias, **kw) for _ in range(3)
        )
        self.out_proj = nn.utils.skip_init(nn.Linear, d, d, bias=mha.out_proj.bias is not None, **kw)
        with torch.no_grad():
            # q, k, v weights (and biases) are slices of one copy of the fused tensor (rows [0:d] q, [d:2d] k,
            # [2d:3d] v), so the fused matmul reads them in place
            w_all = w.clone()
            b_all = b.detach().clone() if has_bias else None
            for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                proj.weight = nn.Parameter(w_all[i * d : (i + 1) * d])
                if has_bias:
                    proj.bias = nn.Parameter(b_all[i * d : (i + 1) * d])
            self.out_proj.load_state_dict(mha.out_proj.state_dict())
        # a frozen MHA stays frozen after unfusing (new Linears default to requires_grad=True)
        for p in self.parameters():
            p.requires_grad_(mha.in_proj_weight.requires_grad)
        self.probs_hook: Callable[[torch.Tensor], None] | None = None
        self.fuse_qkv = True
        self._fused: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None  # (key, weight, bias)

    def _fusable_bases(self) -> list[nn.Linear] | None:
        """The frozen q/k/v linears when all three can share one matmul, else None.

        A projection qualifies when it is a plain ``nn.Linear`` or an adapter layer whose ``fusable_linear()`` returns
        its frozen ``nn.Linear`` (forward is the generic ``base(x) + adapter_forward(x)``: LoRA, CoDyRA, AdaLoRA; RLRR
        has its own). Asked by duck typing so that models never import adapters (adapters build on models).
        """
        bases = []
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            base = proj if type(proj) is nn.Linear else getattr(proj, "fusable_linear", lambda: None)()
            if base is None:
                return None
            bases.append(base)
        return bases

    def _fused_weights(self, bases: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(3d, d) weight and (3d,) bias of q/k/v: a view when they lie back to back in one tensor (as
        ``__init__`` leaves them), else a concatenated copy, after which the three are re-pointed at it.

        The key (identity, address, in-place version of each tensor) tells when a projection was changed: merged,
        loaded or moved tensors are found again or re-stacked.
        """
        weights = [lin.weight for lin in bases]
        biases = [lin.bias for lin in bases]
        tensors = [t for t in weights + biases if t is not None]
        key = tuple((id(t), t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        if self._fused is None or self._fused[0] != key:
            # never inference tensors (a first call under torch.inference_mode): training reuses the cached view
            with torch.inference_mode(False), torch.no_grad():
                w = _back_to_back(weights)
                has_bias = all(t is not None for t in biases)
                b = _back_to_back(biases) if has_bias else None
                if w is None or (has_bias and b is None):
                    w = torch.cat(weights)
                    b = torch.cat(biases) if has_bias else None
                    d = self.embed_dim
                    # frozen: no optimizer holds these tensors; re-pointed, the next call finds a view
                    for i, lin in enumerate(bases):
                        lin.weight.data = w[i * d : (i + 1) * d]
                        if b is not None:
                            lin.bias.data = b[i * d : (i + 1) * d]
                    tensors = [t for t in weights + biases if t is not None]
                    key = tuple((id(t), t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
            self._fused = (key, w, b)
        return self._fused[1], self._fused[2]

    def _project_qkv(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v projections (N, L, E); one fused matmul plus one stacked low-rank product where possible."""
        bases = self._fusable_bases() if self.fuse_qkv and key is query and value is query else None
        if bases is not None and any(
            b.weight.requires_grad or (b.bias is not None and b.bias.requires_grad) for b in bases
        ):
            bases = None  # a trained base weight needs its own gradient; the stacked view would not get it
        if bases is None:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        w, b = self._fused_weights(bases)
        out = F.linear(query, w, b)  # (N, L, 3E)
        projs = (self.q_proj, self.k_proj, self.v_proj)
        adapted = [
            i for i, (p, base) in enumerate(zip(projs, bases, strict=True)) if p is not base and not p.merged
        ]
        factors = {i: projs[i].lowrank() for i in adapted}
        stacked = [i for i in adapted if factors[i] is not None]
        if stacked:
            out = self._add_stacked(query, out, [(i, factors[i]) for i in stacked])
        chunks = list(out.split(self.embed_dim, dim=-1))
        for i in adapted:  # an adapter without low-rank factors: add its update to its third, as forward does
            if factors[i] is None:
                chunks[i] = chunks[i] + projs[i].adapter_forward(query).to(chunks[i].dtype)
        return chunks[0], chunks[1], chunks[2]

    def _add_stacked(
        self, x: torch.Tensor, out: torch.Tensor, factors: list[tuple[int, tuple]]
    ) -> torch.Tensor:
        """``out`` (N, L, 3E) plus every listed projection's ``((Drop(x) Aᵀ) ⊙ gain) Bᵀ`` in its third.

        Shapes: A_i (r_i, E), gain_i (r_i,), B_i (E, r_i); stacked A (R, E), gain (R,), block-diagonal B (3E, R)
        with zero blocks for projections without a low-rank update, R = Σ r_i.
        """
        dtype = factors[0][1][0].dtype
        dropped = [f[3] for _, f in factors]
        if self.training and any(not isinstance(m, nn.Identity) for m in dropped):
            # each projection draws its own mask, in q, k, v order as the separate projections do (same RNG use)
            h = torch.cat([m(x).to(dtype) @ f[0].t() for (_, f), m in zip(factors, dropped, strict=True)], -1)
        else:
            a = factors[0][1][0] if len(factors) == 1 else torch.cat([f[0] for _, f in factors])  # (R, E)
            h = x.to(dtype) @ a.t()  # (N, L, R)
        gains = [f[1] if torch.is_tensor(f[1]) else h.new_full((f[0].shape[0],), f[1]) for _, f in factors]
        h = h * (gains[0] if len(gains) == 1 else torch.cat(gains))  # (N, L, R)
        blocks, rows = [], {i: f[2] for i, f in factors}
        e = self.embed_dim
        for i in range(3):
            blocks.append(rows[i] if i in rows else h.new_zeros(e, 0))
        b_all = torch.block_diag(*blocks)  # (3E, R)
        if out.dtype != b_all.dtype and not torch.is_autocast_enabled(out.device.type):
            return out + (h @ b_all.t()).to(out.dtype)
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]), b_all.t())  # (N·L, 3E)
        return flat.view(out.shape)

    def _mask(
        self, attn_mask, key_padding_mask, n: int, q_len: int, k_len: int, dtype
    ) -> torch.Tensor | None:
        """Combine MHA-style masks (True = masked out) into one additive float mask broadcastable to (N,H,L,S)."""
        mask = None
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros_like(attn_mask, dtype=dtype).masked_fill(attn_mask, float("-inf"))
            mask = attn_mask.to(dtype)
            if mask.dim() == 3:  # (N*H, L, S) -> (N, H, L, S)
                mask = mask.view(n, self.num_heads, q_len, k_len)
        if key_padding_mask is not None:
            if key_padding_mask.dtype == torch.bool:
                pad = torch.zeros_like(key_padding_mask, dtype=dtype).masked_fill(
                    key_padding_mask, float("-inf")
                )
            else:
                pad = key_padding_mask.to(dtype)
            pad = pad.view(n, 1, 1, k_len)
            mask = pad if mask is None else mask + pad
        return mask

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        key = query if key is None else key
        value = query if value is None else value
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, q_len, _ = query.shape
        k_len = key.shape[1]
        q, k, v = self._project_qkv(query, key, value)
        # (N, L, E) -> (N, H, L, Dh)
        q = q.view(n, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(n, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(n, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, n, q_len, k_len, q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        if self.probs_hook is None:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
            )
        else:
            scores = q @ k.transpose(-2, -1) / self.head_dim**0.5  # (N, H, L, S)
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1)
            self.probs_hook(probs.detach())
            out = F.dropout(probs, dropout_p) @ v
        out = out.transpose(1, 2).reshape(n, q_len, self.embed_dim)  # (N, H, L, Dh) -> (N, L, E)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def _back_to_back(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """One tensor over ``tensors`` (equal shapes) stacked along dim 0 when they already lie back to back in one
    storage, contiguous, in this order (a view: no copy), else None."""
    first = tensors[0]
    n, offset = first.numel(), first.storage_offset()
    ptr = first.untyped_storage().data_ptr()
    for i, t in enumerate(tensors):
        if (
            t.shape != first.shape
            or t.dtype != first.dtype
            or t.device != first.device
            or not t.is_contiguous()
            or t.untyped_storage().data_ptr() != ptr
            or t.storage_offset() != offset + i * n
        ):
            return None
    shape = (len(tensors) * first.shape[0], *first.shape[1:])
    return first.new_empty(0).set_(first.untyped_storage(), offset, shape, first.stride())


def set_fused_qkv(model: nn.Module, enabled: bool = True) -> int:
    """Turn ``fuse_qkv`` on or off in every ``UnfusedAttention`` of ``model``; returns how many were set."""
    count = 0
    for m in model.modules():
        if isinstance(m, UnfusedAttention):
            m.fuse_qkv, m._fused = enabled, None
            count += 1
    return count


def fuse_attention(attn: UnfusedAttention) -> nn.MultiheadAttention:
    """Build a stock ``nn.MultiheadAttention`` holding ``attn``'s (plain ``nn.Linear``) projections."""
    projs = (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj)
    if not all(type(p) is nn.Linear for p in projs):
        raise TypeError("merge adapters before fusing attention: projections must be plain nn.Linear")
    w = attn.q_proj.weight
    mha = nn.MultiheadAttention(
        attn.embed_dim,
        attn.num_heads,
        dropout=attn.dropout,
        bias=attn.q_proj.bias is not None,
        batch_first=attn.batch_first,
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        if mha.in_proj_bias is not None:
            mha.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        if mha.out_proj.bias is not None:
            mha.out_proj.bias.copy_(attn.out_proj.bias)
    return mha
