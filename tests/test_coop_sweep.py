"""A base-to-new sweep on the CoOp ``$DATA`` layout, with real training, Ray, Optuna and MLflow.

CoOp's validation split holds base classes only, so before the base-to-new validation rule ``val/new`` and
``val/hm`` were NaN for every trial while the sweep said "completed". The fabricated ``$DATA`` has 12 Oxford-Pets
style classes (6 base, of which 2 are pseudo-new under the default ``data.val_new_fraction``).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

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


def test_coop_base2new_sweep_has_finite_validation_hm(tmp_path: Path, capsys, monkeypatch) -> None:
    """The issue's reproduction through the command: ``ranksearch sweep`` on CoOp data under base2new prints a
    leaderboard whose every completed trial has a finite val/hm, exits 0, and ``best`` finds the winner."""
    from ranksearch.cli import main
    from ranksearch.report.data import load_sweep

    make_coop_pets(tmp_path / "DATA")
    space = {
        "base": {
            "model": {"pretrained": None},
            "data": {"shots": 2, "cache_dir": str(tmp_path / "cache")},
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
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short socket paths
    main(
        [
            "sweep",
            "space.yaml",
            "--name",
            "coop",
            "--no-live",
            "--set",
            "data.task=oxford_pets",
            "--set",
            f"data.root={tmp_path / 'DATA'}",
            "--set",
            "data.protocol=base2new",
        ]
    )  # fmt: skip  (returns: exit 0)
    printed = capsys.readouterr().out
    folder = tmp_path / "ranksearch-runs" / "sweeps" / "coop"
    rows = load_sweep(folder, history=False).trials.to_dict("records")
    completed = [r for r in rows if r["status"] == "completed"]
    assert len(completed) == 2, [(r["status"], r.get("error")) for r in rows]
    for r in completed:
        for key in ("val/base", "val/new", "val/hm", "test/base", "test/new", "test/hm", "zs/val/hm"):
            assert math.isfinite(r[key]), (key, r)
    board = printed[: printed.index("sweep folder:")]
    assert "nan" not in board.lower() and "zero-shot" in board, board
    for r in completed:  # each completed trial's row shows its val/hm
        assert f"{r['val/hm']:.4g}" in board, (r["val/hm"], board)
    main(["best", "coop"])
    best = yaml.safe_load(capsys.readouterr().out)
    assert best["data"]["task"] == "oxford_pets" and best["data"]["protocol"] == "base2new"
    # every trial held out the same pseudo-new classes (identical across the trials of a sweep)
    held = {
        json.dumps(json.loads(p.read_text())["classes"]["val_new"])
        for p in (folder / "trials").rglob("metrics.json")
    }
    assert len(held) == 1 and len(json.loads(held.pop())) == 2
