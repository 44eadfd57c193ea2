"""Shared test set-up: offline, quiet, and small."""

from __future__ import annotations

import os

# Never reach a model hub from tests: a pretrained tag fails at once instead of after ~46 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The per-user key that signs sweep folders' pickles (ranksearch.sweep.signing): the tests' own, never the user's.
os.environ["XDG_CONFIG_HOME"] = __import__("tempfile").mkdtemp(prefix="rs-config-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def tiny_model():
    """A randomly initialised tiny open_clip model (3 vision blocks, 2 text blocks), frozen, eval mode."""
    from ranksearch.models.clip import build_model

    model, _ = build_model("rs-tiny-clip", None)
    return model


@pytest.fixture
def tiny_inputs():
    """(images (4, 3, 32, 32), token ids (3, 16)) for the tiny model."""
    import open_clip

    from ranksearch.models.clip import register_tiny_configs

    register_tiny_configs()
    torch.manual_seed(0)
    tokens = open_clip.get_tokenizer("rs-tiny-clip")(
        ["a red star", "a small blue ring in the top left", "a heart"]
    )
    return torch.randn(4, 3, 32, 32), tokens
