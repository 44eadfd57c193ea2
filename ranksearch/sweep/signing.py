"""Signatures on the sweep folder's pickles: a sweep folder is data, and only our own pickles are ever loaded.

Ray Tune keeps its experiment as pickles (``tune/tuner.pkl``, ``searcher-state-*.pkl``, the cloudpickled
``search_gen_state-*.json``, ``experiment_state-*.json`` whose trials embed cloudpickle blobs, each trial's
``params.pkl``/``error.pkl``), and ``Tuner.restore`` unpickles them: whoever can write a sweep folder can run
code as whoever resumes it. So every such file is signed, when this user's sweep writes it, with an HMAC-SHA256
under a per-user key kept outside the folder (``$XDG_CONFIG_HOME/ranksearch/state.key``, default
``~/.config/ranksearch/state.key``, created 0600), and ``--resume`` verifies all of them before Ray reads one.
The signatures live in ``signatures.json`` in the sweep folder (a MAC is worthless without the key).

Tune writes its state into a staging folder and copies it into ``tune/`` in the background, so a file there
may lag its newest version: each path keeps its last ``KEEP`` MACs, and any of them verifies (all are content
this user's sweep wrote). ``sweep.json`` is signed the same way: a signed manifest marks a folder this user
created, whose tracking URI the read-only commands may contact (``trusted_manifest``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
from pathlib import Path

from ranksearch.errors import RanksearchError

SIGNATURES = "signatures.json"
MANIFEST = "sweep.json"  # as ranksearch.sweep.folder names it (which imports this module, not the reverse)
KEEP = 8  # MACs kept per path: Tune's background copy into tune/ can lag a few state saves behind
# every file under the sweep folder that Ray Tune may unpickle on restore (relative glob patterns)
PICKLED = ("tune/*.pkl", "tune/*.json", "tune/*/*.pkl")
_DOMAIN = b"ranksearch-state-v1\0"
_lock = threading.Lock()


class TrustError(RanksearchError):
    """A sweep folder's state is not verifiably this user's (unsigned, tampered, or another user's key)."""

    exit_code = 2


def key_path() -> Path:
    """Where the per-user signing key lives: ``$XDG_CONFIG_HOME/ranksearch/state.key`` (default ~/.config)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ranksearch" / "state.key"


def load_key(create: bool) -> bytes | None:
    """The signing key; created (0600, in a 0700 folder) when ``create`` and missing, else None if missing.

    Raises:
        TrustError: the key file is not a regular file of this user, or others can read or write it.
    """
    path = key_path()
    if create and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:  # O_EXCL: two drivers starting at once end up with the same key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        raise TrustError(f"signing key {path} is not a regular file owned by you: remove it")
    if st.st_mode & 0o077:
        raise TrustError(f"signing key {path} is readable or writable by others: chmod 600 {path}")
    key = path.read_text().strip().encode()
    if len(key) < 32:
        raise TrustError(f"signing key {path} is too short or empty: remove it (a new one is created)")
    return key


def _mac(key: bytes, rel: str, data: bytes) -> str:
    return hmac.new(key, _DOMAIN + rel.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _read_signatures(folder: Path) -> dict[str, list[str]]:
    try:
        doc = json.loads((folder / SIGNATURES).read_text())
        files = doc["files"]
        if isinstance(files, dict) and all(isinstance(v, list) for v in files.values()):
            return {str(k): [str(m) for m in v] for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def sign(folder: Path, files: dict[str, Path]) -> None:
    """Add MACs for ``files`` ({path relative to the sweep folder: file holding its content}).

    The content may come from elsewhere (Tune's staging folder) than ``folder / rel``, which it becomes.
    """
    key = load_key(create=True)
    assert key is not None
    with _lock:
        sigs = _read_signatures(folder)
        changed = False
        for rel, src in files.items():
            try:
                data = src.read_bytes()
            except OSError:  # removed meanwhile (Tune replaces its state files)
                continue
            mac = _mac(key, rel, data)
            macs = sigs.get(rel, [])
            if mac in macs:
                continue
            sigs[rel] = (macs + [mac])[-KEEP:]
            changed = True
        if changed:
            tmp = folder / (SIGNATURES + ".tmp")
            tmp.write_text(json.dumps({"version": 1, "files": sigs}, indent=1, sort_keys=True))
            os.replace(tmp, folder / SIGNATURES)  # atomic: a killed driver never leaves half of it


def pickled_files(root: Path, prefix: str = "") -> dict[str, Path]:
    """{``tune/...`` relative path: file} of every file Ray may unpickle, under ``root`` (a sweep folder, or
    with ``prefix`` "tune/" Tune's staging folder whose files become ``tune/...``)."""
    found: dict[str, Path] = {}
    for pattern in PICKLED:
        pattern = pattern[len(prefix) :] if prefix and pattern.startswith(prefix) else pattern
        for path in root.glob(pattern):
            if path.is_file() or path.is_symlink():
                found[prefix + path.relative_to(root).as_posix()] = path
    return found


def sign_tune_state(folder: Path) -> None:
    """Sign every pickle now under ``folder/tune`` (call when Tune is not writing: after ``fit``, a new Tuner),
    and ``sweep.json``."""
    sign(folder, {**pickled_files(folder), MANIFEST: folder / MANIFEST})


def verify_tune_state(folder: Path, resume_hint: str) -> None:
    """Refuse (before anything is unpickled) unless every pickle under ``tune/``, and ``sweep.json``, carry
    this user's MAC.

    Raises:
        TrustError: names the first file that is unsigned or changed, and how to proceed if the folder is
            trusted anyway (``resume_hint`` is the command, with ``--trust-state`` appended by the caller).
    """
    files = pickled_files(folder)
    key = load_key(create=False)
    if key is None:
        raise TrustError(
            f"{folder}: no signing key at {key_path()}, so its Ray Tune state (pickles) cannot be verified as "
            f"yours; resume only a folder you trust, with: {resume_hint}"
        )
    sigs = _read_signatures(folder)
    files[MANIFEST] = folder / MANIFEST  # the driver contacts the tracking store it names
    for rel, path in sorted(files.items()):
        if path.is_symlink() or not path.is_file():
            raise TrustError(f"{folder / rel}: a link or not a regular file; refusing to resume this folder")
        if rel not in sigs:
            raise TrustError(
                f"{folder / rel} is not signed by your ranksearch key (a copied, shared or older sweep folder?): "
                f"it would be unpickled by --resume; if you trust it, resume with: {resume_hint}"
            )
        if not any(hmac.compare_digest(_mac(key, rel, path.read_bytes()), m) for m in sigs[rel]):
            raise TrustError(
                f"{folder / rel} changed after your sweep signed it (tampered with, or cut short by a crash): "
                f"refusing to unpickle it; if you trust it, resume with: {resume_hint}"
            )


def sign_manifest(folder: Path) -> None:
    """Mark ``sweep.json`` as written by this user (its tracking URI may then be contacted)."""
    sign(folder, {MANIFEST: folder / MANIFEST})


def trusted_manifest(folder: Path) -> bool:
    """Whether ``sweep.json`` carries this user's MAC (a folder this user's sweep wrote)."""
    try:
        key = load_key(create=False)
        data = (folder / MANIFEST).read_bytes()
    except (OSError, TrustError):
        return False
    if key is None:
        return False
    mac = _mac(key, MANIFEST, data)
    return any(hmac.compare_digest(mac, m) for m in _read_signatures(folder).get(MANIFEST, []))


def sign_staged(
    folder: Path, staging: Path, seen: dict[str, tuple[int, int]], trial_dirs: list[str] | None = None
) -> None:
    """Sign the state files in Tune's staging folder that changed since ``seen`` (updated in place): Tune writes
    them there synchronously, then copies them into ``tune/`` in the background. ``trial_dirs`` limits the
    per-trial files (``params.pkl``, ``error.pkl``) to those trial folders (None: all)."""
    candidates = {
        "tune/" + p.name: p for pattern in ("*.pkl", "*.json") for p in staging.glob(pattern) if p.is_file()
    }
    for d in trial_dirs if trial_dirs is not None else [p.name for p in staging.iterdir() if p.is_dir()]:
        for p in (staging / d).glob("*.pkl"):
            candidates[f"tune/{d}/{p.name}"] = p
    fresh = {}
    for rel, path in candidates.items():
        try:
            st = path.stat()
        except OSError:
            continue
        mark = (st.st_mtime_ns, st.st_size)
        if seen.get(rel) != mark:
            fresh[rel] = path
            seen[rel] = mark
    if fresh:
        sign(folder, fresh)
