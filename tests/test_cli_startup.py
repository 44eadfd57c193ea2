"""Commands that only read configs or sweep folders never import the heavy stack (issue 17, start-up time).

``validate``, ``status``, ``best`` and ``schema`` must start in well under two seconds, so they must not import
torch, open_clip, Ray or MLflow. Each command runs in a fresh interpreter and reports ``sys.modules`` at exit;
the timing itself is a benchmark (``python -m bench --only startup``), not a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ranksearch.report.fixture import write_fake_sweep

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "ray", "mlflow", "torchvision")
PROBE = """
import atexit, json, sys
atexit.register(lambda: print("MODULES=" + json.dumps(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr))
from ranksearch.cli import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory) -> Path:
    return write_fake_sweep(tmp_path_factory.mktemp("sweeps") / "fake", n_trials=6, journal=False)


def _imported(args: list[str]) -> tuple[int, set[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES="))
    return proc.returncode, set(json.loads(line.removeprefix("MODULES="))), proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "search_spaces/all.yaml", "search_spaces/quickstart.yaml"],
        ["validate", "search_spaces/lora.yaml", "--set", "train.lr=0"],  # an error path too
        ["schema"],
        ["status", "{sweep}"],
        ["best", "{sweep}"],
        ["--help"],
    ],
    ids=["validate", "validate-error", "schema", "status", "best", "help"],
)
def test_light_commands_import_no_heavy_library(args, sweep_folder):
    code, modules, output = _imported([a.format(sweep=sweep_folder) for a in args])
    assert code in (0, 2), output
    assert not modules & set(HEAVY), (sorted(modules & set(HEAVY)), output[-2000:])


def test_trial_config_names_every_family_without_torch():
    """The config layer knows every registered family (the adapter union) from torch-free config sections."""
    code = (
        "import sys; from ranksearch.config.schema import TrialConfig; from ranksearch.adapters.configs import "
        "family_names; names = family_names(); assert 'torch' not in sys.modules, 'torch imported'; "
        "from ranksearch.adapters.families import family_names as registered; assert registered() == names, "
        "(registered(), names); print(names)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lora" in proc.stdout and "dra" in proc.stdout
