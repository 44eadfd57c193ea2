"""A base-to-new sweep on the CoOp ``$DATA`` layout, with real training, Ray, Optuna and MLflow.

CoOp's validation split holds base classes only, so before the base-to-new validation rule ``val/new`` and
``val/hm`` were NaN for every trial while the sweep said "completed". The fabricated ``$DATA`` has 12 Oxford-Pets
style classes (6 base, of which 2 are pseudo-new under the default ``data.val_new_fraction``).
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from rich.console import Console

pytestmark = pytest.mark.ray

CLASSES = [f"breed_{i:02d}" for i in range(12)]


def make_coop_pets(root: Path) -> None:
    rng = np.random.default_rng(0)
    base = root / "oxford_pets"
    doc: dict[str, list] = {"train": [], "val": [], "test": []}
    for y, name in enumerate(CLASSES):
        colour = rng.integers(0, 256, 3)
        for i in range(7):
            rel = f"{name}_{i}.png"
            pixels = np.clip(colour + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            (base / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(base / "images" / rel)
            doc["train" if i < 3 else "val" if i < 5 else "test"].append([rel, y, name])
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(doc))


def test_coop_base2new_sweep_has_finite_validation_hm(tmp_path: Path) -> None:
    from ranksearch.sweep.live import leaderboard
    from ranksearch.sweep.tuner import run_sweep

    make_coop_pets(tmp_path / "DATA")
    space = {
        "base": {
            "model": {"pretrained": None},
            "data": {
                "task": "oxford_pets", "root": str(tmp_path / "DATA"), "protocol": "base2new", "shots": 2,
                "cache_dir": str(tmp_path / "cache"),
            },
            "train": {"iterations": 4, "batch_size": 8},
            "eval": {"evals": 2},
        },
        "params": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
        "objective": {"metric": "val/hm", "mode": "max"},
        "sampler": {"type": "random", "seed": 0},
        "early_stopping": {"type": "none"},
        "trials": 2,
        "concurrency": 2,
        "resources": {"cpu": 1, "gpu": 0},
    }  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # Ray's socket paths must stay short
    result = run_sweep(
        tmp_path / "space.yaml", name="coop", storage=tmp_path / "runs", live=False,
        ray_init={"num_cpus": 2, "_temp_dir": ray_tmp},
    )  # fmt: skip
    completed = [r for r in result.rows if r["status"] == "completed"]
    assert len(completed) == 2, [(r["status"], r.get("error")) for r in result.rows]
    for r in completed:
        for key in ("val/base", "val/new", "val/hm", "test/base", "test/new", "test/hm", "zs/val/hm"):
            assert math.isfinite(r[key]), (key, r)
    console = Console(file=io.StringIO(), width=200)
    console.print(leaderboard(result.rows, result.space))
    board = console.file.getvalue()
    assert "nan" not in board.lower() and "zero-shot" in board, board
    # every trial held out the same pseudo-new classes (identical across the trials of a sweep)
    held = {
        json.dumps(json.loads(p.read_text())["classes"]["val_new"])
        for p in (result.folder / "trials").rglob("metrics.json")
    }
    assert len(held) == 1 and len(json.loads(held.pop())) == 2
