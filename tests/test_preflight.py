"""A sweep checks once, before Ray starts, that its model and data load (``ranksearch.sweep.preflight``).

Without the check an offline ``pretrained: openai`` started Ray, created the study and the MLflow parent run, and
then every trial errored with the same message. Now: one line, exit 2, nothing created, Ray never started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ranksearch.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "search_spaces" / "quickstart.yaml")

CASES = {
    "offline-openai": (
        ["--set", "model.name=RN50", "--set", "model.pretrained=openai"],
        ["could not load 'RN50' with pretrained='openai'", "offline, point model.pretrained at a local"],
    ),
    "missing-coop-data": (
        ["--set", "data.task=oxford_pets", "--set", "data.root={tmp}/nodata"],
        ["split file not found", "ranksearch prepare-data oxford_pets"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sweep_fails_before_ray_when_model_or_data_cannot_load(case, tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a pretrained tag fails at once instead of after retries
    monkeypatch.chdir(tmp_path)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start when the model or the data cannot load")

    monkeypatch.setattr(ray, "init", no_ray)
    sets, expected = CASES[case]
    args = ["sweep", QUICKSTART, "--no-live", *[s.format(tmp=tmp_path) for s in sets]]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = [ln for ln in (captured.out + captured.err).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert all(e in lines[0] for e in expected), lines[0]
    assert not (tmp_path / "ranksearch-runs").exists()  # no sweep folder, study or MLflow store was created
