"""Address the linear of a site inside an open_clip model and swap it for an adapter layer.

Below ``ranksearch.adapters.base`` in the import order (base's ``attach`` uses ``replace_linear``), so this module
knows adapter layers only as modules that are not ``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ranksearch.adapters.placement import ATTENTION_MATRICES, Site
from ranksearch.models.attention import UnfusedAttention
from ranksearch.models.clip import tower_blocks

_ATTR = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj", "fc": "c_fc", "proj": "c_proj"}


def block_at(model: nn.Module, site: Site) -> nn.Module:
    return tower_blocks(model)[site.tower][site.layer]


def _parent_and_attr(model: nn.Module, site: Site) -> tuple[nn.Module, str]:
    block = block_at(model, site)
    parent = block.attn if site.module in ATTENTION_MATRICES else block.mlp
    return parent, _ATTR[site.module]


def linear_at(model: nn.Module, site: Site) -> nn.Module:
    parent, attr = _parent_and_attr(model, site)
    return getattr(parent, attr)


def unfuse_block_attention(block: nn.Module) -> UnfusedAttention:
    """Replace a block's ``nn.MultiheadAttention`` by ``UnfusedAttention`` (no-op if already unfused)."""
    if not isinstance(block.attn, UnfusedAttention):
        if not isinstance(block.attn, nn.MultiheadAttention):
            raise TypeError(f"cannot unfuse attention of type {type(block.attn).__name__}")
        block.attn = UnfusedAttention(block.attn)
    return block.attn


def replace_linear(model: nn.Module, site: Site, factory: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """Swap the linear at ``site`` for ``factory(linear)``; unfuses the block's attention first if needed."""
    if site.module in ATTENTION_MATRICES:
        unfuse_block_attention(block_at(model, site))
    parent, attr = _parent_and_attr(model, site)
    base = getattr(parent, attr)
    if not isinstance(base, nn.Linear):  # an adapter layer is a Module around the Linear, never a Linear
        raise ValueError(
            f"site {site.key} is already adapted (holds a {type(base).__name__}, not an nn.Linear)"
        )
    layer = factory(base)
    setattr(parent, attr, layer)
    return layer
