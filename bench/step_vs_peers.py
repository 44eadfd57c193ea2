"""Item 1: training-step time of ranksearch's LoRA vs Hugging Face PEFT and a plain CLIP-LoRA implementation.

Same open_clip model, same placement (q, k, v of both towers, r = 2, no adapter dropout), same batch and data
path. ranksearch runs its real ``Trainer.train_step``; the peers run ``bench.common.PeerLoop`` (the same
normalise + augment + loss + AdamW). Then the options the plain code does not have, each measured against
ranksearch's default step in its own interleaved group: the stacked q/k/v path against separate projections,
AMP, ``torch.compile``.
"""

from __future__ import annotations

import gc
import os
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

_EQUAL = (
    "At equal work ranksearch and the plain CLIP-LoRA code run the same frozen matmuls, attention kernels and "
    "input-gradient backward; only the adapter overhead above the frozen-backprop floor can differ, and that "
    "overhead is a few percent (overhead_floor, idle machine: LoRA 1.09x and CoDyRA 1.03x the floor; the stacked "
    "q/k/v product 1.00x separate projections). 0.85x plain would need a step ~12% below the frozen model's own "
    "forward + backward. "
)
_IDLE = "Re-measured on an idle machine (2026-12-03 01:33-01:44 UTC, load ~1, 5 and 21 rounds, 1 thread). "

MISSES = {
    "ViT-B-32: ranksearch / PEFT, equal work (EOT cut on both)": (
        _IDLE
        + "ranksearch 1.993 s/step, PEFT 2.428 s, the frozen-backprop floor 1.944 s (overhead_floor's ViT-B-32 "
        "step): ranksearch runs at 1.03x the floor, PEFT at 1.25x (its MultiheadAttention LoRA merges the update "
        "into in_proj_weight before every forward, so its backward forms the full in_proj and out_proj weight "
        "gradients). 0.70x PEFT is 1.70 s/step, 12% below the floor: not reachable at equal work; the earlier "
        "0.72 came from 3 rounds at a load average of ~28."
    ),
    "ViT-B-32: ranksearch / plain CLIP-LoRA, equal work (EOT cut on both)": (
        _IDLE
        + _EQUAL
        + "Here both are at the floor: ranksearch 1.993 s/step, plain 1.997 s, floor 1.944 s. What could reach "
        "it: lower precision (the AMP row, on a CPU with native bf16), or on a GPU fewer kernel launches (CUDA "
        "graphs); neither is equal work."
    ),
    "tiny: ranksearch / PEFT, equal work (EOT cut on both)": (
        _IDLE
        + "At 3.4 M parameters (width 64, 32 px) a step (22 ms) is per-op dispatch, not arithmetic; PEFT's "
        "weight merge costs little at this size, so the gap is op count: ranksearch's stacked q/k/v path runs "
        "about as many small ops per block as PEFT's fused in_proj with merge/unmerge."
    ),
    "tiny: ranksearch / plain CLIP-LoRA, equal work (EOT cut on both)": (
        _IDLE
        + _EQUAL
        + "At this size the step is per-op dispatch: the stacked path's few extra ops (concatenating A, the "
        "block-diagonal B) cost about what they save."
    ),
}


def _cpu_bf16() -> str:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 / AMX); without it bf16 autocast is emulated."""
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (
        f"CPU {torch.backends.cpu.get_cpu_capability()}, native bf16 {'yes' if native else 'no (emulated)'}"
    )


def _settings(ctx: Context) -> list[Scale]:
    if ctx.quick:
        return [Scale("rs-tiny-clip", batch=32, classes=10, images=64, repeats=3, warmup=1)]
    # on a crowded machine: RANKSEARCH_BENCH_VIT_REPEATS=3 (fewer ViT-B-32 rounds), RANKSEARCH_BENCH_PEER_FULL=0
    # (no full-prompt cross-check of the peers on ViT-B-32); the run's notes record either
    vit_repeats = int(os.environ.get("RANKSEARCH_BENCH_VIT_REPEATS", "5"))
    return [
        Scale("ViT-B-32", batch=8, classes=10, images=32, repeats=vit_repeats, warmup=1),
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
    if "fused_qkv" in opts:
        set_fused_qkv(model, opts["fused_qkv"])
    if opts.get("compile"):
        model.encode_image = torch.compile(model.encode_image)  # what model.compile=true does in run_trial
    return trainer.train_step


def _plain(s: Scale, ctx: Context, work: Workload, cut: bool = True) -> Callable[[], object]:
    model, _ = build(s.model, ctx.device)
    return PeerLoop(
        model,
        attach_plain_lora(model, r=2, alpha=1.0, dropout=0.0),
        work,
        ctx.device,
        s.batch,
        cut_prompts=cut,
    ).step


def _peft(s: Scale, ctx: Context, work: Workload, cut: bool = True) -> Callable[[], object]:
    model, _ = build(s.model, ctx.device)
    model, params = attach_peft_lora(model, r=2, alpha=1.0)
    return PeerLoop(model, params, work, ctx.device, s.batch, cut_prompts=cut).step


# headline targets at equal work (issue 20): ViT-B-32-size step <= 0.70x PEFT and <= 0.85x plain CLIP-LoRA
TARGETS = {"peft": 0.70, "plain": 0.85}
PEERS = {"peft": "PEFT", "plain": "plain CLIP-LoRA"}


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    peft_version = peft_available()
    for var in ("RANKSEARCH_BENCH_VIT_REPEATS", "RANKSEARCH_BENCH_PEER_FULL", "RANKSEARCH_BENCH_COMPILE"):
        if var in os.environ:
            ctx.notes.append(f"step_vs_peers: run with {var}={os.environ[var]}")
    for s in _settings(ctx):
        label = "ViT-B-32" if s.model == "ViT-B-32" else "tiny"
        _, size = build(s.model, torch.device("cpu"))
        work = Workload.make(s.model, size, s.images, s.classes)

        # group 1: ranksearch vs the peers at equal work. The headline gives every candidate the EOT prompt cut
        # (a property of CLIP's causal, EOT-pooled text tower that any implementation could use); the cross-check
        # runs every candidate on the full 77-token prompts; the cut itself is reported on its own.
        peers = ["plain"] + (["peft"] if peft_version else [])
        cands = {"ranksearch": _ranksearch(s, ctx, work)}
        cands.update({p: (_plain if p == "plain" else _peft)(s, ctx, work) for p in peers})
        cands["ranksearch, full prompts"] = _ranksearch(s, ctx, work, full_prompts=True)
        full_peers = (
            peers if s.model != "ViT-B-32" or os.environ.get("RANKSEARCH_BENCH_PEER_FULL") != "0" else []
        )
        cands.update(
            {
                f"{p}, full prompts": (_plain if p == "plain" else _peft)(s, ctx, work, cut=False)
                for p in full_peers
            }
        )
        ctx.log(f"{label}: ranksearch vs peers, {len(cands)} candidates, {s.repeats} rounds")
        t = interleaved(cands, ctx.device, s.repeats, s.warmup)
        note = "s/step: " + ", ".join(f"{k} {t.median(k):.3f}" for k in t.times)
        for peer in ("peft", "plain"):
            what = f"{label}: ranksearch / {PEERS[peer]}, equal work (EOT cut on both)"
            if peer not in peers:
                rows.append(
                    Row("step_vs_peers", what, f"≤ {TARGETS[peer]:.2f}", "skipped: peft not installed")
                )
                continue
            m, ok = at_most(t.ratio("ranksearch", peer), TARGETS[peer])
            rows.append(
                Row("step_vs_peers", what, f"≤ {TARGETS[peer]:.2f}", m, ok,
                    f"{note}; {ratio_note(t, 'ranksearch', peer)}")
            )  # fmt: skip
        for peer in full_peers:
            rows.append(
                Row(
                    "step_vs_peers",
                    f"{label}: ranksearch / {PEERS[peer]}, equal work (full 77-token prompts on both)",
                    "report",
                    f"{t.ratio('ranksearch, full prompts', f'{peer}, full prompts'):.2f}",
                    None,
                    "cross-check of the headline without the cut; "
                    + ratio_note(t, "ranksearch, full prompts", f"{peer}, full prompts"),
                )
            )
        rows.append(
            Row(
                "step_vs_peers",
                f"{label}: EOT prompt cut, a property of CLIP any peer could use (ranksearch: cut / full prompts)",
                "report",
                f"{t.ratio('ranksearch', 'ranksearch, full prompts'):.2f}",
                None,
                "exact (causal text tower, argmax pooling); the peers with the cut / without: "
                + (", ".join(f"{p} {t.ratio(p, f'{p}, full prompts'):.2f}" for p in full_peers) or "not run")
                + "; "
                + ratio_note(t, "ranksearch", "ranksearch, full prompts"),
            )
        )
        del cands, t
        gc.collect()

        # group 2: options on top of ranksearch's default step
        amp = "fp16 + GradScaler" if ctx.device.type == "cuda" else "bf16 autocast"
        cands = {
            "default": _ranksearch(s, ctx, work),
            "separate": _ranksearch(s, ctx, work, fused_qkv=False),
            "amp": _ranksearch(s, ctx, work, precision="amp"),
        }
        # compiling takes minutes on 2 cores: quick mode checks the rest, and RANKSEARCH_BENCH_COMPILE=0 skips it
        if not ctx.quick and os.environ.get("RANKSEARCH_BENCH_COMPILE", "1") != "0":
            cands["compile"] = _ranksearch(s, ctx, work, compile=True)
        ctx.log(f"{label}: options, {s.repeats} rounds")
        t = interleaved(cands, ctx.device, s.repeats, max(s.warmup, 2 if "compile" in cands else 1))
        base = f"default {t.median('default'):.3f} s/step"
        rows.append(
            Row("step_vs_peers", f"{label}: stacked q/k/v (fused frozen matmul + one low-rank product, default) "
                "/ separate q, k, v projections", "report", f"{t.ratio('default', 'separate'):.2f}", None,
                f"separate {t.median('separate'):.3f} s/step; " + ratio_note(t, "default", "separate"))
        )  # fmt: skip
        rows.append(
            Row("step_vs_peers", f"{label}: option AMP ({amp}) / fp32", "report",
                f"{t.ratio('amp', 'default'):.2f}", None, base + "; " + ratio_note(t, "amp", "default")
                + ("" if ctx.device.type == "cuda" else f"; {_cpu_bf16()}"))
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
                    "skipped (quick mode or RANKSEARCH_BENCH_COMPILE=0)", None)
            )  # fmt: skip
        del cands, t
        gc.collect()
    return rows
