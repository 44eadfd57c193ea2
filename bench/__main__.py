"""``python -m bench``: run the benchmark suite and rewrite ``docs/benchmarks.md``.

    python -m bench                     # everything (<= 30 min on 2 CPU cores)
    python -m bench --quick             # CI: tiny settings, checks every benchmark executes (<= 3 min)
    python -m bench --only step_vs_peers --out /tmp/bench.md
    python -m bench --only startup --merge  # re-measure one benchmark, keep the other rows of the report
    python -m bench --device cuda       # GPU variant: CUDA events, fp16 AMP, CUDA allocator peaks

On a crowded machine some benchmarks take switches (environment variables; the report's command and notes
record every RANKSEARCH_BENCH_* and RANKSEARCH_SEARCH_* that was set): RANKSEARCH_BENCH_VIT_REPEATS (ViT-B-32
rounds), RANKSEARCH_BENCH_PEER_FULL=0 (no full-prompt peers on ViT-B-32), RANKSEARCH_BENCH_FLOOR_FAMILIES (a subset
of families), RANKSEARCH_BENCH_PACK_STACKED=0, RANKSEARCH_BENCH_PACKED_PARTS=phases (the packed phase row alone),
RANKSEARCH_BENCH_SEARCH_SMALL=1, RANKSEARCH_BENCH_COMPILE=0, RANKSEARCH_BENCH_THREADS_VIT=0, and search_efficiency's
RANKSEARCH_SEARCH_FROM_SAVED / RANKSEARCH_SEARCH_CASES.

A benchmark that raises is reported as a row saying so (and the exit status is 1), so one broken benchmark
does not hide the others' numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BENCHMARKS = [
    "step_vs_peers",
    "overhead_floor",
    "cache_prefix",
    "merged_inference",
    "memory",
    "threads",
    "packed",
    "search_overhead",
    "search_efficiency",
    "startup",
    "report_speed",
    "oneshot_search",
    "driver_scale",
]

PREAMBLE = """
Written by `python -m bench` (package `bench/`); do not edit by hand, rerun the command instead.

How to read it: every figure is a **ratio against a baseline measured in the same run**. Candidates run
interleaved (round-robin, rotating who goes first) after a warm-up; a ratio is the median over rounds of the
candidate's time over the baseline's time in the same round, so a burst of other work on the machine slows
both members of a pair. Times are medians of the repeats. Models have random weights (`pretrained=None`, no
download) and the data are synthetic (random images, 10 classes, prompt "a photo of a {}."), which changes
nothing about speed. **The numbers were taken on a shared machine** (2 cores, other engineers' jobs running):
ratios are stable to a few percent, absolute seconds are not. On a GPU (`--device cuda`) repeats are timed with
CUDA events and AMP means fp16 autocast with a GradScaler; on CPU AMP means bf16 autocast.

Settings: "ViT-B-32" is open_clip's ViT-B-32 with random weights at 224 px, batch 8; "tiny" is the built-in
`rs-tiny-clip` (32 px), batch 32. Placement for the step benchmarks: q, k, v of every block of both towers, r = 2,
adapter dropout 0 (PEFT's MultiheadAttention LoRA has no input dropout, so all three run without). PEFT is used
the way its docs say for `nn.MultiheadAttention` (`target_modules=["attn"]`): one rank-2 LoRA on the fused
`in_proj_weight` plus one on `out_proj` (it cannot leave `out_proj` out), merged into the weight before every
forward and unmerged after. "plain" is CLIP-LoRA's `PlainMultiheadAttentionLoRA` written plainly in
`bench/common.py`. Each row's notes give the absolute times and the same ratio on this process's CPU time
(a cross-check: other jobs steal wall time, not CPU time).

Peer rows compare **equal work**: the headline gives ranksearch and both peers the end-of-text prompt cut (a
property of CLIP's causal, EOT-pooled text tower that any implementation could use), a cross-check runs all three
on the full 77-token prompts, and the cut itself is a row of its own. Baselines are taken at their best: the
concurrency row's sequential trials run at whichever thread count is faster, the bare-Tune baseline reuses actors
as the sweep does, the packed-trial baseline is credited with perfectly scaling concurrent trials.

Speed work in the training core (`ranksearch/training/loop.py`, `ranksearch/models/attention.py`,
`ranksearch/adapters/`; equivalence tests in `tests/test_speed_options.py` and `tests/test_core_exact.py`):

- prompts are encoded only up to the batch's last end-of-text token (`text_prefix_length`): exact for CLIP's
  causal text tower with argmax pooling and token-wise adapters (not DRA-style), on by default;
- q, k, v of an adapted self-attention: one matmul over the three frozen weights (slices of one tensor, no copy)
  and one stacked low-rank product for the three LoRA/CoDyRA/AdaLoRA updates, accumulated into it by the same
  GEMM (`addmm`, block-diagonal B), on by default (`set_fused_qkv(model, False)` restores separate projections);
- RLRR computes each adapted linear with its effective weight W ⊙ (1 + S_l S_r): one matmul instead of 1 + r;
- AdaLoRA's per-step importance update runs as foreach kernels over every A, E, B at once, its orthogonality term
  as one batched product per shape;
- `train.cache_frozen_prefix` (augmentation off): the frozen vision blocks below the lowest adapted one run once
  per training image, later steps start from the cache (`FrozenPrefixCache`);
- class text features are computed once per trial when the text tower is frozen (already the case; verified);
- AdamW with `foreach=True` (the per-tensor loop cost more than the update on CPU; the fused CPU kernel was
  erratic on a loaded machine and is not used);
- LoRA applies its mask and scale on the r-wide activations instead of the d-wide output;
- `model.train()` is only called when the model is not already in training mode;
- `model.threads: auto`: 1 torch thread for models under 20 M parameters, every CPU of the trial otherwise;
- adapter dropout: `nn.Dropout` already takes torch's fused `native_dropout` kernel on CUDA (one pass: mask and
  output together); torch has no fused CPU kernel, so on CPU it stays bernoulli + scale + multiply;
- opt-in: AMP (`model.precision: amp`), `torch.compile` (`model.compile: true`).
"""


SWITCHES = (
    "RANKSEARCH_BENCH_",
    "RANKSEARCH_SEARCH_",
)  # environment variables that change what a benchmark runs


def _section(text: str, start: str, end: str) -> str:
    """The part of ``text`` from the heading ``start`` up to the heading ``end``."""
    return text[text.index(start) : text.index(end)]


def _keeping_run_section(out: Path, write: Callable[[], Any]) -> Any:
    """Call ``write`` (which rewrites ``out``), then put back the "## Run" section ``out`` had: when rows are only
    re-rendered or some re-measured, the full run's machine, code and load stay as they were measured."""
    old = _section(out.read_text(), "## Run", "## Results") if out.exists() else None
    result = write()
    if old is not None:
        text = out.read_text()
        out.write_text(text.replace(_section(text, "## Run", "## Results"), old, 1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: check that every benchmark runs")
    parser.add_argument(
        "--only", action="append", choices=BENCHMARKS, help="run only this benchmark (repeatable)"
    )
    parser.add_argument("--out", default="docs/benchmarks.md", help="report to (re)write")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="rewrite --out from the rows saved beside it (<out>.json) with the current notes; runs nothing",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: replace only these benchmarks' rows in --out (from <out>.json); the other rows and "
        "the original run's facts stay, and a note says when and how these rows were re-measured",
    )
    args = parser.parse_args(argv)

    import torch

    from bench.common import resolve_device
    from bench.report import Context, Row, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = Context(device=resolve_device(args.device), quick=args.quick)
    # the benchmarks' own switches (RANKSEARCH_BENCH_*, RANKSEARCH_SEARCH_*) are part of what reproduces a row
    switches = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith(SWITCHES)]
    command = (
        " ".join([*switches, "python -m bench"])
        + " "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    )
    rows: list[Row] = []
    misses: dict[str, str] = {}
    failed = False
    started = time.perf_counter()
    saved = Path(args.out).with_suffix(".json")
    if args.rerender:  # keep the measured rows and the run's facts; refresh the explanations
        data = json.loads(saved.read_text())
        rows = [Row(**r) for r in data["rows"]]
        for name in {r.bench for r in rows}:
            misses.update(getattr(importlib.import_module(f"bench.{name}"), "MISSES", {}))
        ctx.quick, ctx.notes = data["quick"], data["notes"]
        _keeping_run_section(Path(args.out), lambda: write_report(
            Path(args.out), rows, ctx, data["command"], data["seconds"], PREAMBLE, misses, data["date"]
        ))  # fmt: skip
        return 0
    for name in args.only or BENCHMARKS:
        ctx.log(f"== {name}")
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            rows += module.run(ctx)
            misses.update(getattr(module, "MISSES", {}))
        except Exception as e:  # report, keep going: the other benchmarks' numbers are still worth having
            failed = True
            traceback.print_exc()
            rows.append(Row(name, "benchmark raised", "runs", f"{type(e).__name__}: {e}", False))
            misses[name] = "the benchmark itself failed; see the traceback of the run"
        ctx.log(f"   {name}: {time.perf_counter() - t0:.0f} s")
    if ctx.quick:  # tiny settings and few repeats: the figures only show that everything runs
        for row in rows:
            if row.met is not None and row.name != "benchmark raised":
                row.met = None
        ctx.notes.append(
            "quick mode: tiny settings and few repeats; figures are not meaningful, targets not judged"
        )
    seconds = time.perf_counter() - started
    if args.merge and saved.exists():  # keep every other benchmark's rows and the full run's facts
        data = json.loads(saved.read_text())
        ran = set(args.only or BENCHMARKS)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        kept = [Row(**r) for r in data["rows"] if r["bench"] not in ran]
        for name in {r.bench for r in kept}:
            misses.update(getattr(importlib.import_module(f"bench.{name}"), "MISSES", {}))
        # a re-run benchmark writes its own notes again (re-measured, settings, provenance): drop the old ones
        notes = [n for n in data["notes"] if not any(n.startswith(f"{b}: ") for b in ran)]
        from bench.report import _git_rev

        notes += [
            f"{b}: re-measured {when} at git {_git_rev()} with `{command.strip()}` (load average {load})"
            for b in sorted(ran)
        ]
        rows, ctx.notes, command, seconds = kept + rows, notes + ctx.notes, data["command"], data["seconds"]
        date = _keeping_run_section(Path(args.out), lambda: write_report(
            Path(args.out), rows, ctx, command, seconds, PREAMBLE, misses, data["date"]
        ))  # fmt: skip
        saved.write_text(
            json.dumps(
                {"rows": [dataclasses.asdict(r) for r in rows], "quick": data["quick"], "notes": ctx.notes,
                 "command": command, "seconds": seconds, "date": date},
                indent=1,
            )
        )  # fmt: skip
        ctx.log(f"merged into {args.out}")
        return 1 if failed else 0
    date = write_report(Path(args.out), rows, ctx, command.strip(), seconds, PREAMBLE, misses)
    saved.write_text(
        json.dumps(
            {"rows": [dataclasses.asdict(r) for r in rows], "quick": ctx.quick, "notes": ctx.notes,
             "command": command.strip(), "seconds": seconds, "date": date},
            indent=1,
        )
    )  # fmt: skip
    ctx.log(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
