"""One-shot rank search against full-training search on the built-in adaptation world (issue 19).

Setting (``search_spaces/oneshot.yaml`` without Ray; the product path is tested in tests/test_oneshot_sweep.py):
``rs-small-clip`` pretrained on the shape world, the adaptation world's ``mixed`` task (docs/world.md: a camera
sensor shift and unseen colour words, base-to-new, a validation split of 1,008 images), CLIP-LoRA on q, k, v, o
of every block of both towers (6 + 4 blocks: 40 sites), candidate ranks {0, 1, 2, 4, 8} per site, a budget of
half the parameters of every site at rank 8, 80 training steps per trial (the world's schedule; one core, nice
15, on a shared 2-core machine). Both searches use the same allocation space, budget repair and Optuna TPE (two
objectives: val/hm up, trainable parameters down); they differ only in how an allocation is scored.

- one-shot: one supernet (80 steps, sandwich of 4 allocations per step = 320 forward/backward passes), 200
  allocations scored by masked evaluation, the top 5 of the front retrained from scratch. Two supernets are
  trained with the same draws: with in-place distillation (``search.distill``: the sub-allocations learn the max
  allocation's detached logits) and without (labels only), so the option is measured against its absence.
- full-training search: 40 allocations, each trained from scratch (80 steps each, seed 1).
- noise ceiling: the first 24 allocations the full search trained, trained again with seed 2; Kendall τ between the two
  retrains is the most any estimate of one retrain's result can be expected to reach.

Targets: Kendall τ ≥ 0.5 between the supernet's estimate and the trained val/hm of the distinct allocations the
full-training search trained (each also scored on the supernet; ≥ 20 of them); the best retrained one-shot
allocation within 1 HM point (or the seed SD, from the seed-1/seed-2 pairs, if larger) of the full-training
search's best; one-shot compute (supernet passes + retrain steps) ≤ 0.25 × full search's steps; one evaluation
≤ 2 % of one training (wall time). The seed-2 retrains, the second supernet and the supernet scoring of the full
search's allocations are measurement, not charged to one-shot search.

Raw results: ``docs/oneshot/summary.json`` (``RANKSEARCH_ONESHOT_FROM_SAVED=1`` re-renders the rows from it).
``RANKSEARCH_ONESHOT_CACHE=<file.jsonl>`` keeps every finished training there (keyed by its full config), so an
interrupted run continues where it stopped.
Command: ``nice -n 15 python -m bench --only oneshot_search --merge --threads 1 --device cpu``.
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
CACHE = "RANKSEARCH_ONESHOT_CACHE"
COMMAND = "nice -n 15 python -m bench --only oneshot_search --merge --threads 1 --device cpu"
MISSES: dict[str, str] = {}  # every row met its target on the last full run (docs/oneshot.md)

BASE = {
    "model": {"name": "rs-small-clip", "pretrained": "shapeworld", "device": "cpu", "threads": 1},
    "data": {"task": "world", "domain": "mixed", "protocol": "base2new", "shots": 16, "test_per_class": 20},
    "adapter": {"family": "lora", "dropout": 0.0},
    "placement": {"towers": "both", "layers": "all", "matrices": ["q", "k", "v", "o"]},
    "train": {"iterations": 80, "batch_size": 32, "lr": 1.0e-2, "augment": False},
    "eval": {"evals": 1, "zero_shot": False},
    "tracking": {"enabled": False},
    "seed": 1,
}  # fmt: skip
QUICK_MODEL = (
    "rs-tiny-clip"  # CI: no rs-small-clip pretraining (5 min of CPU) just to check that the bench runs
)
RANKS, BUDGET_FRACTION = [0, 1, 2, 4, 8], 0.5
SCORE_IMAGES = 192  # search.score_images: allocations scored on a fixed stratified fifth of the 1,008
SCORE = "likelihood"  # search.score, as search_spaces/oneshot.yaml: ranked by val/loglik on those images
VARIANTS = {"distill": True, "labels": False}  # search.distill on / off, same supernet seed and draws


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "steps": 4,
            "evaluations": 6,
            "top_k": 2,
            "full": 3,
            "ceiling": 3,
            "model": QUICK_MODEL,
            "test_per_class": 2,
            "score_images": None,
            "score": SCORE,
        }
    return {"steps": 80, "evaluations": 200, "top_k": 5, "full": 40, "ceiling": 24, "model": BASE["model"]["name"],
            "test_per_class": BASE["data"]["test_per_class"], "score_images": SCORE_IMAGES,
            "score": SCORE}  # fmt: skip


def _config_data(s: dict, pattern: dict[str, int] | None = None, seed: int = 1, r: int = RANKS[-1]) -> dict:
    data = json.loads(json.dumps(BASE))
    data["train"]["iterations"], data["seed"] = s["steps"], seed
    data["model"]["name"], data["data"]["test_per_class"] = s["model"], s["test_per_class"]
    data["adapter"]["r"] = r
    if pattern is not None:
        data["adapter"]["rank_pattern"] = pattern
    return data


class _Trainings:
    """Trains allocations from scratch (``run_trial``), optionally remembering each result in a JSONL file."""

    def __init__(self, ctx: Context, s: dict, work: Path):
        self.ctx, self.s, self.work, self.n = ctx, s, work, 0
        self.path = Path(os.environ[CACHE]) if os.environ.get(CACHE) and not ctx.quick else None
        self.known: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.known[row["key"]] = row["metrics"]

    def __call__(self, pattern: dict[str, int], label: str, seed: int = 1) -> dict[str, float]:
        from ranksearch.config.load import validate_trial_config
        from ranksearch.trial import run_trial

        data = _config_data(self.s, pattern, seed)
        key = json.dumps(data, sort_keys=True)
        if key in self.known:
            return self.known[key]
        self.n += 1
        t0 = time.perf_counter()
        result = run_trial(validate_trial_config(data), output_dir=self.work / f"t{self.n}", progress=False)
        if result.status != "completed":
            raise RuntimeError(f"training {label} failed: {result.error}")
        m = {"val/hm": result.metrics["val/hm"], "test/hm": result.metrics["test/hm"],
             "train_seconds": time.perf_counter() - t0}  # fmt: skip
        self.ctx.log(
            f"oneshot: trained {label} (seed {seed}): val/hm {m['val/hm']:.2f}, {m['train_seconds']:.0f} s"
        )
        self.known[key] = m
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, "metrics": m}) + "\n")
        return m


def _estimate_metric(s: dict) -> str:
    from ranksearch.oneshot.spec import LIKELIHOOD

    return LIKELIHOOD if s.get("score") == "likelihood" else "val/hm"  # runs before search.score: val/hm


def _variant(
    ctx: Context, s: dict, work: Path, name: str, distill: bool, train: _Trainings
) -> dict[str, Any]:
    """One supernet (distillation on or off), its search, its top-K retrained; returns the results and scorer."""
    from ranksearch.config.load import validate_trial_config
    from ranksearch.oneshot.allocation import AllocationSpace, search_allocations
    from ranksearch.oneshot.scoring import SupernetScorer
    from ranksearch.oneshot.spec import OneShotSpec
    from ranksearch.oneshot.supernet import run_supernet

    spec = OneShotSpec(ranks=RANKS, sandwich_random=2, evaluations=s["evaluations"], top_k=s["top_k"], seed=0,
                       distill=distill, score_images=s["score_images"], score=s["score"])  # fmt: skip
    estimate = _estimate_metric(s)
    ctx.log(f"oneshot [{name}]: supernet, {s['steps']} steps")
    t0 = time.perf_counter()
    sup = run_supernet(validate_trial_config(_config_data(s)), spec, output_dir=work / f"supernet-{name}")
    if sup.status != "completed":
        raise RuntimeError(f"supernet {name} failed: {sup.error}")
    supernet_seconds = time.perf_counter() - t0
    scorer = SupernetScorer(work / f"supernet-{name}", images=spec.score_images)
    ppr = scorer.session.params_per_rank()
    budget = int(BUDGET_FRACTION * RANKS[-1] * sum(ppr))
    space = AllocationSpace(scorer.sites, RANKS, ppr, total_params=budget)
    ctx.log(f"oneshot [{name}]: {s['evaluations']} evaluations, budget {budget} parameters")
    t0 = time.perf_counter()
    evals = search_allocations(
        space, scorer.score, evaluations=s["evaluations"], metric=estimate, seed=0, study_name=f"oneshot-{name}",
        enqueue=[space.repair(space.maximum()), space.minimum()],
    )  # fmt: skip
    search_seconds = time.perf_counter() - t0
    front = sorted((e for e in evals if e.front and e.metrics["trainable_params"] > 0),
                   key=lambda e: -e.metrics[estimate])  # fmt: skip
    retrained = []
    for i, e in enumerate(front[: s["top_k"]]):
        m = train(space.as_dict(e.ranks), f"{name} top-{i + 1} (allocation {e.number})")
        retrained.append({"number": e.number, "params": e.metrics["trainable_params"],
                          "estimate": e.metrics[estimate], "val/hm": m["val/hm"], "test/hm": m["test/hm"],
                          "train_seconds": m["train_seconds"], "ranks": e.ranks})  # fmt: skip
    out = {
        "distill": distill,
        "supernet": {"passes": sup.metrics["supernet/passes"], "seconds": supernet_seconds,
                     "val/hm": sup.metrics.get("val/hm")},
        "evaluations": [{"number": e.number, "estimate": e.metrics[estimate], "val/hm": e.metrics["val/hm"],
                         "params": e.metrics["trainable_params"],
                         "eval_seconds": e.metrics["eval_seconds"], "front": e.front} for e in evals],
        "search_seconds": search_seconds, "retrained": retrained,
    }  # fmt: skip
    return {"result": out, "scorer": scorer, "space": space, "budget": budget}


def measure(ctx: Context, work: Path) -> dict[str, Any]:
    from ranksearch.oneshot.allocation import search_allocations
    from ranksearch.pretrain import ensure_checkpoint

    s = _settings(ctx.quick)
    ensure_checkpoint(s["model"], progress=False)
    train = _Trainings(ctx, s, work)
    variants = {name: _variant(ctx, s, work, name, flag, train) for name, flag in VARIANTS.items()}
    space = next(iter(variants.values()))["space"]

    ctx.log(f"full-training search: {s['full']} trials")
    full_rows: list[dict] = []

    def train_score(batch: list[list[int]]) -> list[dict[str, float]]:
        out = []
        for ranks in batch:
            m = train(space.as_dict(ranks), f"full {len(full_rows) + 1}/{s['full']}")
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
    again = list(trained.items())[: s["ceiling"]]
    ctx.log(
        f"noise ceiling: the first {len(again)} of the full search's trained allocations again with seed 2"
    )
    for i, (key, row) in enumerate(again):
        m = train(space.as_dict(list(key)), f"seed-2 {i + 1}/{len(again)}", seed=2)
        row["val/hm seed 2"], row["test/hm seed 2"] = m["val/hm"], m["test/hm"]
    ctx.log(f"scoring the full search's {len(trained)} trained allocations on each supernet")
    for name, v in variants.items():
        for key, est in zip(trained, v["scorer"].score([list(k) for k in trained]), strict=True):
            trained[key][f"estimate {name}"] = est[_estimate_metric(s)]
            trained[key][f"hm {name}"] = est["val/hm"]  # the accuracy on the same images, for comparison
    return {
        "settings": s, "budget": variants["distill"]["budget"], "sites": len(space.sites),
        "variants": {name: v["result"] for name, v in variants.items()},
        "full": full_rows, "full_best": {"val/hm": best_full.metrics["val/hm"], "test/hm": best_full.metrics["test/hm"],
                                         "params": best_full.metrics["trainable_params"]},
        "full_evaluations": len(full), "full_distinct": len({tuple(e.ranks) for e in full}),
    }  # fmt: skip


def default_variant() -> str:
    from ranksearch.oneshot.spec import OneShotSpec

    return "distill" if OneShotSpec().distill else "labels"


def analyse(r: dict[str, Any]) -> dict[str, Any]:
    """The figures the rows print: τ per variant, the noise ceiling, the seed SD, the front gaps, compute."""
    from ranksearch.oneshot.pipeline import kendall_tau

    pairs = [x for x in r["full"] if "estimate distill" in x]
    twice = [x for x in pairs if "val/hm seed 2" in x]
    a, b = [x["val/hm"] for x in twice], [x["val/hm seed 2"] for x in twice]
    mean = [(x + y) / 2 for x, y in zip(a, b, strict=True)]
    sd = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / (2 * len(a))) if a else float("nan")
    out: dict[str, Any] = {
        "n": len(pairs),
        "n_twice": len(twice),
        "ceiling": kendall_tau(a, b),
        "seed_sd": sd,
        "trained": (min(x["val/hm"] for x in pairs), max(x["val/hm"] for x in pairs)),
        "test_tau": kendall_tau([x["val/hm"] for x in pairs], [x["test/hm"] for x in pairs]),
        "variants": {},
    }
    for name, v in r["variants"].items():
        est = [x[f"estimate {name}"] for x in pairs]
        est2 = [x[f"estimate {name}"] for x in twice]
        ret = v["retrained"]
        best = max(ret, key=lambda x: x["val/hm"])
        out["variants"][name] = {
            "tau": kendall_tau(est, [x["val/hm"] for x in pairs]),
            "tau_twice": kendall_tau(est2, a),
            "tau_seed2": kendall_tau(est2, b),
            "tau_mean": kendall_tau(est2, mean),
            "tau_top": kendall_tau([x["estimate"] for x in ret], [x["val/hm"] for x in ret]),
            "tau_params": kendall_tau([x["params"] for x in pairs], est),
            "estimates": (min(est), max(est)),
            "tau_hm": kendall_tau([x[f"hm {name}"] for x in pairs], [x["val/hm"] for x in pairs])
            if all(f"hm {name}" in x for x in pairs)
            else None,
            "best": best,
            "gap": r["full_best"]["val/hm"] - best["val/hm"],
        }
    out["tau_params_trained"] = kendall_tau([x["params"] for x in pairs], [x["val/hm"] for x in pairs])
    return out


def rows_from(r: dict[str, Any], quick: bool) -> list[Row]:
    s = r["settings"]
    z = analyse(r)
    name = default_variant()
    other = next(n for n in r["variants"] if n != name)
    v, w = z["variants"][name], z["variants"][other]
    tol = max(1.0, z["seed_sd"]) if math.isfinite(z["seed_sd"]) else 1.0
    passes = r["variants"][name]["supernet"]["passes"]
    oneshot_steps = passes + s["steps"] * s["top_k"]
    full_steps = s["steps"] * r["full_evaluations"]
    evals = r["variants"][name]["evaluations"]
    eval_s = statistics.median(e["eval_seconds"] for e in evals)
    train_s = statistics.median(x["train_seconds"] for x in r["variants"][name]["retrained"])
    where = "quick settings (CI): numbers are not meaningful" if quick else COMMAND
    label = {"distill": "in-place distillation", "labels": "labels only (no distillation)"}
    n = z["n"]
    v_ret = r["variants"][name]["retrained"]
    m = z["n_twice"]
    est_name = _estimate_metric(s)
    hm_note = (
        f"; ranked by val/hm on the same images instead: τ {v['tau_hm']:.2f}"
        if est_name != "val/hm" and v.get("tau_hm") is not None
        else ""
    )
    ratio = v["tau_twice"] / z["ceiling"] if z["ceiling"] and math.isfinite(z["ceiling"]) else float("nan")
    return [
        Row("oneshot_search", f"Kendall τ, one-shot estimate vs retrained val/hm ({n} allocations)",
            "≥ 0.5", f"{v['tau']:.2f}", v["tau"] >= 0.5 and n >= 20,
            f"supernet with {label[name]} (the default), ranked by {est_name} on {_scored(s)}; the full search's "
            f"trained allocations (seed 1), scored on the supernet: estimates {v['estimates'][0]:.2f} to "
            f"{v['estimates'][1]:.2f}, trained "
            f"{z['trained'][0]:.1f}–{z['trained'][1]:.1f}{hm_note}; over the {m} also trained with seed 2: τ {v['tau_twice']:.2f} "
            f"= {ratio:.2f} of the noise ceiling (next row), vs their seed-2 retrains {v['tau_seed2']:.2f}, vs the "
            f"two seeds' mean {v['tau_mean']:.2f}; the top-"
            f"{len(v_ret)} retrains alone: τ {v['tau_top']:.2f}; τ(parameters, "
            f"estimate) {v['tau_params']:.2f} vs τ(parameters, trained) {z['tau_params_trained']:.2f}; {where}"),
        Row("oneshot_search", f"Kendall τ noise ceiling: retrained seed 1 vs seed 2 ({m} allocations)",
            "(ceiling of the row above)", f"{z['ceiling']:.2f}", None,
            f"the same allocations trained twice from scratch (seeds 1 and 2); seed SD {z['seed_sd']:.2f} HM "
            f"points (from the pairs); τ(trained val/hm, trained test/hm) {z['test_tau']:.2f}"),
        Row("oneshot_search", f"Kendall τ with the other supernet option: {label[other]} ({n} allocations)",
            "(comparison)", f"{w['tau']:.2f}", None,
            f"same draws and seed, only search.distill={str(VARIANTS[other]).lower()}: estimates "
            f"{w['estimates'][0]:.2f} to {w['estimates'][1]:.2f}; over the {m} trained twice: τ {w['tau_twice']:.2f}, vs seed 2 {w['tau_seed2']:.2f}, vs the mean "
            f"{w['tau_mean']:.2f}; top-{len(r['variants'][other]['retrained'])} retrains τ {w['tau_top']:.2f}; its "
            f"best retrained {w['best']['val/hm']:.2f} (gap to full search {w['gap']:+.2f})"),
        Row("oneshot_search", "best retrained one-shot val/hm vs full-training search's best (gap, HM points)",
            f"≤ max(1, seed SD) = {tol:.2f}", f"{v['gap']:+.2f}", v["gap"] <= tol,
            f"one-shot {v['best']['val/hm']:.2f} (test {v['best']['test/hm']:.2f}, {int(v['best']['params'])} "
            f"params) vs full {r['full_best']['val/hm']:.2f} (test {r['full_best']['test/hm']:.2f}, "
            f"{int(r['full_best']['params'])} params, {r['full_evaluations']} trials, {r['full_distinct']} distinct); "
            f"seed SD {z['seed_sd']:.2f} from {m} seed-1/seed-2 pairs; budget {r['budget']} params over "
            f"{r['sites']} sites; {len(v_ret)} retrains"),
        Row("oneshot_search", "one-shot compute / full-training search compute (training steps)", "≤ 0.25",
            f"{oneshot_steps / full_steps:.3f}", oneshot_steps / full_steps <= 0.25,
            f"supernet {int(passes)} forward/backward passes ({s['steps']} steps × 4) + "
            f"{s['top_k']} retrains × {s['steps']} = {int(oneshot_steps)} vs {r['full_evaluations']} × "
            f"{s['steps']} = {full_steps}; the {len(evals)} evaluations are forward-only (next row)"),
        Row("oneshot_search", "one evaluation / one training (wall time, medians)", "≤ 0.02",
            f"{eval_s / train_s:.4f}", eval_s / train_s <= 0.02,
            f"evaluation {eval_s:.3f} s ({_scored(s)}, masked supernet), training {train_s:.1f} s "
            f"({s['steps']} steps + final evaluation); all {len(evals)} evaluations "
            f"{r['variants'][name]['search_seconds']:.0f} s incl. Optuna"),
    ]  # fmt: skip


def _scored(s: dict) -> str:
    n = s.get("score_images")  # absent in runs before search.score_images: the whole split
    return (
        "the 1,008-image validation split" if n is None else f"{n} of the 1,008 validation images, stratified"
    )


def run(ctx: Context) -> list[Row]:
    import tempfile

    if os.environ.get(FROM_SAVED) and SAVED.is_file():
        return rows_from(json.loads(SAVED.read_text()), False)
    with tempfile.TemporaryDirectory(prefix="rs-bench-oneshot-") as tmp:
        results = measure(ctx, Path(tmp))
    if not ctx.quick:
        SAVED.parent.mkdir(parents=True, exist_ok=True)
        SAVED.write_text(json.dumps(results, indent=1))
        ctx.notes.append(
            f"oneshot_search: world rs-small-clip / mixed (1,008 validation images), {results['sites']} sites, "
            f"ranks {RANKS}, budget {results['budget']} params, {results['settings']['steps']} steps per training; "
            f"raw results docs/oneshot/summary.json"
        )
    return rows_from(results, ctx.quick)
