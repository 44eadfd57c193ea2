"""Conformance: the replay makes the decisions a real sweep makes (issue 18: the replay's own ASHA is gone).

The replay drives Ray's own ``ASHAScheduler`` and the production ``PruneAwareOptunaSearch`` in simulated time; what
it re-implements is Tune's event loop. So the check is end to end: a real ``ranksearch sweep`` (real Ray Tune,
the production trainable with the synthetic runner, one trial at a time) and a replay of the same space against
a table holding exactly the synthetic runner's curves must give the same Optuna study — the same configurations
suggested in the same order, the same trials stopped by ASHA at the same rung (PRUNED, with the same
intermediate values), the same COMPLETE values. And the hypervolume the replay scores fronts with is Optuna's:
it equals ``optuna``'s own hypervolume of a study's best trials.
"""

from __future__ import annotations

import itertools
import tempfile

import numpy as np
import pytest
import yaml

from ranksearch.replay.engine import replay_sweep
from ranksearch.replay.table import from_rows
from ranksearch.space import validate_space

LRS, RANKS, TOWERS = [1e-3, 3e-3, 1e-2, 3e-2], [1, 2, 4, 8], ["vision", "both"]
EVALS, TRIALS = 4, 12
SPACE = {
    "base": {"model": {"pretrained": None}, "eval": {"evals": EVALS}},
    "params": {"train.lr": LRS, "adapter.r": RANKS, "placement.towers": TOWERS},
    "objective": {"metric": "val/hm", "mode": "max"},
    "sampler": {"type": "tpe", "seed": 5, "options": {"n_startup_trials": 4}},
    "early_stopping": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "trials": TRIALS,
    "concurrency": 1,
    "resources": {"cpu": 0.5},
}


def synthetic_table(space):
    """The synthetic runner's curves for every configuration of the space, as a replay table."""
    from ranksearch.sweep.synthetic import synthetic_score

    rows = []
    for cid, (lr, r, towers) in enumerate(itertools.product(LRS, RANKS, TOWERS)):
        config = space.trial_config({"train.lr": lr, "adapter.r": r, "placement.towers": towers})
        final = synthetic_score(config)
        for i in range(1, EVALS + 1):
            rows.append({
                "config_id": cid, "train.lr": lr, "adapter.r": r, "placement.towers": towers, "seed": config.seed,
                "fidelity": i, "step": 10 * i, "val/hm": final * (0.6 + 0.4 * i / EVALS),
                "trainable_params": r * 1000.0, "cost_s": 0.2 * i,
            })  # fmt: skip
    return from_rows(
        rows, params=["train.lr", "adapter.r", "placement.towers"], metrics=["val/hm", "trainable_params"]
    )


def study_key(study):
    return [(t.number, t.params, t.state.name, dict(t.intermediate_values), t.value) for t in study.trials]


@pytest.mark.ray
def test_real_sweep_and_replay_make_the_same_decisions(tmp_path):
    import ray

    from ranksearch.sweep.tuner import run_sweep
    from tests.test_sweep import load_study

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE, sort_keys=False))  # parameter order = sampling order
    space = validate_space(SPACE)
    table = synthetic_table(space)
    trace = replay_sweep(table, space, seed=5, workers=1, max_trials=TRIALS)
    replayed = trace.study
    assert {t.state.name for t in replayed.trials} >= {"COMPLETE", "PRUNED"}  # ASHA stopped some trials

    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=tmp)
    try:
        result = run_sweep(path, name="conformance", storage=tmp_path / "runs", runner="synthetic",
                           runner_options={"seconds_per_eval": 0.05}, live=False)  # fmt: skip
    finally:
        ray.shutdown()
    real = load_study(result.folder)
    assert len(real.trials) == TRIALS
    got, want = study_key(replayed), study_key(real)
    for g, w in zip(got, want, strict=True):
        assert g[:3] == w[:3], (g, w)
        assert g[3] == pytest.approx(w[3]) and (
            g[4] == pytest.approx(w[4]) if w[4] is not None else g[4] is None
        )


def test_replay_hypervolume_is_optunas():
    """``ParetoScale.hypervolume`` of a study's front equals Optuna's hypervolume of the same losses."""
    import optuna
    from optuna._hypervolume import compute_hypervolume

    from ranksearch.replay import analysis
    from tests.test_replay import MO, PARAMS, space, table_rows

    table = from_rows(table_rows(), params=PARAMS, metrics=["val/hm", "trainable_params"])
    s = space(objective=MO, early_stopping={"type": "none"})
    trace = replay_sweep(table, s, seed=2, budget_s=300)
    scale = analysis.ParetoScale(table, s)
    front = analysis.observed_front(trace, s, np.inf)
    best = {int(t.number) for t in trace.study.best_trials}  # Optuna's own non-dominated trials
    by_number = {int(r.trial_id): r.config for r in trace.records}
    assert set(front) == {by_number[n] for n in best}
    ref = np.full(2, 1.1)
    losses = np.minimum(scale.losses(np.array(sorted(set(front)))), ref)
    assert scale.hypervolume(front) == pytest.approx(compute_hypervolume(losses, ref))
    # and against a brute-force Monte Carlo estimate of the dominated area (independent of Optuna)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1.1, size=(200_000, 2))
    dominated = np.any(np.all(pts[:, None, :] >= losses[None, :, :], axis=2), axis=1)
    assert scale.hypervolume(front) == pytest.approx(dominated.mean() * 1.21, abs=0.01)
    assert isinstance(trace.study, optuna.Study)
