"""A few-shot trial on real photos (Fashion-MNIST from the Debian package), offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from ranksearch.config import validate_trial_config
from ranksearch.trial import run_trial

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(),
    reason="needs the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist; CI installs it)",
)
def test_fashion_mnist_few_shot_lora_beats_zero_shot(tmp_path):
    config = validate_trial_config(
        {
            "data": {"task": "fashion-mnist", "protocol": "fewshot", "shots": 16, "max_test_per_class": 50},
            "adapter": {"family": "lora", "r": 4},
            "placement": {"matrices": ["q", "k", "v", "o"]},
            "train": {"iterations": 150, "batch_size": 32, "lr": 1e-2, "augment": False},
            "eval": {"evals": 1},
            "tracking": {"enabled": False},
        }
    )
    result = run_trial(config, output_dir=tmp_path, progress=False)
    zero_shot, adapted = result.metrics["zs/test/acc"], result.metrics["test/acc"]
    # the shape-world CLIP has never seen clothes: zero-shot is near chance (10 %); 16 shots teach it
    assert adapted > zero_shot + 20, (zero_shot, adapted)
