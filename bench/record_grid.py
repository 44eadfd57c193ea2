"""Record a grid of real trials on the built-in shape world, with per-evaluation learning curves.

    python -m bench.record_grid --out bench/data/grid.json

The file is the table the replay backend (``bench/replay.py``) simulates sweeps against: each entry holds the
configuration's parameters, its validation HM after every evaluation (the learning curve a scheduler sees),
the trainable parameter count and the trial's wall time. The grid is small on purpose (24 configurations,
a few minutes on 2 CPU cores) so that it can be re-recorded and committed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# The grid's axes. Each is a categorical choice in the replayed search space, so order matters only for display.
GRID: dict[str, list[Any]] = {
    "train.lr": [3e-3, 1e-2, 3e-2],
    "adapter.r": [1, 4],
    "placement.matrices": [["q", "v"], ["q", "k", "v", "o"]],
    "placement.towers": ["vision", "both"],
}

# Like search_spaces/quickstart.yaml, shortened (160 steps, 8 shots) so the whole grid takes minutes.
BASE: dict[str, Any] = {
    "model": {"name": "rs-tiny-clip", "pretrained": "shapeworld"},
    "data": {
        "task": "shapeworld",
        "protocol": "base2new",
        "domain": "clutter",
        "shots": 8,
        "test_per_class": 10,
    },
    "adapter": {"family": "lora"},
    "train": {"iterations": 160, "batch_size": 32, "augment": False},
    "eval": {"evals": 4, "zero_shot": False},
    "tracking": {"enabled": False},
}


def grid_points() -> list[dict[str, Any]]:
    """Every combination of the grid's axes, as {dotted key: value}."""
    keys = list(GRID)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*GRID.values())]


def trial_dict(params: dict[str, Any]) -> dict[str, Any]:
    """The base config with the dotted ``params`` set."""
    cfg = json.loads(json.dumps(BASE))  # deep copy
    for dotted, value in params.items():
        section, key = dotted.split(".")
        cfg.setdefault(section, {})[key] = value
    return cfg


def record_one(params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one trial and return its table entry (params, HM curve, trainable params, seconds)."""
    from ranksearch.config.load import validate_trial_config
    from ranksearch.trial import EvalEvent, run_trial

    config = validate_trial_config(trial_dict(params))
    curve: list[float] = []
    steps: list[int] = []
    trainable: list[float] = []

    def on_eval(event: EvalEvent) -> None:
        curve.append(float(event.metrics["val/hm"]))
        steps.append(int(event.step))
        trainable.append(float(event.metrics.get("trainable_params", float("nan"))))

    t0 = time.perf_counter()
    result = run_trial(config, output_dir=workdir, on_eval=on_eval, progress=False)
    seconds = time.perf_counter() - t0
    return {
        "params": params,
        "status": result.status,
        "val_hm": [round(v, 3) for v in curve],
        "steps": steps,
        "trainable_params": int(trainable[-1]) if trainable else None,
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.record_grid", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/data/grid.json")
    parser.add_argument("--limit", type=int, default=None, help="record only the first N points (testing)")
    args = parser.parse_args(argv)

    points = grid_points()[: args.limit]
    entries = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rs-grid-") as tmp:
        for i, params in enumerate(points):
            entry = record_one(params, Path(tmp) / f"t{i}")
            entries.append(entry)
            print(f"[grid] {i + 1}/{len(points)} {params} hm={entry['val_hm']} {entry['seconds']} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "description": "recorded by `python -m bench.record_grid`: real trials on the built-in shape world",
        "base": BASE,
        "grid": GRID,
        "evals": BASE["eval"]["evals"],
        "seconds": round(time.perf_counter() - started, 1),
        "trials": entries,
    }
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"[grid] wrote {out} ({len(entries)} trials)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
