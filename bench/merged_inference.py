"""Item 4: inference of merged adapters is stock open_clip; DRA-style (not mergeable) overhead unmerged.

Every mergeable family is attached (q, k, v of both towers; RLRR also its SSF LayerNorm scales), given non-zero
updates, merged with ``merge_to_stock`` and checked to *be* a stock open_clip model (same module classes, same
state-dict keys and shapes as a fresh model). Latency: image batch + class prompts through the model, no grad,
eval mode, interleaved with a stock model.
"""

from __future__ import annotations

import gc

import torch
from torch import nn

from bench.common import Scale, Workload, build, lora_sites
from bench.report import Context, Row, at_most, ratio_note
from bench.timing import interleaved

MERGEABLE = ["lora", "codyra", "rlrr", "adalora"]


def _settings(ctx: Context) -> Scale:
    if ctx.quick:
        return Scale("rs-tiny-clip", batch=32, classes=10, images=32, repeats=5, warmup=1)
    return Scale("ViT-B-32", batch=8, classes=10, images=8, repeats=21, warmup=2)


def _is_stock(model: nn.Module, stock: nn.Module) -> bool:
    kinds = [type(m) for m in model.modules()]
    ref = [type(m) for m in stock.modules()]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in stock.state_dict().items()}
    return kinds == ref and shapes == ref_shapes


def _perturb(model: nn.Module) -> None:
    """Non-zero adapter parameters, so merging really changes the weights."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)


def run(ctx: Context) -> list[Row]:
    from ranksearch.adapters import get_family
    from ranksearch.adapters.inject import attach_adapters, merge_to_stock

    s = _settings(ctx)
    label = "ViT-B-32" if s.model == "ViT-B-32" else "tiny"
    stock, size = build(s.model, ctx.device)
    work = Workload.make(s.model, size, s.images, s.classes)
    images = torch.randn(s.batch, 3, size, size, device=ctx.device)
    tokens = work.tokens.to(ctx.device)
    models: dict[str, nn.Module] = {"stock A": stock}
    stock_ok: dict[str, bool] = {}
    for name in [*MERGEABLE, "dra"]:
        model, _ = build(s.model, ctx.device)
        family = get_family(name)(get_family(name).config_cls(), 100)
        attach_adapters(
            model, family, lora_sites(model, "both", "all", ["o"] if name == "dra" else ["q", "k", "v"])
        )
        _perturb(model)
        if name != "dra":
            merge_to_stock(model)
            stock_ok[name] = _is_stock(model, stock)
        models[name] = model.eval()
    # A second stock copy built after the others: which copy is faster depends a little on where its weights
    # landed in memory (first-built models measured a few percent slower), so the baseline of every round is
    # the mean of a copy built before and one built after the adapted models.
    models["stock B"], _ = build(s.model, ctx.device)

    def infer(model: nn.Module):
        def f():
            with torch.no_grad():
                return model.encode_image(images), model.encode_text(tokens)

        return f

    ctx.log(f"{label}: {len(models)} models, {s.repeats} rounds")
    t = interleaved({k: infer(m) for k, m in models.items()}, ctx.device, s.repeats, s.warmup)
    t.times["stock"] = [(a + b) / 2 for a, b in zip(t.times["stock A"], t.times["stock B"], strict=True)]
    if t.cpu.get("stock A"):
        t.cpu["stock"] = [(a + b) / 2 for a, b in zip(t.cpu["stock A"], t.cpu["stock B"], strict=True)]
    rows = []
    for name in MERGEABLE:
        m, ok = at_most(t.ratio(name, "stock"), 1.01, "{:.3f}")
        rows.append(
            Row(
                "merged_inference",
                f"{name}: merged / stock open_clip latency",
                "≤ 1.01, stock model",
                f"{m}; stock model: {'yes' if stock_ok[name] else 'NO'}",
                ok and stock_ok[name],
                f"{label}, image batch {s.batch} + {s.classes} prompts; stock {t.median('stock') * 1e3:.1f} ms "
                f"(copies: {t.ratio('stock B', 'stock A'):.3f} B/A); " + ratio_note(t, name, "stock"),
            )
        )
    rows.append(
        Row(
            "merged_inference",
            "dra: unmerged inference / stock",
            "report",
            f"{t.ratio('dra', 'stock'):.2f}",
            None,
            "not mergeable (token- and instance-dependent); adapters on o of every block, explicit attention; "
            + ratio_note(t, "dra", "stock"),
        )
    )
    del models, t
    gc.collect()
    return rows
