"""The quickstart through the Python API: one trial, a sweep, its best config, the report, an export.

    python examples/api_quickstart.py            # the quickstart sweep (8 trials, a few minutes on 2 CPU cores)
    python examples/api_quickstart.py --small    # a seconds-long version (what the tests run)

Everything lands under ./ranksearch-runs (a trial folder, the sweep folder with its MLflow store, an export).
The same steps in a notebook, exploring the sweep afterwards: examples/explore_sweep.ipynb.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ranksearch

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
SMALL = ["train.iterations=12", "eval.evals=2", "data.shots=2", "data.test_per_class=4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a seconds-long version of every step")
    parser.add_argument(
        "--name", default="api-quickstart", help="sweep name (folder under ranksearch-runs/sweeps)"
    )
    args = parser.parse_args()
    overrides = SMALL if args.small else []

    # 1. one trial in this process (no Ray): the space's defaults with a larger rank
    outcome = ranksearch.trial(SPACE, params={"adapter.r": 4}, overrides=overrides, progress=not args.small)
    print(
        f"trial: val/hm {outcome.metrics['val/hm']:.1f}, test/hm {outcome.metrics['test/hm']:.1f} -> {outcome.folder}"
    )

    # 2. a sweep over the space (Ray Tune + Optuna + ASHA, one MLflow parent run, a child run per trial)
    sweep = ranksearch.sweep(SPACE, name=args.name, trials=2 if args.small else None, overrides=overrides)
    print(sweep)
    print(sweep.leaderboard()[["trial_id", "status", "best_value", "val/base", "val/new"]].head())

    # 3. the best trial's full config: a TrialConfig you can run again, change, or save as YAML
    best = sweep.best_config
    print(f"best: {best.adapter.family} r={best.adapter.r} on {best.placement.towers} "
          f"{','.join(best.placement.matrices)}, lr {best.train.lr:.3g}")  # fmt: skip

    # 4. the HTML dashboard, and the best trial merged into a plain open_clip model (also an MLflow model)
    print(f"report: {sweep.report()}")
    folder = Path("ranksearch-runs") / "exports" / args.name
    manifest = ranksearch.export(sweep, folder)
    print(f"export: {manifest['load_with']}  (MLflow: {manifest.get('mlflow', {}).get('model_uri')})")

    import open_clip  # the export needs nothing but open_clip

    model = open_clip.create_model(f"local-dir:{folder.resolve()}")
    print(f"loaded with open_clip alone: {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
