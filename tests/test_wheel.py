"""A plain ``pip install`` of the built wheel (not editable) is a working ranksearch: it finds its report templates
(the top-level ``dashboards/`` ships as ``ranksearch.dashboards``), its model configs and its CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_renders_a_report(tmp_path):
    src = (
        tmp_path / "src"
    )  # setuptools builds in the source tree (build/, *.egg-info): a copy, not the checkout
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "ranksearch-runs", "mlruns")
    )
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("ranksearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ranksearch/dashboards/templates/report.html.j2" in names
    assert "ranksearch/models/configs/rs-tiny-clip.json" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

    # a fresh venv; the dependencies come from this environment's site-packages through a .pth line, which adds
    # the folder but not its own .pth files, so the editable checkout of ranksearch is invisible there
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    work = tmp_path / "elsewhere"  # not the checkout: nothing may resolve through the working directory
    work.mkdir()
    script = (
        "import ranksearch, pathlib\n"
        "from ranksearch.report.fixture import write_fake_sweep\n"
        "from ranksearch.report.html import build_report\n"
        "print(ranksearch.__file__)\n"
        "folder = write_fake_sweep(pathlib.Path('sweep'), n_trials=4)\n"
        "print(build_report(folder).path.resolve())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANKSEARCH_DASHBOARDS")}
    proc = subprocess.run(
        [str(py), "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed, report = proc.stdout.strip().splitlines()[-2:]
    assert Path(installed).is_relative_to(Path(site)), installed  # the wheel's copy, not the checkout
    html = Path(report).read_text()
    assert "<html" in html and "plotly" in html.lower() and len(html) > 100_000

    cli = subprocess.run(
        [str(env_dir / "bin" / "ranksearch"), "--version"], cwd=work, env=env, capture_output=True, text=True
    )
    assert cli.returncode == 0 and "0.1.0" in cli.stdout + cli.stderr
