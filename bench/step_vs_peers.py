"""Item 1: training-step time of ranksearch's LoRA vs Hugging Face PEFT and a plain CLIP-LoRA implementation.

Same open_clip model, same placement (q, k, v of both towers, r = 2, no adapter dropout), same batch and data
path. ranksearch runs its real ``Trainer.train_step``; the peers run ``bench.common.PeerLoop`` (the same
normalise + augment + loss + AdamW). Then the options the plain code does not have, each measured against
ranksearch's default step in its own interleaved group: fused q/k/v projections, AMP, ``torch.compile``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from bench.common import (
    PeerLoop,
    Scale,
    Workload,
    attach_peft_lora,
    attach_plain_lora,
    build,
    lora_sites,
    make_trainer,
    peft_available,
)
from bench.report import Context, Row, at_most, ratio_note
from bench.timing import interleaved

MISSES = {
    "tiny: ranksearch / PEFT": (
        "at 3.7 M parameters (width 64, 32 px) a step is ~12 ms and mostly per-op dispatch, not arithmetic. PEFT's "
        "MultiheadAttention path runs one fused in_proj matmul per block (merging a rank-2 update into a 192×64 "
        "weight is nearly free at this size), while ranksearch, like the plain CLIP-LoRA code, runs three q/k/v "
        "linears plus three LoRA branches (about a dozen more small ops per block, forward and backward). On the "
        "ViT-B-32 row, where arithmetic dominates, ranksearch is at 0.5× PEFT. What would fix it: fused q/k/v with "
        "one stacked LoRA A/B for the three branches (the fused-q/k/v option only fuses the frozen matmul), or "
        "capturing the whole step (torch.compile of forward+backward, CUDA graphs on GPU); compiling encode_image "
        "alone changed nothing measurable here."
    ),
}


def _settings(ctx: Context) -> list[Scale]:
    if ctx.quick:
        return [Scale("rs-tiny-clip", batch=32, classes=10, images=64, repeats=3, warmup=1)]
    return [
        Scale("ViT-B-32", batch=8, classes=10, images=32, repeats=7, warmup=1),
        Scale("rs-tiny-clip", batch=32, classes=10, images=64, repeats=21, warmup=3),
    ]


def _lora_cfg():
    from ranksearch.adapters.lora import LoraConfig

    return LoraConfig(r=2, alpha=1.0, dropout=0.0)


def _ranksearch(
    s: Scale, ctx: Context, work: Workload, precision: str = "fp32", **opts
) -> Callable[[], object]:
    from ranksearch.models.attention import set_fused_qkv

    model, _ = build(s.model, ctx.device)
    trainer, _ = make_trainer(
        model, "lora", _lora_cfg(), lora_sites(model), work, ctx.device, s.batch, precision
    )
    if opts.get("full_prompts"):
        trainer.cut_prompts = False
    if opts.get("fused_qkv"):
        set_fused_qkv(model, True)
    if opts.get("compile"):
        model.encode_image = torch.compile(model.encode_image)  # what model.compile=true does in run_trial
    return trainer.train_step


def _plain(s: Scale, ctx: Context, work: Workload) -> Callable[[], object]:
    model, _ = build(s.model, ctx.device)
    return PeerLoop(
        model, attach_plain_lora(model, r=2, alpha=1.0, dropout=0.0), work, ctx.device, s.batch
    ).step


def _peft(s: Scale, ctx: Context, work: Workload) -> Callable[[], object]:
    model, _ = build(s.model, ctx.device)
    model, params = attach_peft_lora(model, r=2, alpha=1.0)
    return PeerLoop(model, params, work, ctx.device, s.batch).step


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    peft_version = peft_available()
    for s in _settings(ctx):
        label = "ViT-B-32" if s.model == "ViT-B-32" else "tiny"
        _, size = build(s.model, torch.device("cpu"))
        work = Workload.make(s.model, size, s.images, s.classes)

        # group 1: ranksearch vs the peers
        cands = {
            "ranksearch": _ranksearch(s, ctx, work),
            "ranksearch, full 77-token prompts": _ranksearch(s, ctx, work, full_prompts=True),
            "plain": _plain(s, ctx, work),
        }
        if peft_version:
            cands["peft"] = _peft(s, ctx, work)
        ctx.log(f"{label}: ranksearch vs peers, {s.repeats} rounds")
        t = interleaved(cands, ctx.device, s.repeats, s.warmup)
        secs = ", ".join(f"{k} {t.median(k):.3f}" for k in t.times)
        note = f"s/step: {secs}"
        if peft_version:
            m, ok = at_most(t.ratio("ranksearch", "peft"), 0.85)
            rows.append(
                Row("step_vs_peers", f"{label}: ranksearch / PEFT", "≤ 0.85", m, ok,
                    f"{note}; {ratio_note(t, 'ranksearch', 'peft')}")
            )  # fmt: skip
        else:
            rows.append(
                Row("step_vs_peers", f"{label}: ranksearch / PEFT", "≤ 0.85", "skipped: peft not installed")
            )
        m, ok = at_most(t.ratio("ranksearch", "plain"), 1.0)
        rows.append(
            Row("step_vs_peers", f"{label}: ranksearch / plain CLIP-LoRA", "≤ 1.0", m, ok,
                f"{note}; {ratio_note(t, 'ranksearch', 'plain')}")
        )  # fmt: skip
        m, ok = at_most(t.ratio("ranksearch, full 77-token prompts", "plain"), 1.0)
        rows.append(
            Row(
                "step_vs_peers",
                f"{label}: ranksearch with the prompt cut off / plain (same work as plain)",
                "≤ 1.0",
                m,
                ok,
                "text tower on the full context, as the plain code does; "
                + ratio_note(t, "ranksearch, full 77-token prompts", "plain"),
            )
        )
        rows.append(
            Row(
                "step_vs_peers",
                f"{label}: option prompt cut after EOT (default on) / off",
                "report",
                f"{t.ratio('ranksearch', 'ranksearch, full 77-token prompts'):.2f}",
                None,
                "exact: causal text tower, argmax pooling; "
                + ratio_note(t, "ranksearch", "ranksearch, full 77-token prompts"),
            )
        )
        del cands, t
        gc.collect()

        # group 2: options on top of ranksearch's default step
        amp = "fp16 + GradScaler" if ctx.device.type == "cuda" else "bf16 autocast"
        cands = {
            "default": _ranksearch(s, ctx, work),
            "fused": _ranksearch(s, ctx, work, fused_qkv=True),
            "amp": _ranksearch(s, ctx, work, precision="amp"),
        }
        if not ctx.quick:  # compiling takes minutes on 2 cores; quick mode checks the rest
            cands["compile"] = _ranksearch(s, ctx, work, compile=True)
        ctx.log(f"{label}: options, {s.repeats} rounds")
        t = interleaved(cands, ctx.device, s.repeats, max(s.warmup, 2 if "compile" in cands else 1))
        base = f"default {t.median('default'):.3f} s/step"
        rows.append(
            Row("step_vs_peers", f"{label}: option fused q/k/v matmul / default", "report",
                f"{t.ratio('fused', 'default'):.2f}", None, base + "; " + ratio_note(t, "fused", "default"))
        )  # fmt: skip
        rows.append(
            Row("step_vs_peers", f"{label}: option AMP ({amp}) / fp32", "report",
                f"{t.ratio('amp', 'default'):.2f}", None, base + "; " + ratio_note(t, "amp", "default"))
        )  # fmt: skip
        if "compile" in cands:
            rows.append(
                Row("step_vs_peers", f"{label}: option torch.compile(encode_image) / eager", "report",
                    f"{t.ratio('compile', 'default'):.2f}", None,
                    f"{base}; {ratio_note(t, 'compile', 'default')}; compile time excluded (warm-up)")
            )  # fmt: skip
        else:
            rows.append(
                Row("step_vs_peers", f"{label}: option torch.compile(encode_image) / eager", "report",
                    "skipped in quick mode", None)
            )  # fmt: skip
        del cands, t
        gc.collect()
    return rows
