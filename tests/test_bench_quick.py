"""CI check of the benchmark suite: ``python -m bench --quick`` runs every benchmark and reports each row.

This checks that the benchmarks execute (tiny model, few repeats, ~1.5 min on 2 quiet cores); the numbers themselves are
measured by the full suite (``python -m bench``) into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_ROWS = [
    "tiny: ranksearch / PEFT, equal work (EOT cut on both)",
    "tiny: ranksearch / plain CLIP-LoRA, equal work (EOT cut on both)",
    "tiny: ranksearch / PEFT, equal work (full 77-token prompts on both)",
    "tiny: EOT prompt cut, a property of CLIP any peer could use",
    "tiny: stacked q/k/v (fused frozen matmul + one low-rank product, default) / separate",
    "tiny: option AMP",
    "tiny: option torch.compile",
    "lora: step / floor",
    "codyra: step / floor",
    "rlrr: step / floor",
    "adalora: step / floor",
    "dra: step / floor",
    "frozen-prefix cache: speedup, vision top half",
    "class text features with the text tower frozen",
    "lora: merged / stock open_clip latency",
    "codyra: merged / stock open_clip latency",
    "rlrr: merged / stock open_clip latency",
    "adalora: merged / stock open_clip latency",
    "dra: unmerged inference / stock",
    "trial step peak / floor",
    "optimizer state only for adapter parameters",
    "bytes per adapter parameter",
    "tiny: step with 2 torch threads / 1",
    "8 tiny trials packed (same-shape LoRA, lr differs) / best unpacked schedule",
    "8 tiny trials packed (same-shape LoRA): CPU ms per member-step by phase, pack / alone",
    "tiny: peak memory, pack of 8 (pack_group 1) / one trial",
    "CUDA path: step times from CUDA events",
    "2 concurrent tiny trials vs 2 sequential at their fastest",
    "per-trial overhead: ranksearch sweep / bare Ray Tune",
    "NAS-Bench-201 cifar10: compute to random's final median regret, default / random",
    "LCDB OpenML 6: compute to within 1 seed-SD of the best, default / random",
    "NAS-Bench-201 cifar10, two objectives: hypervolume at equal compute, default / random",
    "start-up: ranksearch validate",
    "start-up: ranksearch best",
    "-trial report: build_report",
    "Kendall τ, one-shot estimate vs retrained val/hm",
    "reports into the journal (Tune loop side)",
    "reports delivered to mlflow server on PostgreSQL",
    "longest Tune-loop call into tracking",
    "per-completion driver cost",
]


@pytest.mark.ray  # search_overhead starts a local Ray in the subprocess
@pytest.mark.slow  # every benchmark once, in subprocesses
def test_quick_suite_runs_every_benchmark(tmp_path):
    out = tmp_path / "bench.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,  # every benchmark once; other jobs on a shared machine can double it
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = out.read_text()
    assert "benchmark raised" not in report
    for row in EXPECTED_ROWS:
        assert row in report, f"missing row {row!r}"
    for heading in ("## Run", "## Results", "command: `python -m bench --quick", "CPU:", "versions:"):
        assert heading in report
