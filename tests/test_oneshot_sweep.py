"""One-shot search in the product: ``ranksearch sweep`` on a real Ray, Optuna journal and MLflow (sqlite)."""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

# ~90 s on 2 busy cores (Ray start, a supernet task, two scorer actors, two retrains): the slow tier
pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPACE = {
    "name": "os",
    "base": {
        # the built-in pretrained tiny model: adapters must change validation scores for a front to form
        "model": {"name": "rs-tiny-clip", "pretrained": "shapeworld", "device": "cpu"},
        "data": {"task": "shapeworld", "shots": 4, "test_per_class": 2},
        "adapter": {"family": "lora", "dropout": 0.0},
        "placement": {"towers": "both", "matrices": ["q", "v"]},
        "train": {"iterations": 20, "batch_size": 16, "augment": False, "lr": 1.5e-2},
        "eval": {"evals": 2, "zero_shot": False},
    },
    "search": {"mode": "one-shot", "ranks": [0, 1, 2, 4], "sandwich_random": 1, "evaluations": 8, "top_k": 2,
               "budget": {"total_params": 3000}, "score_images": 12, "score": "likelihood"},
    "objective": {"metric": "val/hm", "mode": "max"},
    "concurrency": 2,
    "resources": {"cpu": 1, "gpu": 0},
}  # fmt: skip


@pytest.fixture(scope="module")
def ray_session():
    import ray

    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=tmp)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def oneshot_sweep(ray_session, tmp_path_factory):
    from ranksearch.sweep.tuner import run_sweep

    tmp = tmp_path_factory.mktemp("oneshot")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    result = run_sweep(space, storage=tmp / "runs", live=False)
    return tmp, space, result


def test_one_shot_sweep_runs_supernet_evaluations_and_retrains(oneshot_sweep):
    tmp, _, result = oneshot_sweep
    s = result.oneshot
    folder = result.folder
    # supernet: 20 steps x (max, min, 1 random)
    assert s["compute"]["supernet_passes"] == 60 and s["compute"]["supernet_steps"] == 20
    assert (folder / "supernet" / "adapter.safetensors").is_file()
    evals = pq.read_table(folder / "search" / "evaluations.parquet").to_pylist()
    assert len(evals) == 8 and s["compute"]["evaluations"] == 8
    assert all(e["trainable_params"] <= 3000 for e in evals)  # the budget (10 sites x 4 x 128 = 5120 at max)
    assert json.loads(evals[0]["ranks"]) and evals[1]["trainable_params"] == 0  # max (repaired), then the min
    front = [e for e in evals if e["front"]]
    alloc = pq.read_table(folder / "search" / "allocation.parquet").to_pylist()
    assert {r["allocation"] for r in alloc} == {e["number"] for e in front}
    assert len(alloc) == 10 * len(front)  # one row per site (q, v of 3 + 2 blocks) per front member
    assert all((folder / "search" / "front" / f"allocation-{e['number']}.png").is_file() for e in front)
    # retrains: the two best front members, trained from scratch as ordinary trials with their rank pattern
    assert len(s["rows"]) == min(2, sum(e["trainable_params"] > 0 for e in front)) >= 1
    for row in s["rows"]:
        assert row["status"] == "completed" and row["retrained"] is not None
        cfg = yaml.safe_load((folder / row["trial"] / "config.yaml").read_text())
        assert cfg["adapter"]["rank_pattern"] == row["ranks"]
        metrics = json.loads((folder / row["trial"] / "metrics.json").read_text())["final"]
        assert metrics["trainable_params"] == row["trainable_params"]
    trials = pq.read_table(folder / "trials.parquet").to_pylist()  # what status / best / report read
    assert [t["trial_id"] for t in trials] == [r["trial"].split("/")[1] for r in s["rows"]]
    assert [t["oneshot/estimate"] for t in trials] == [r["estimate"] for r in s["rows"]]


def test_one_shot_sweep_is_one_parent_run_with_children(oneshot_sweep):
    _, _, result = oneshot_sweep
    client = MlflowClient(tracking_uri=result.tracking_uri)
    exp = client.get_experiment_by_name(result.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    kinds = sorted(r.data.tags["ranksearch.kind"] for r in children)
    assert kinds == sorted(["evaluations", "supernet"] + ["retrain"] * len(result.oneshot["rows"]))
    ev = next(r for r in children if r.data.tags["ranksearch.kind"] == "evaluations")
    assert len(client.get_metric_history(ev.info.run_id, "val/hm")) == 8
    assert all(r.info.status == "FINISHED" for r in children)
    assert "oneshot/supernet_passes" in parents[0].data.metrics


def test_allocations_are_scored_on_a_fixed_stratified_sample(oneshot_sweep):
    """``search.score_images``: every allocation is scored on the same class-stratified 12 validation images (a
    scorer built again reproduces the sweep's estimates exactly), while the retrains use the whole split."""
    from ranksearch.oneshot.scoring import SupernetScorer

    _, _, result = oneshot_sweep
    evals = pq.read_table(result.folder / "search" / "evaluations.parquet").to_pylist()
    scorer = SupernetScorer(result.folder / "supernet", images=12)
    full = SupernetScorer(result.folder / "supernet")
    assert len(scorer.task.val) == 12 < len(full.task.val)
    # stratified: each class gets its share of the 12, rounded (floor or ceil; with more classes than images, one)
    picked, everything = Counter(scorer.task.val.labels.tolist()), Counter(full.task.val.labels.tolist())
    assert set(picked) <= set(everything) and len(picked) == min(12, len(everything))
    for c, n in everything.items():
        share = n * 12 / len(full.task.val)
        assert math.floor(share) <= picked.get(c, 0) <= max(1, math.ceil(share))
    again = scorer.score([list(json.loads(e["ranks"]).values()) for e in evals[:3]])  # site order kept
    assert [a["val/hm"] for a in again] == pytest.approx([e["val/hm"] for e in evals[:3]], abs=1e-9)
    assert [a["val/loglik"] for a in again] == pytest.approx([e["val/loglik"] for e in evals[:3]], abs=1e-9)
    # search.score: likelihood: the front and the retrains are chosen by val/loglik, judged by val/hm
    s = result.oneshot
    assert s["estimate_metric"] == "val/loglik" and s["metric"] == "val/hm"
    by_number = {e["number"]: e for e in evals}
    assert [r["estimate"] for r in s["rows"]] == [by_number[r["allocation"]]["val/loglik"] for r in s["rows"]]
    trained_front = sorted((e for e in evals if e["front"] and e["trainable_params"] > 0),
                           key=lambda e: -e["val/loglik"])  # fmt: skip
    assert [r["allocation"] for r in s["rows"]] == [e["number"] for e in trained_front[: len(s["rows"])]]
    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(result.experiment).experiment_id])
    ev = next(r for r in runs if r.data.tags.get("ranksearch.kind") == "evaluations")
    assert ev.data.params["score_images"] == "12"


def test_one_shot_resume_retrains_nothing_twice(oneshot_sweep):
    from ranksearch.sweep.tuner import run_sweep

    tmp, space, result = oneshot_sweep
    before = (result.folder / "supernet" / "adapter.safetensors").stat().st_mtime_ns
    again = run_sweep(space, name="os", storage=tmp / "runs", resume=True, live=False)
    assert (result.folder / "supernet" / "adapter.safetensors").stat().st_mtime_ns == before
    assert again.oneshot["rows"] == result.oneshot["rows"]
    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(result.experiment).experiment_id])
    assert len(runs) == 1 + 2 + len(result.oneshot["rows"])  # no duplicate children


def test_export_any_scored_allocation(oneshot_sweep, tmp_path):
    import open_clip

    from ranksearch.api import export

    _, _, result = oneshot_sweep
    number = result.oneshot["rows"][-1]["allocation"]
    manifest = export(str(result.folder), tmp_path / "out", allocation=number, mlflow=False)
    assert manifest["merged"] and manifest["allocation"] == result.oneshot["rows"][-1]["ranks"]
    open_clip.create_model(f"local-dir:{tmp_path / 'out'}")


def test_report_and_best_read_a_one_shot_sweep(oneshot_sweep, tmp_path):
    """The retrains are the sweep's trials: ``best`` prints the best one's rank pattern, the report's leaderboard
    holds each retrain's one-shot estimate beside its result."""
    from typer.testing import CliRunner

    from ranksearch.cli import app

    _, _, result = oneshot_sweep
    best = CliRunner().invoke(app, ["best", str(result.folder)])
    assert best.exit_code == 0, best.output
    assert "rank_pattern:" in best.output
    out = tmp_path / "report.html"
    rep = CliRunner().invoke(app, ["report", str(result.folder), "--out", str(out), "--no-mlflow"])
    assert rep.exit_code == 0, rep.output
    page = out.read_text()
    assert "oneshot/estimate" in page
    # the one-shot section: Kendall tau of estimate vs retrained, and the table with one row per retrain
    import re

    s = result.oneshot
    section = page[page.index('<section id="oneshot"') :]
    section = section[: section.index("</section>")]
    n = sum(r["retrained"] is not None for r in s["rows"])
    tau = "-" if s["kendall_tau"] != s["kendall_tau"] else f"{s['kendall_tau']:.2f}"
    # ranked by val/loglik (search.score: likelihood), judged by val/hm: the note names both
    assert (
        f"Kendall τ (one-shot estimate val/loglik vs retrained val/hm, {n} retrained allocations): {tau}."
        in section
    )
    rows = re.findall(r"<tr data-allocation='(\d+)'>(.*?)</tr>", section)
    assert [int(a) for a, _ in rows] == [r["allocation"] for r in s["rows"]]
    for (_, cells), r in zip(rows, s["rows"], strict=True):
        shown = re.findall(r"<td[^>]*>(.*?)</td>", cells)
        assert shown[1] == r["trial"].split("/")[1] and shown[3] == f"{r['estimate']:.2f}"
        assert shown[4] == f"{r['retrained']:.2f}" and shown[7] == "completed"
        assert shown[6] == "-"  # no "retrained - estimate": a log-likelihood is not on the HM's scale
    assert '"fig-oneshot-retrained"' in page and '"fig-oneshot-front"' in page
