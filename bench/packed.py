"""Packed trials (``resources.pack``): throughput of K members on one shared frozen model, and its memory.

* Throughput: 8 tiny-model members in one ``ranksearch.training.packed.Pack`` vs the best unpacked schedule of the
  same trials on this machine's 2 cores. The unpacked trial is the real single-trial code (``TrialRun``'s
  ``Trainer.train_step``) at 1 and at 2 torch threads; its best schedule is credited with
  ``max(2 / t_1thread, 1 / t_2threads)`` member-steps per second, i.e. two concurrent 1-thread trials are
  assumed to scale perfectly onto the 2 cores (an upper bound for that schedule). The pack is credited the same
  way with the best of: one pack of 8 at 1 or 2 threads, two concurrent packs of 4 at 1 thread each (perfect
  scaling assumed, as for the baseline). Everything is timed interleaved in one process (A/B/A/B).
* Memory: resident-set high-water mark (VmHWM) of a fresh process training one ViT-B-32 trial vs one training a
  pack of 8 such members, with ``pack_group`` 1 (members step one after another on the shared weights) and 8 (one
  stacked forward/backward for all). On CUDA the same runs report ``torch.cuda.max_memory_allocated`` and the
  step times come from CUDA events (``bench.timing.time_once``); not measured here (no GPU lent).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.report import Context, Row, at_least, at_most
from bench.timing import interleaved
from ranksearch.training.phases import PHASES

MiB = 2**20
K = 8
MISSES: dict[str, str] = {
    "8 tiny trials packed (same-shape LoRA, lr differs) / best unpacked schedule, throughput": (
        "re-measured on an idle machine (2026-12-03 05:51 UTC, load ~1, 9 interleaved rounds): 1.19x, and 1.21x in "
        "CPU time per member-step (pack 21.6 ms, alone 26.2 ms), so it is not the 2-way concurrency credit. The "
        "phase row (idle, 11:16 UTC) says where it goes: per member-step, pack / alone, augment 6.3 / 6.7 ms "
        "(per member by definition: each draws and resamples its own crops), the shared model's phases (image "
        "forward, text forward + loss, backward) 15.5 / 20.1 ms, optimizer and bookkeeping 1.1 / 1.3 ms. So the "
        "per-member bookkeeping is not the cost (a foreach AdamW over all members or a batched loss could save "
        "about 1 ms of 23), and the stacked frozen matmuls scale only 1.3x: at batch 32 the tiny model is already "
        "arithmetic-bound on this CPU, 8x the rows cost about 8x the work. 2x is not reachable here at equal "
        "work; where it could hold is a GPU, where one stacked launch replaces 8 small ones (not measured: no "
        "GPU lent). The ViT-B-32 memory row shows the sharing itself works."
    ),
}


def _configs(model: str, k: int, mixed: bool, batch: int) -> list:
    """K trial configurations of one sweep (same model and data; lr, rank or family differ); no evaluation
    before the last of many steps, so the measured steps are training steps only."""
    from ranksearch.config import validate_trial_config

    base = {
        "model": {"name": model, "pretrained": None},
        "data": {"shots": 2, "test_per_class": 1},
        "train": {"iterations": 100_000, "batch_size": batch},
        "eval": {"evals": 1, "zero_shot": False},
    }
    adapters = (
        [
            {"family": "lora", "r": 2, "dropout": 0.0},
            {"family": "lora", "r": 4, "dropout": 0.0},
            {"family": "codyra", "r": 4},
            {"family": "adalora", "init_r": 4, "target_r": 2, "dropout": 0.0},
        ]
        if mixed
        else [{"family": "lora", "r": 2, "dropout": 0.0}]
    )
    out = []
    for i in range(k):
        data = copy.deepcopy(base)
        data["train"]["lr"] = 1e-3 * (1 + i)
        data["adapter"] = adapters[i % len(adapters)]
        out.append(validate_trial_config(data))
    return out


def _pack(configs: list, folder: Path, group: int | None = None):
    from ranksearch.training.packed import Pack

    pack = Pack(configs[0], group=group)
    for i, c in enumerate(configs):
        pack.add(c, folder / f"m{i}")
    return pack


def _alone(config, folder: Path):
    from ranksearch.trial import TrialRun

    return TrialRun(config, folder / "alone")


def _with_threads(fn, n: int):
    def call():
        torch.set_num_threads(n)
        return fn()

    return call


def _throughput(ctx: Context, mixed: bool, repeats: int, warmup: int) -> Row:
    from ranksearch.training.threads import threads_for

    before = torch.get_num_threads()
    kind = "mixed families and ranks" if mixed else "same-shape LoRA, lr differs"
    with tempfile.TemporaryDirectory(prefix="rs-pack-") as tmp:
        configs = _configs("rs-tiny-clip", K, mixed, 32)
        pack = _pack(configs, Path(tmp) / "k")
        half = _pack(configs[: K // 2], Path(tmp) / "half")
        run = _alone(configs[0], Path(tmp))
        try:
            cands = {
                "alone 1t": _with_threads(run.trainer.train_step, 1),
                "alone 2t": _with_threads(run.trainer.train_step, 2),
                "pack 1t": _with_threads(pack.step, 1),
                "pack 2t": _with_threads(pack.step, 2),
                "half pack 1t": _with_threads(half.step, 1),
            }
            ctx.log(f"packed throughput ({kind}): {repeats} rounds")
            t = interleaved(cands, ctx.device, repeats, warmup)
        finally:
            torch.set_num_threads(before)
        assert len(pack.active()) == K and len(half.active()) == K // 2  # every member trained every step
        # member-steps per second; "2 concurrent" schedules are credited with perfect scaling on both sides
        alone_best = max(2 / t.median("alone 1t"), 1 / t.median("alone 2t"))
        pack_1t, pack_2t = K / t.median("pack 1t"), K / t.median("pack 2t")
        halves = 2 * (K // 2) / t.median("half pack 1t")  # two concurrent packs of K/2, 1 thread each
        ratio = max(pack_1t, pack_2t, halves) / alone_best
        # the same on paired rounds: per round, the pack's best over the baseline's best
        paired = sorted(
            max(K / p1, K / p2, 2 * (K // 2) / h) / max(2 / a1, 1 / a2)
            for a1, a2, p1, p2, h in zip(
                *(t.times[n] for n in ("alone 1t", "alone 2t", "pack 1t", "pack 2t", "half pack 1t")),
                strict=True,
            )
        )
        # per core, on this process's CPU time (other jobs steal wall time, not CPU time): 1-thread member-step cost
        per_core = ""
        if t.cpu.get("pack 1t"):
            cpu_alone = statistics.median(t.cpu["alone 1t"])
            cpu_member = statistics.median(t.cpu["pack 1t"]) / K
            per_core = (
                f"; CPU time per member-step (1 thread): pack {cpu_member * 1e3:.1f} ms, alone "
                f"{cpu_alone * 1e3:.1f} ms ({cpu_alone / cpu_member:.2f}× per core)"
            )
        auto = threads_for(pack.model, "auto", cpus=2)
        m, ok = at_least(ratio, 2.0)
        return Row(
            "packed",
            f"{K} tiny trials packed ({kind}) / best unpacked schedule, throughput",
            "≥ 2×",
            m + "×",
            ok if not mixed else None,
            f"member-steps/s: pack {pack_1t:.1f} (1 thread), {pack_2t:.1f} (2 threads), two concurrent packs of "
            f"{K // 2} credited {halves:.1f} (1 thread each); alone {1 / t.median('alone 1t'):.1f} "
            f"(1 thread; 2 concurrent credited {2 / t.median('alone 1t'):.1f}), {1 / t.median('alone 2t'):.1f} "
            f"(2 threads); median of per-round ratios {paired[len(paired) // 2]:.2f}×; {repeats} rounds; "
            f"model.threads auto gives this model {auto} thread(s){per_core}",
        )


def _phases(ctx: Context, steps: int) -> Row:
    """CPU time per member-step of each phase of a step, in a pack of K and in a lone trial (1 thread each).

    The product's own steps are timed: ``Pack.step`` and ``Trainer.train_step`` (then ``TrialRun.after_step``,
    as a pack does for each member) call their ``phase`` hook around each phase (``ranksearch.training.phases``).
    CPU time (``time.process_time``), so other jobs on the machine steal wall time, not these figures.
    """
    parts = {f"{w} {p}": 0.0 for w in ("pack", "alone") for p in PHASES}  # CPU seconds per phase

    def timer(who: str):
        @contextlib.contextmanager
        def timed(phase: str):
            t0 = time.process_time()
            try:
                yield
            finally:
                parts[f"{who} {phase}"] += time.process_time() - t0

        return timed

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rs-pack-") as tmp:
        configs = _configs("rs-tiny-clip", K, False, 32)
        pack = _pack(configs, Path(tmp) / "k")
        run = _alone(configs[0], Path(tmp))
        pack.phase, run.trainer.phase = timer("pack"), timer("alone")

        def alone_step() -> None:
            stats = run.trainer.train_step()
            with run.trainer.phase("optimizer + after-step"):
                run.after_step(stats)

        for _ in range(2):  # warm-up
            pack.step()
            alone_step()
        parts.update(dict.fromkeys(parts, 0.0))
        ctx.log(f"packed phases: {steps} steps each")
        try:
            for _ in range(steps):
                pack.step()
                alone_step()
        finally:
            torch.set_num_threads(before)
    ms = {k: 1e3 * v / steps / (K if k.startswith("pack") else 1) for k, v in parts.items()}
    pack_ms, alone_ms = (sum(ms[f"{w} {p}"] for p in PHASES) for w in ("pack", "alone"))
    shared = ("image forward", "text forward + loss", "backward")
    return Row(
        "packed",
        f"{K} tiny trials packed (same-shape LoRA): CPU ms per member-step by phase, pack / alone",
        "report",
        f"{pack_ms:.1f} / {alone_ms:.1f} ms",
        None,
        "; ".join(f"{p} {ms['pack ' + p]:.1f} / {ms['alone ' + p]:.1f}" for p in PHASES)
        + f"; the shared model's phases (forward, text, backward) {sum(ms['pack ' + p] for p in shared):.1f} / "
        f"{sum(ms['alone ' + p] for p in shared):.1f} ms; 1 thread, {steps} steps after 2 warm-up steps",
    )


# --- memory: one fresh process per measurement ---------------------------------------------------------------------
def _child(mode: str, model: str, device_spec: str, batch: int, steps: int) -> dict:
    from bench.timing import peak_hwm_bytes, reset_peak_rss, rss_bytes

    device = torch.device(device_spec)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    with tempfile.TemporaryDirectory(prefix="rs-packmem-") as tmp:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if mode == "alone":
            configs = _configs(model, 1, False, batch)
            step = _alone(configs[0], Path(tmp)).trainer.train_step
        else:
            group = int(mode.split("-")[1])
            pack = _pack(_configs(model, K, False, batch), Path(tmp), group=group)
            step = pack.step
        step()  # warm-up: optimizer state, allocator pools
        reset_peak_rss()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return {"peak": torch.cuda.max_memory_allocated(device), "rss": rss_bytes()}
        return {"peak": peak_hwm_bytes(), "rss": rss_bytes()}


def _measure(mode: str, model: str, ctx: Context, batch: int, steps: int) -> dict:
    env = dict(os.environ, BENCH_THREADS=str(torch.get_num_threads()))
    cmd = [sys.executable, "-m", "bench.packed", mode, model, str(ctx.device), str(batch), str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.packed {mode} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory(ctx: Context) -> list[Row]:
    model, batch, steps = ("rs-tiny-clip", 8, 1) if ctx.quick else ("ViT-B-32", 8, 1)
    label = "tiny" if ctx.quick else "ViT-B-32"
    alone = _measure("alone", model, ctx, batch, steps)
    rows = []
    what = "CUDA max allocated" if ctx.device.type == "cuda" else "process VmHWM"
    # RANKSEARCH_BENCH_PACK_STACKED=0 leaves out the all-stacked pack (8 batches in one pass: minutes of CPU)
    stacked = not ctx.quick and os.environ.get("RANKSEARCH_BENCH_PACK_STACKED") != "0"
    if "RANKSEARCH_BENCH_PACK_STACKED" in os.environ:
        ctx.notes.append(
            f"packed: run with RANKSEARCH_BENCH_PACK_STACKED={os.environ['RANKSEARCH_BENCH_PACK_STACKED']}"
        )
    for group in (1, K) if stacked else (1,):
        packed = _measure(f"pack-{group}", model, ctx, batch, steps)
        ratio = packed["peak"] / alone["peak"]
        target = 1.3
        m, ok = at_most(ratio, target)
        rows.append(
            Row(
                "packed",
                f"{label}: peak memory, pack of {K} (pack_group {group}) / one trial",
                f"≤ {target}" if group == 1 else "report",
                m,
                ok if group == 1 else None,
                f"{what}: one trial {alone['peak'] / MiB:.0f} MiB, pack {packed['peak'] / MiB:.0f} MiB; batch {batch} "
                f"per member, LoRA r=2 on q,k,v of both towers; fresh process each, peak over {steps} step(s) after "
                "a warm-up step"
                + ("; the members' batches are stacked into one forward/backward" if group > 1 else ""),
            )
        )
    return rows


def run(ctx: Context) -> list[Row]:
    repeats, warmup = (2, 1) if ctx.quick else (9, 2)
    if os.environ.get("RANKSEARCH_BENCH_PACKED_PARTS") == "phases":  # only the phase row; keep the others
        saved = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.json"
        kept = [Row(**r) for r in json.loads(saved.read_text())["rows"] if r["bench"] == "packed"]
        phases = _phases(ctx, steps=3 if ctx.quick else 30)
        ctx.notes.append("packed: only the phase row re-measured; its other rows kept as measured before")
        kept = [r for r in kept if r.name != phases.name]
        return [*kept[:1], phases, *kept[1:]]
    rows = [_throughput(ctx, mixed=False, repeats=repeats, warmup=warmup)]
    rows.append(_phases(ctx, steps=3 if ctx.quick else 30))
    gc.collect()
    # quick mode (CI) runs each code path once: one throughput group, one packed memory child
    if not ctx.quick:
        rows.append(_throughput(ctx, mixed=True, repeats=repeats, warmup=warmup))
        gc.collect()
    rows += _memory(ctx)
    if ctx.device.type != "cuda":
        rows.append(
            Row("packed", "CUDA path: step times from CUDA events, peaks from the CUDA allocator", "report",
                "not measured (no GPU lent)", None, "run `python -m bench --only packed --device cuda` on a GPU")
        )  # fmt: skip
    return rows


if __name__ == "__main__":  # child: python -m bench.packed MODE MODEL DEVICE BATCH STEPS
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
