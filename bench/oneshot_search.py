"""One-shot rank search against full-training search on the built-in shape world (issue 19).

Setting (``search_spaces/oneshot.yaml`` without Ray; the product path is tested in tests/test_oneshot_sweep.py):
``rs-tiny-clip`` pretrained on the shape world, base-to-new on its cluttered domain, CLIP-LoRA on q, k, v, o of
every block of both towers (20 sites), candidate ranks {0, 1, 2, 4, 8} per site, a budget of half the parameters
of every site at rank 8, 200 training steps per trial (one core, nice 15, on a shared 2-core machine). Both searches use the same allocation space, budget
repair and Optuna TPE (two objectives: val/hm up, trainable parameters down); they differ only in how an
allocation is scored.

- one-shot: one supernet (200 steps, sandwich of 4 allocations per step = 800 forward/backward passes), 200
  allocations scored by masked evaluation, the top 5 of the front retrained from scratch.
- full-training search: 40 allocations, each trained from scratch (200 steps each).

Targets: Kendall τ ≥ 0.5 between the supernet's estimate and the trained val/hm of the distinct allocations the
full-training search trained (each also scored on the supernet; ≥ 20 of them) — the top-5 retrains' τ is in the
notes; the best retrained one-shot allocation within 1 HM point (or the seed SD of retraining it with three
seeds, if larger) of the full-training search's best; one-shot compute (supernet passes + retrain steps) ≤ 0.25 ×
full search's steps; one evaluation ≤ 2 % of one training (wall time). The seed replicates and the supernet
scoring of the full search's allocations are measurement, not charged to one-shot search.

Raw results: ``docs/oneshot/summary.json`` (``RANKSEARCH_ONESHOT_FROM_SAVED=1`` re-renders the rows from it).
Command: ``nice -n 15 python -m bench --only oneshot_search --merge --threads 1``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.report import Context, Row

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "docs" / "oneshot" / "summary.json"
FROM_SAVED = "RANKSEARCH_ONESHOT_FROM_SAVED"
COMMAND = "nice -n 15 python -m bench --only oneshot_search --merge --threads 1"
MISSES = {
    "oneshot_search": (
        "Kendall τ (run of 2026-12-02, rs-tiny-clip on the shape world): −0.16 over the full search's 40 trained "
        "allocations, −0.20 over the top-5 retrains, so on this world the supernet's masked estimates do not rank "
        "allocations. Part is noise in the target: one allocation retrained with 3 seeds spans 2.4 HM (SD) against "
        "an 8.5-point spread of trained values, on a validation split of 4 images per class; over the same 40 "
        "trained allocations τ(trained val/hm, trained test/hm) is only 0.04, so this world's validation split "
        "barely ranks allocations at all (a noise ceiling far below 0.5). Part is the method: the estimates "
        "spread wider (55.8–68.6) than the trained values and fall with size (τ(parameters, estimate) = −0.38, "
        "trained: +0.15), and the supernet's front sat at 1.8–5.1 k parameters while full search's best used "
        "6.4 k (weight sharing favours small allocations). The front gap "
        "is within the seed SD but not within 1 HM point. Next: rs-small-clip's world (landed after this run "
        "started) with a larger validation split (data.val_shots), in-place distillation (the max allocation's "
        "logits as the sub-allocations' target, as once-for-all), and a τ noise ceiling (retrain vs retrain)."
    ),
}

BASE = {
    "model": {"name": "rs-tiny-clip", "pretrained": "shapeworld", "device": "cpu", "threads": 1},
    "data": {"task": "shapeworld", "protocol": "base2new", "domain": "clutter", "shots": 16, "test_per_class": 20},
    "adapter": {"family": "lora", "dropout": 0.0},
    "placement": {"towers": "both", "layers": "all", "matrices": ["q", "k", "v", "o"]},
    "train": {"iterations": 300, "batch_size": 32, "lr": 1.5e-2, "augment": False},
    "eval": {"evals": 1, "zero_shot": False},
    "tracking": {"enabled": False},
    "seed": 1,
}  # fmt: skip
RANKS, BUDGET_FRACTION = [0, 1, 2, 4, 8], 0.5


def _settings(quick: bool) -> dict[str, int]:
    if quick:
        return {"steps": 6, "evaluations": 6, "top_k": 2, "full": 3, "seeds": 2}
    return {"steps": 200, "evaluations": 200, "top_k": 5, "full": 40, "seeds": 3}


def _config(steps: int, pattern: dict[str, int] | None = None, seed: int = 1, r: int = RANKS[-1]) -> Any:
    from ranksearch.config.load import validate_trial_config

    data = json.loads(json.dumps(BASE))
    data["train"]["iterations"], data["seed"] = steps, seed
    data["adapter"]["r"] = r
    if pattern is not None:
        data["adapter"]["rank_pattern"] = pattern
    return validate_trial_config(data)


def _train(steps: int, pattern: dict[str, int], work: Path, name: str, seed: int = 1) -> dict[str, float]:
    from ranksearch.trial import run_trial

    t0 = time.perf_counter()
    result = run_trial(_config(steps, pattern, seed), output_dir=work / name, progress=False)
    if result.status != "completed":
        raise RuntimeError(f"trial {name} failed: {result.error}")
    return {**result.metrics, "train_seconds": time.perf_counter() - t0}


def measure(ctx: Context, work: Path) -> dict[str, Any]:
    from ranksearch.oneshot.allocation import AllocationSpace, search_allocations
    from ranksearch.oneshot.scoring import SupernetScorer
    from ranksearch.oneshot.spec import OneShotSpec
    from ranksearch.oneshot.supernet import run_supernet
    from ranksearch.pretrain import ensure_checkpoint

    s = _settings(ctx.quick)
    ensure_checkpoint("rs-tiny-clip", progress=False)
    spec = OneShotSpec(ranks=RANKS, sandwich_random=2, evaluations=s["evaluations"], top_k=s["top_k"], seed=0)
    ctx.log(f"oneshot: supernet, {s['steps']} steps")
    t0 = time.perf_counter()
    sup = run_supernet(_config(s["steps"]), spec, output_dir=work / "supernet")
    supernet_seconds = time.perf_counter() - t0
    scorer = SupernetScorer(work / "supernet")
    ppr = scorer.session.params_per_rank()
    budget = int(BUDGET_FRACTION * RANKS[-1] * sum(ppr))
    space = AllocationSpace(scorer.sites, RANKS, ppr, total_params=budget)
    ctx.log(f"oneshot: {s['evaluations']} evaluations, budget {budget} parameters")
    t0 = time.perf_counter()
    evals = search_allocations(
        space, scorer.score, evaluations=s["evaluations"], metric="val/hm", seed=0,
        enqueue=[space.repair(space.maximum()), space.minimum()],
    )  # fmt: skip
    search_seconds = time.perf_counter() - t0
    front = sorted((e for e in evals if e.front and e.metrics["trainable_params"] > 0),
                   key=lambda e: -e.metrics["val/hm"])  # fmt: skip
    top = front[: s["top_k"]]
    retrained = []
    for i, e in enumerate(top):
        ctx.log(f"oneshot: retrain {i + 1}/{len(top)}")
        m = _train(s["steps"], space.as_dict(e.ranks), work, f"retrain-{e.number}")
        retrained.append({"number": e.number, "top": True, "params": e.metrics["trainable_params"],
                          "estimate": e.metrics["val/hm"], "val/hm": m["val/hm"], "test/hm": m["test/hm"],
                          "train_seconds": m["train_seconds"], "ranks": e.ranks})  # fmt: skip
    best_top = max((r for r in retrained if r["top"]), key=lambda r: r["val/hm"])
    seeds = [best_top["val/hm"]]
    for seed in range(2, s["seeds"] + 1):
        ctx.log(f"oneshot: seed replicate {seed}")
        seeds.append(
            _train(s["steps"], space.as_dict(best_top["ranks"]), work, f"seed-{seed}", seed)["val/hm"]
        )

    ctx.log(f"full-training search: {s['full']} trials")
    full_rows: list[dict] = []

    def train_score(batch: list[list[int]]) -> list[dict[str, float]]:
        out = []
        for ranks in batch:
            m = _train(s["steps"], space.as_dict(ranks), work, f"full-{len(full_rows)}")
            full_rows.append({"params": space.params(ranks), "val/hm": m["val/hm"], "test/hm": m["test/hm"],
                              "ranks": ranks})  # fmt: skip
            out.append({"val/hm": m["val/hm"], "test/hm": m["test/hm"]})
        return out

    full = search_allocations(
        space, train_score, evaluations=s["full"], metric="val/hm", seed=0, study_name="full",
        enqueue=[space.repair(space.maximum())],
    )  # fmt: skip
    best_full = max(full, key=lambda e: e.metrics["val/hm"])
    trained = {tuple(r["ranks"]): r for r in full_rows if r["params"] > 0}
    ctx.log(f"scoring the full search's {len(trained)} trained allocations on the supernet")
    for key, est in zip(trained, scorer.score([list(k) for k in trained]), strict=True):
        trained[key]["estimate"] = est["val/hm"]
    return {
        "settings": s, "budget": budget, "sites": len(space.sites),
        "supernet": {"passes": sup.metrics["supernet/passes"], "seconds": supernet_seconds,
                     "val/hm": sup.metrics.get("val/hm")},
        "evaluations": [{"number": e.number, "val/hm": e.metrics["val/hm"], "params": e.metrics["trainable_params"],
                         "eval_seconds": e.metrics["eval_seconds"], "front": e.front} for e in evals],
        "search_seconds": search_seconds, "retrained": retrained, "seed_values": seeds,
        "full": full_rows, "full_best": {"val/hm": best_full.metrics["val/hm"], "test/hm": best_full.metrics["test/hm"],
                                         "params": best_full.metrics["trainable_params"]},
        "full_evaluations": len(full), "full_distinct": len({tuple(e.ranks) for e in full}),
    }  # fmt: skip


def rows_from(r: dict[str, Any], quick: bool) -> list[Row]:
    from ranksearch.oneshot.pipeline import kendall_tau

    s = r["settings"]
    ret = r["retrained"]
    pairs = [x for x in r["full"] if "estimate" in x]
    tau = kendall_tau([x["estimate"] for x in pairs], [x["val/hm"] for x in pairs])
    tau_top = kendall_tau([x["estimate"] for x in ret], [x["val/hm"] for x in ret])
    best = max((x for x in ret if x["top"]), key=lambda x: x["val/hm"])
    sd = statistics.stdev(r["seed_values"]) if len(r["seed_values"]) > 1 else float("nan")
    tol = max(1.0, sd) if math.isfinite(sd) else 1.0
    gap = r["full_best"]["val/hm"] - best["val/hm"]
    oneshot_steps = r["supernet"]["passes"] + s["steps"] * s["top_k"]
    full_steps = s["steps"] * r["full_evaluations"]
    eval_s = statistics.median(e["eval_seconds"] for e in r["evaluations"])
    train_s = statistics.median(x["train_seconds"] for x in ret)
    where = "quick settings (CI): numbers are not meaningful" if quick else COMMAND
    return [
        Row("oneshot_search", f"Kendall τ, one-shot estimate vs retrained val/hm ({len(pairs)} allocations)",
            "≥ 0.5", f"{tau:.2f}", tau >= 0.5 and len(pairs) >= 20,
            f"the full search's trained allocations, scored on the supernet: estimates "
            f"{min(x['estimate'] for x in pairs):.1f}–{max(x['estimate'] for x in pairs):.1f}, trained "
            f"{min(x['val/hm'] for x in pairs):.1f}–{max(x['val/hm'] for x in pairs):.1f}; the top-{len(ret)} "
            f"retrains alone: τ {tau_top:.2f}; {where}"),
        Row("oneshot_search", "best retrained one-shot val/hm vs full-training search's best (gap, HM points)",
            f"≤ max(1, seed SD) = {tol:.2f}", f"{gap:+.2f}", gap <= tol,
            f"one-shot {best['val/hm']:.2f} (test {best['test/hm']:.2f}, {int(best['params'])} params) vs full "
            f"{r['full_best']['val/hm']:.2f} (test {r['full_best']['test/hm']:.2f}, {int(r['full_best']['params'])} "
            f"params, {r['full_evaluations']} trials, {r['full_distinct']} distinct); seed SD {sd:.2f} over "
            f"{len(r['seed_values'])} seeds; budget {r['budget']} params over {r['sites']} sites"),
        Row("oneshot_search", "one-shot compute / full-training search compute (training steps)", "≤ 0.25",
            f"{oneshot_steps / full_steps:.3f}", oneshot_steps / full_steps <= 0.25,
            f"supernet {int(r['supernet']['passes'])} forward/backward passes ({s['steps']} steps × 4) + "
            f"{s['top_k']} retrains × {s['steps']} = {int(oneshot_steps)} vs {r['full_evaluations']} × "
            f"{s['steps']} = {full_steps}; the {len(r['evaluations'])} evaluations are forward-only (next row)"),
        Row("oneshot_search", "one evaluation / one training (wall time, medians)", "≤ 0.02",
            f"{eval_s / train_s:.4f}", eval_s / train_s <= 0.02,
            f"evaluation {eval_s:.3f} s (validation split, masked supernet), training {train_s:.1f} s "
            f"({s['steps']} steps + final evaluation); all {len(r['evaluations'])} evaluations "
            f"{r['search_seconds']:.0f} s incl. Optuna"),
    ]  # fmt: skip


def run(ctx: Context) -> list[Row]:
    import tempfile

    if os.environ.get(FROM_SAVED) and SAVED.is_file():
        return rows_from(json.loads(SAVED.read_text()), False)
    with tempfile.TemporaryDirectory(prefix="rs-bench-oneshot-") as tmp:
        results = measure(ctx, Path(tmp))
    if not ctx.quick:
        SAVED.parent.mkdir(parents=True, exist_ok=True)
        SAVED.write_text(json.dumps(results, indent=1))
    return rows_from(results, ctx.quick)
