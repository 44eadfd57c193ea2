"""Torch threads per trial: the training step at 1 vs 2 intra-op threads, per model size.

``model.threads: auto`` (``ranksearch.training.threads``) gives models under 20 M parameters one thread and
larger ones every CPU the trial owns. This benchmark measures that choice: the same trainer's step, interleaved,
with ``torch.set_num_threads(1)`` and ``(2)`` set before each call; the row is met when ``auto`` picks the faster.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import torch

from bench.common import Scale, Workload, build, lora_sites, make_trainer
from bench.report import Context, Row
from bench.timing import interleaved

MISSES: dict[str, str] = {}


def _settings(ctx: Context) -> list[Scale]:
    if ctx.quick:
        return [Scale("rs-tiny-clip", batch=32, classes=10, images=64, repeats=3, warmup=1)]
    settings = [Scale("rs-tiny-clip", batch=32, classes=10, images=64, repeats=31, warmup=3)]
    # 2 threads of a ViT-B-32 hold both cores for minutes; RANKSEARCH_BENCH_THREADS_VIT=0 leaves it out
    if os.environ.get("RANKSEARCH_BENCH_THREADS_VIT", "1") != "0":
        settings.append(Scale("ViT-B-32", batch=8, classes=10, images=32, repeats=5, warmup=1))
    return settings


def _with_threads(fn: Callable[[], object], n: int) -> Callable[[], object]:
    def call() -> object:
        torch.set_num_threads(n)
        return fn()

    return call


def run(ctx: Context) -> list[Row]:
    from ranksearch.adapters.lora import LoraConfig
    from ranksearch.training.threads import threads_for

    rows: list[Row] = []
    before = torch.get_num_threads()
    if "RANKSEARCH_BENCH_THREADS_VIT" in os.environ:
        ctx.notes.append(
            f"threads: run with RANKSEARCH_BENCH_THREADS_VIT={os.environ['RANKSEARCH_BENCH_THREADS_VIT']}"
        )
    try:
        for s in _settings(ctx):
            label = "ViT-B-32" if s.model == "ViT-B-32" else "tiny"
            _, size = build(s.model, torch.device("cpu"))
            work = Workload.make(s.model, size, s.images, s.classes)
            model, _ = build(s.model, ctx.device)
            params = sum(p.numel() for p in model.parameters())
            auto = threads_for(model, "auto", cpus=2)
            trainer, _ = make_trainer(
                model, "lora", LoraConfig(r=2), lora_sites(model), work, ctx.device, s.batch
            )
            cands = {f"{n} thread(s)": _with_threads(trainer.train_step, n) for n in (1, 2)}
            ctx.log(f"{label}: 1 vs 2 threads, {s.repeats} rounds")
            t = interleaved(cands, ctx.device, s.repeats, s.warmup)
            ratio = t.ratio("2 thread(s)", "1 thread(s)")
            faster = 2 if ratio < 1 else 1
            rows.append(
                Row(
                    "threads",
                    f"{label}: step with 2 torch threads / 1 (auto picks {auto})",
                    "auto picks the faster",
                    f"{ratio:.2f}",
                    None if ctx.device.type == "cuda" else auto == faster,
                    f"{params / 1e6:.1f} M parameters, LoRA r=2 on q,k,v of both towers; s/step: 1 thread "
                    f"{t.median('1 thread(s)'):.4f}, 2 threads {t.median('2 thread(s)'):.4f}; a trial with 2 CPUs",
                )
            )
            del cands, t, trainer, model
            gc.collect()
    finally:
        torch.set_num_threads(before)
    return rows
