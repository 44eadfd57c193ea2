"""A sweep folder is data, never code (issue 21, part B): pickles are verified before Ray unpickles them.

Tune's ``Tuner.restore`` unpickles ``tune/tuner.pkl`` and the other state files, so ``--resume`` refuses any
file there that this user's key did not sign (``ranksearch.sweep.signing``). The crafted pickles here really
run their payload when unpickled (asserted), so a refusal that let them through would create the marker.
"""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import yaml
from cli_run import run_cli as cli
from reliability_report import record

from ranksearch.cli import main
from ranksearch.sweep import signing
from ranksearch.sweep.folder import Manifest

REFUSED: list[str] = []  # crafted inputs refused (for docs/reliability.md)


class _Payload:
    """Unpickling this touches ``marker``: stands for any code a crafted pickle would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_pickle(marker: Path) -> bytes:
    data = pickle.dumps(_Payload(marker))
    probe = marker.with_name(marker.name + ".probe")
    pickle.loads(pickle.dumps(_Payload(probe)))  # the payload is live: unpickling runs it
    assert probe.exists()
    probe.unlink()
    return data


@pytest.fixture
def key_home(tmp_path, monkeypatch):
    """A fresh per-user config folder (the signing key lives there, outside every sweep folder)."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def sweep_folder(root: Path, name: str = "shared") -> Path:
    """A sweep folder as a sweep leaves it (manifest, space copy, Tune state), without running one."""
    folder = root / name
    (folder / "tune").mkdir(parents=True)
    (folder / "space.yaml").write_text(
        yaml.safe_dump({"params": {"adapter.r": [1, 2]}, "objective": {"metric": "val/hm"}})
    )
    Manifest(name, "space.yaml", f"sqlite:///{folder / 'mlflow.db'}", name, "0" * 32).save(folder)
    # Tune's snapshot (no trial yet), signed as a sweep would: a started sweep, as --resume expects
    (folder / "tune" / STATE).write_text('{"trial_data": [], "runner_data": {}, "stats": {}}')
    signing.sign(folder, {f"tune/{STATE}": folder / "tune" / STATE})
    return folder


STATE = "experiment_state-2026-01-01_00-00-00.json"


def resume(folder: Path, capsys, *extra: str) -> tuple[int, str]:
    args = ["sweep", str(folder / "space.yaml"), "--name", folder.name, "--runs-dir", str(folder.parent)]
    try:
        main([*args, "--resume", "--no-live", *extra])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_crafted_tuner_pkl_is_refused_and_never_run(tmp_path, key_home, capsys, caplog):
    """The headline: a shared folder whose tune/tuner.pkl runs code on unpickling is refused by --resume."""
    folder = sweep_folder(tmp_path / "runs")
    marker = tmp_path / "pwned"
    (folder / "tune" / "tuner.pkl").write_bytes(crafted_pickle(marker))
    code, text = resume(folder, capsys)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    assert "tune/tuner.pkl is not signed by your ranksearch key" in text, text
    assert "--trust-state" in text, text  # the way on, for a folder the user does trust
    assert not marker.exists()
    REFUSED.append("tuner.pkl")
    # nothing else happened either: no Ray, no MLflow store, manifest untouched
    assert not (folder / "mlflow.db").exists()
    assert Manifest.load(folder).resumes == 0


@pytest.mark.parametrize("victim", ["tuner.pkl", STATE, "searcher-state-x.pkl", "t1/error.pkl"])
def test_signed_state_tampered_after_signing_is_refused(tmp_path, key_home, capsys, victim):
    """Every file Tune may unpickle is covered: replacing any signed one is caught before Ray reads it.

    The experiment snapshot stays valid JSON (so the damage check passes it): its payload is a cloudpickle
    blob under Tune's ``CLOUDPICKLE_FALLBACK`` marker, which Tune's restore expands.
    """
    import json

    folder = sweep_folder(tmp_path / "runs")
    for rel in ("tuner.pkl", "searcher-state-x.pkl", "t1/error.pkl"):
        (folder / "tune" / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / "tune" / rel).write_bytes(pickle.dumps({"benign": rel}))
    signing.sign_tune_state(folder)
    signing.verify_tune_state(folder, "hint")  # control: the sweep's own state passes

    marker = tmp_path / "pwned"
    payload = crafted_pickle(marker)
    if victim == STATE:
        blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
        payload = json.dumps({"trial_data": [], "runner_data": {"_x": blob}, "stats": {}}).encode()
    (folder / "tune" / victim).write_bytes(payload)
    code, text = resume(folder, capsys)
    assert code == 2, text
    assert f"tune/{victim} changed after your sweep signed it" in text, text
    assert not marker.exists()
    REFUSED.append(victim)


def test_an_added_unsigned_state_file_is_refused(tmp_path, key_home):
    """Tune loads the newest ``searcher-state-*.pkl`` by name: an extra one planted beside signed ones is refused."""
    folder = sweep_folder(tmp_path / "runs")
    (folder / "tune" / "searcher-state-a.pkl").write_bytes(pickle.dumps({}))
    signing.sign_tune_state(folder)
    (folder / "tune" / "searcher-state-zz.pkl").write_bytes(crafted_pickle(tmp_path / "pwned"))
    with pytest.raises(signing.TrustError, match="searcher-state-zz.pkl is not signed"):
        signing.verify_tune_state(folder, "hint")


def test_another_users_key_does_not_verify(tmp_path, key_home, monkeypatch):
    """A folder signed throughout by someone else's key (its author's) means nothing to this user."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "author"))
    folder = sweep_folder(tmp_path / "runs")
    (folder / "tune" / "tuner.pkl").write_bytes(pickle.dumps({}))
    signing.sign_tune_state(folder)
    signing.verify_tune_state(folder, "hint")  # the author may resume it
    assert signing.trusted_manifest(folder)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(key_home))
    with pytest.raises(signing.TrustError, match="no signing key at"):  # this user never signed anything
        signing.verify_tune_state(folder, "hint")
    signing.load_key(create=True)
    with pytest.raises(signing.TrustError, match="sweep.json changed after your sweep signed it"):
        signing.verify_tune_state(folder, "hint")
    assert signing.trusted_manifest(folder) is False


def test_signing_key_is_private_and_outside_the_folder(tmp_path, key_home):
    folder = sweep_folder(tmp_path / "runs")  # Manifest.save signs, creating the key
    key = key_home / "ranksearch" / "state.key"
    assert key.is_file() and not key.is_relative_to(folder)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert signing.trusted_manifest(folder)
    key.chmod(0o644)  # a key others can read signs nothing and verifies nothing
    with pytest.raises(signing.TrustError, match="readable or writable by others: chmod 600"):
        signing.load_key(create=False)
    assert signing.trusted_manifest(folder) is False


def test_trust_state_is_explicit_and_signs(tmp_path, key_home):
    """``--trust-state`` (a folder the user wrote elsewhere) signs its state, after which it verifies."""
    folder = sweep_folder(tmp_path / "runs")
    (folder / "tune" / "tuner.pkl").write_bytes(pickle.dumps({}))
    with pytest.raises(signing.TrustError):
        signing.verify_tune_state(folder, "hint")
    signing.sign_tune_state(folder)
    signing.verify_tune_state(folder, "hint")


# ------------------------------------------------------------------------- read-only commands read plain data
def foreign_folder(root: Path, uri: str, ids: list[str]) -> Path:
    """A sweep folder someone else wrote (sweep.json not signed by this user's key), with a trials table."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "foreign"
    folder.mkdir(parents=True)
    (folder / "space.yaml").write_text(
        yaml.safe_dump({"params": {"adapter.r": [1, 2]}, "objective": {"metric": "val/hm", "mode": "max"}})
    )
    manifest = {"name": "foreign", "space_file": "space.yaml", "tracking_uri": uri, "experiment": "foreign",
                "parent_run_id": "f" * 32, "started": 0.0, "status": "finished"}  # fmt: skip
    (folder / "sweep.json").write_text(json.dumps(manifest))
    rows = [{"trial_id": t, "status": "completed", "family": "lora", "param:adapter.r": 1, "val/hm": 50.0 + i}
            for i, t in enumerate(ids)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), folder / "trials.parquet")
    return folder


def test_trial_ids_never_address_files_outside_the_folder(tmp_path, key_home, capsys, caplog):
    """A trial id ``../../x`` in trials.parquet is skipped with a message; nothing outside the folder is read."""
    import json

    from ranksearch.report.data import load_sweep, trial_folder

    folder = foreign_folder(tmp_path / "runs", "", ["a1b2c3d4", "../../outside"])
    # what the crafted id points at: tune/../../outside/result.json == tmp_path/outside/result.json
    secret = tmp_path / "runs" / "outside"
    secret.mkdir()
    (secret / "result.json").write_text(json.dumps({"val/hm": 31337.5}) + "\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "result.json").write_text(json.dumps({"val/hm": 31337.5}) + "\n")
    # a trial folder that is a link out of the sweep folder is not followed either
    (folder / "trials").mkdir()
    (folder / "trials" / "a1b2c3d4").symlink_to(tmp_path / "outside")

    data = load_sweep(folder)
    assert list(data.trials["trial_id"]) == ["a1b2c3d4"]
    assert data.history.empty or 31337.5 not in set(data.history.get("val/hm", []))
    assert trial_folder(folder, "../../outside") is None and trial_folder(folder, "a1b2c3d4") is None

    code, text = cli(["status", str(folder), "--json"], capsys, caplog)
    assert code == 0, text
    assert "skipped 1 trial(s) whose id is not a plain name (e.g. '../../outside')" in text, text
    assert "31337" not in text
    REFUSED.append("trial id ../../outside")
    code, text = cli(["best", str(folder), "--trial", "../../outside"], capsys, caplog)
    assert code != 0 and "no trial" in text.lower(), text


class _Listener:
    """A TCP port that counts connections: stands for the server a crafted sweep.json names."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.mark.slow  # ~7 s: two report builds
def test_a_folders_tracking_uri_is_contacted_only_when_signed_or_confirmed(
    tmp_path, key_home, capsys, caplog, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    server = _Listener()
    try:
        uri = f"http://127.0.0.1:{server.port}"
        folder = foreign_folder(tmp_path / "runs", uri, ["a1b2c3d4"])
        code, text = cli(
            ["report", str(folder), "--out", str(tmp_path / "r.html"), "--quiet"], capsys, caplog
        )
        assert code == 0, text
        assert f"its MLflow store {uri} is not contacted; pass --tracking-uri {uri} to use it" in text, text
        code, text = cli(["best", str(folder), "--register", "m"], capsys, caplog)
        assert code == 2 and "was not created by you" in text, text
        code, text = cli(["ui", str(folder), "--port", "0"], capsys, caplog)
        assert code == 2 and f"--tracking-uri {uri}" in text, text
        assert server.hits == 0
        REFUSED.append("tracking URI")
        # the user confirms it: now it is used (the listener is no MLflow server, so logging fails politely)
        code, text = cli(
            ["report", str(folder), "--out", str(tmp_path / "r.html"), "--tracking-uri", uri], capsys, caplog
        )
        assert code == 0 and "report not logged to MLflow" in text, text
        assert server.hits >= 1
    finally:
        server.close()


@pytest.mark.reliability
def test_real_sweep_folder_tampered_is_refused_until_trusted(tmp_path):
    """End to end on a real (synthetic-runner) sweep: its own state resumes; a crafted tuner.pkl is refused and
    its payload not run; ``--trust-state`` is what would let it run (so the check is what stops it)."""
    import json
    import subprocess
    import sys
    import tempfile

    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "params": {"adapter.r": [1, 2]},
                "objective": {"metric": "val/hm", "mode": "max"},
                "trials": 2,
                "concurrency": 2,
                "early_stopping": {"type": "none"},
            }  # fmt: skip
        )
    )
    code = (
        "import sys\nfrom pathlib import Path\nfrom ranksearch.errors import RanksearchError\n"
        "from ranksearch.sweep.tuner import run_sweep\n"
        "try:\n    r = run_sweep(sys.argv[1], gpus=0, name='t', storage=Path(sys.argv[2]), resume=sys.argv[3] == '1',"
        " runner='synthetic', runner_options={'seconds_per_eval': 0.1}, live=False, trust_state=sys.argv[4] == '1',"
        " ray_init={'num_cpus': 2, '_temp_dir': sys.argv[5]})\n"
        "except RanksearchError as e:\n    print('ERROR ' + str(e)); sys.exit(2)\nprint('ROWS', len(r.rows))\n"
    )

    def run(resume: bool, trust: bool = False) -> subprocess.CompletedProcess:
        ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        args = [
            sys.executable,
            "-c",
            code,
            str(space),
            str(tmp_path / "runs"),
            str(int(resume)),
            str(int(trust)),
            ray_tmp,
        ]
        return subprocess.run(args, capture_output=True, text=True, timeout=400)

    first = run(resume=False)
    assert first.returncode == 0 and "ROWS 2" in first.stdout, first.stdout[-2000:] + first.stderr[-2000:]
    folder = tmp_path / "runs" / "t"
    signed = json.loads((folder / "signatures.json").read_text())["files"]
    assert {"sweep.json", "tune/tuner.pkl"} <= set(signed) and any("experiment_state" in k for k in signed)
    again = run(resume=True)  # the sweep's own state: accepted
    assert again.returncode == 0 and "ROWS 2" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]

    marker = tmp_path / "pwned"
    (folder / "tune" / "tuner.pkl").write_bytes(crafted_pickle(marker))
    refused = run(resume=True)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "tune/tuner.pkl changed after your sweep signed it" in refused.stdout
    assert not marker.exists()
    trusted = run(resume=True, trust=True)  # the user vouches for the folder: Ray unpickles it, payload runs
    assert marker.exists(), trusted.stdout[-2000:] + trusted.stderr[-2000:]
    REFUSED.append("real tuner.pkl")


def test_zz_record_the_figures():
    record(
        "crafted_state", count=f"{len(REFUSED)} crafted files, ids, URIs", trials=0, completed=0,
        failed_recorded=f"{len(REFUSED)} refused (exit 2 or skipped with a message), 0 payloads run",
        duplicates=0, lost_points=0, tracebacks=0, seconds="–",
    )  # fmt: skip
