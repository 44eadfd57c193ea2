"""Put adapters into an open_clip model and take them out again.

``attach_adapters`` unfuses the attention of every block that gets an attention adapter, then lets the family
wrap each site's linear. ``merge_to_stock`` merges every adapter and restores stock open_clip modules, so the
result is a plain open_clip model (same class, same state-dict keys) with the update folded in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ranksearch.adapters.base import AdapterFamily, AdapterLayer, Site
from ranksearch.adapters.sites import unfuse_block_attention
from ranksearch.models.attention import UnfusedAttention, fuse_attention

__all__ = ["adapter_layers", "attach_adapters", "merge_to_stock", "unadapted", "unfuse_block_attention"]


def attach_adapters(model: nn.Module, family: AdapterFamily, sites: list[Site]) -> list[AdapterLayer]:
    """Freeze the model, then let ``family`` wrap every site. Returns the adapter layers in site order."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = family.attach(model, sites)
    model.train(model.training)  # new modules default to training mode; follow the model's mode
    return layers


def adapter_layers(model: nn.Module) -> list[AdapterLayer]:
    return [m for m in model.modules() if isinstance(m, AdapterLayer)]


def merge_to_stock(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weights and restore stock open_clip modules, in place.

    Afterwards the model holds no ranksearch module: adapted linears are plain ``nn.Linear`` again and unfused
    attention is a stock ``nn.MultiheadAttention``. Families whose layers are not mergeable raise
    ``AdapterError`` before anything is changed.
    """
    layers = adapter_layers(model)
    for layer in layers:
        if not layer.mergeable:
            from ranksearch.errors import AdapterError

            raise AdapterError(
                f"{type(layer).__name__} at {layer.site.key} is input-dependent and cannot be merged into static "
                "weights; export the adapter together with the model instead"
            )
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, AdapterLayer):
                child.merge()
                setattr(module, name, child.base)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, UnfusedAttention):
                setattr(module, name, fuse_attention(child))
    return model


@contextlib.contextmanager
def unadapted(model: nn.Module) -> Iterator[nn.Module]:
    """The model as open_clip built it, for the duration of the block: the zero-shot baseline.

    Every adapter layer steps aside for its frozen base and unfused attention becomes a stock
    ``nn.MultiheadAttention`` again, so the outputs are the pretrained model's whatever the family's init (RLRR's
    Kaiming-initialised multipliers and SSF are not identity). Everything is put back afterwards, unchanged.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for kind in (AdapterLayer, UnfusedAttention):  # adapters first: fusing needs plain projections
            for module in list(model.modules()):
                for name, child in list(module.named_children()):
                    if isinstance(child, kind) and not isinstance(module, AdapterLayer):
                        plain = child.base if kind is AdapterLayer else _stock_attention(child)
                        if plain is None:  # a projection wrapped by something else: equal within 1e-5 anyway
                            continue
                        setattr(module, name, plain)
                        swapped.append((module, name, child))
        yield model
    finally:
        for module, name, child in reversed(swapped):
            setattr(module, name, child)


def _stock_attention(attn: UnfusedAttention) -> nn.Module | None:
    """A frozen stock ``nn.MultiheadAttention`` in ``attn``'s mode: the module open_clip built (a parameter that
    requires grad, or training mode, takes PyTorch off its fast path, whose rounding differs). None when a
    projection is not a plain linear."""
    try:
        mha = fuse_attention(attn).train(attn.training)
    except TypeError:
        return None
    for p in mha.parameters():
        p.requires_grad_(False)
    return mha
