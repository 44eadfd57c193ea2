"""Item 3: work that need not be repeated.

* Text features: with the text tower frozen, class text features are computed once per trial (counted with a
  forward hook on the text transformer over many steps).
* Frozen prefix: vision-only LoRA on the top half (q, k, v of blocks 6-11 of ViT-B-32), no augmentation; steps
  with ``train.cache_frozen_prefix`` (the cache filled during the warm-up epoch) vs recomputing the prefix.
"""

from __future__ import annotations

import gc

import torch

from bench.common import Scale, Workload, build, lora_sites, make_trainer
from bench.report import Context, Row, at_least, ratio_note
from bench.timing import interleaved

MISSES = {
    "frozen-prefix cache: speedup, vision top half": (
        "the cache removes the frozen half of the forward only; the adapted half's forward and backward "
        "(~2/3 of the uncached step) remain. Larger gains need less work above the cut: a higher placement, or "
        "also serving the frozen parts of the upper blocks (e.g. LN and MLP inputs of unadapted matrices) from cache."
    ),
}


def _settings(ctx: Context) -> Scale:
    if ctx.quick:
        return Scale("rs-tiny-clip", batch=32, classes=10, images=64, repeats=3, warmup=2)
    return Scale("ViT-B-32", batch=8, classes=10, images=32, repeats=9, warmup=4)


def run(ctx: Context) -> list[Row]:
    from ranksearch.adapters.lora import LoraConfig

    s = _settings(ctx)
    label = "ViT-B-32" if s.model == "ViT-B-32" else "tiny"
    _, size = build(s.model, torch.device("cpu"))
    work = Workload.make(s.model, size, s.images, s.classes)
    steps = {}
    trainers = {}
    for cached in (False, True):
        model, _ = build(s.model, ctx.device)
        sites = lora_sites(model, "vision", "half-up", ["q", "k", "v"])
        trainer, _ = make_trainer(
            model, "lora", LoraConfig(r=2), sites, work, ctx.device, s.batch, augment=False,
            cache_frozen_prefix=cached,
        )  # fmt: skip
        if cached:
            assert trainer.prefix_cache is not None, "the cache should be active for this placement"
        name = "cached" if cached else "recompute"
        steps[name], trainers[name] = trainer.train_step, trainer
    # warm-up covers a full epoch (images / batch steps), so the timed steps are the steady state
    warmup = max(s.warmup, -(-s.images // s.batch))
    ctx.log(f"{label}: prefix cache vs recompute, {s.repeats} rounds after {warmup} warm-up steps")
    calls = {"n": 0}
    model = trainers["recompute"].model
    handle = model.transformer.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    t = interleaved(steps, ctx.device, s.repeats, warmup)
    handle.remove()
    n_steps = warmup + s.repeats
    start = trainers["cached"].prefix_cache.start
    m, ok = at_least(t.ratio("recompute", "cached"), 1.5)
    rows = [
        Row(
            "cache_prefix",
            "frozen-prefix cache: speedup, vision top half",
            "≥ 1.5×",
            m + "×",
            ok,
            f"{label}, LoRA q,k,v of vision blocks {start}+, no augmentation; recompute {t.median('recompute'):.3f} "
            f"s/step, cached {t.median('cached'):.3f} s/step; {ratio_note(t, 'recompute', 'cached')}",
        ),
        Row(
            "cache_prefix",
            "class text features with the text tower frozen",
            "once per trial",
            f"{calls['n']} text-tower pass(es) in {n_steps} steps",
            calls["n"] == 1,
        ),
    ]
    del steps, trainers, t
    gc.collect()
    return rows
