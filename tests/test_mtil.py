"""The CoDyRA benchmark pieces: CIFAR-100 and MNIST loaders on fabricated standard files, prepare-data for both,
MTIL / X-TAIL metrics on hand-computed examples, and a continual trial over the real loaders."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ranksearch.config.schema import DataConfig
from ranksearch.continual import continual_metrics, joint_accuracy
from ranksearch.data import MTIL_SEQUENCE, build_task
from ranksearch.data.cifar import load_cifar100, safe_load_pickle
from ranksearch.data.mnist import load_mnist
from ranksearch.errors import DataError

CIFAR_NAMES = ["apple", "aquarium_fish", "baby", "bear"]


def _write_cifar(folder: Path, n_train: int = 6, n_test: int = 3, seed: int = 0) -> dict:
    """CIFAR-100's python files: pickled dicts with bytes keys and a uint8 (N, 3072) array, as the archive has."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for part, per in (("train", n_train), ("test", n_test)):
        labels = [y for y in range(len(CIFAR_NAMES)) for _ in range(per)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        doc = {b"batch_label": f"{part} batch".encode(), b"fine_labels": labels, b"coarse_labels": labels,
               b"data": data, b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}  # fmt: skip
        (folder / part).write_bytes(pickle.dumps(doc, protocol=2))
        out[part] = (data, labels)
    meta = {b"fine_label_names": [n.encode() for n in CIFAR_NAMES], b"coarse_label_names": [b"x"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def _idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def _write_mnist(folder: Path, gz: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for part, stem, per in (("train", "train", 5), ("test", "t10k", 2)):
        labels = np.repeat(np.arange(10), per).astype(np.uint8)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        _idx(folder / f"{stem}-images-idx3-ubyte", images, gz)
        _idx(folder / f"{stem}-labels-idx1-ubyte", labels, gz)
        out[part] = (images, labels)
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSEARCH_CACHE", str(tmp_path / "cache"))


def test_cifar100_loader_reads_the_python_batches(tmp_path):
    written = _write_cifar(tmp_path / "cifar100" / "cifar-100-python")
    images, labels, names = load_cifar100(tmp_path)
    assert names == ["apple", "aquarium fish", "baby", "bear"]
    data, y = written["train"]
    assert images["train"].shape == (24, 32, 32, 3) and labels["train"].tolist() == y
    # row layout: 1024 red, then 1024 green, then 1024 blue values of a 32x32 image
    assert images["train"][3, 5, 7].tolist() == [
        data[3, 5 * 32 + 7],
        data[3, 1024 + 5 * 32 + 7],
        data[3, 2048 + 5 * 32 + 7],
    ]
    task = build_task(DataConfig(task="cifar100", root=str(tmp_path), protocol="fewshot", shots=2), 32)
    assert task.classnames == names and task.templates == ["a photo of a {}."]
    assert (
        len(task.train) == 8 and len(task.test) == 12 and len(task.val) == 8
    )  # val drawn from train, disjoint
    assert task.train.originals is not None and task.train.originals[0].shape == (3, 32, 32)


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    bad = tmp_path / "cifar100" / "train"
    _write_cifar(tmp_path / "cifar100")
    bad.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        safe_load_pickle(bad)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(DataError, match="not a CIFAR-100"):
        (tmp_path / "cifar100" / "meta").write_bytes(b"\x80\x02garbage")
        load_cifar100(tmp_path)


@pytest.mark.parametrize("layout, gz", [("mnist", False), ("mnist/MNIST/raw", True)])
def test_mnist_loader_reads_idx_files(tmp_path, layout, gz):
    written = _write_mnist(tmp_path / layout, gz=gz)
    images, labels = load_mnist(tmp_path)
    assert (
        np.array_equal(images["test"], written["test"][0])
        and labels["train"].tolist() == written["train"][1].tolist()
    )
    task = build_task(
        DataConfig(task="mnist", root=str(tmp_path), protocol="fewshot", shots=2, template="coop"), 32
    )
    assert task.classnames == [str(d) for d in range(10)]
    assert task.templates == ['a photo of the number: "{}".']
    assert task.train.images.shape == (20, 3, 32, 32) and task.train.originals[0].shape == (3, 28, 28)


def test_missing_data_names_prepare_data(tmp_path):
    for task in ("cifar100", "mnist"):
        with pytest.raises(DataError, match=f"prepare-data {task}"):
            build_task(DataConfig(task=task, root=str(tmp_path), protocol="fewshot", shots=1), 32)


def test_prepare_data_arranges_torchvision_downloads(tmp_path, monkeypatch):
    from ranksearch.data import prepare

    def fake_download(name: str, download_root: Path, progress: bool) -> Path:
        if name == "cifar100":
            _write_cifar(download_root / "cifar-100-python")
            return download_root / "cifar-100-python"
        _write_mnist(download_root / "MNIST" / "raw")
        return download_root / "MNIST" / "raw"

    monkeypatch.setattr(prepare, "DOWNLOADER", fake_download)
    root = tmp_path / "DATA"
    assert prepare.prepare_dataset("cifar100", root, progress=False) == root / "cifar100"
    assert prepare.prepare_dataset("mnist", root, progress=False) == root / "mnist"
    assert (root / "cifar100" / "meta").is_file() and (root / "mnist" / "t10k-images-idx3-ubyte").is_file()
    monkeypatch.setattr(prepare, "DOWNLOADER", lambda *a: pytest.fail("already prepared: no download"))
    assert prepare.prepare_dataset("mnist", root, progress=False) == root / "mnist"


def test_mtil_order():
    assert MTIL_SEQUENCE == (
        "fgvc_aircraft", "caltech101", "cifar100", "dtd", "eurosat", "oxford_flowers",
        "food101", "mnist", "oxford_pets", "stanford_cars", "sun397",
    )  # fmt: skip


def test_mtil_metrics_on_a_hand_computed_matrix():
    """A[t, j] after task t on task j. Transfer averages the strict upper triangle column by column (CoDyRA main.py:
    np.triu(A, 1), mean over each column's nonzero entries, then over columns)."""
    a = [[80.0, 30.0, 20.0], [70.0, 90.0, 40.0], [60.0, 85.0, 95.0]]
    m = continual_metrics(a)
    assert m["transfer"] == pytest.approx((30.0 + (20.0 + 40.0) / 2) / 2)  # 30 and 30 -> 30
    assert m["average"] == pytest.approx(((80 + 70 + 60) / 3 + (30 + 90 + 85) / 3 + (20 + 40 + 95) / 3) / 3)
    assert m["last"] == pytest.approx((60 + 85 + 95) / 3)
    # the code's own formula, on the same matrix
    upper = np.ma.masked_equal(np.triu(np.array(a), k=1), 0)
    assert m["transfer"] == pytest.approx(float(np.mean(np.mean(upper, axis=0))))


def test_xtail_joint_accuracy_by_hand():
    """Two tasks: A has classes {a0, a1}, B has {b0, b1, b2}; the joint table is [a0, a1, b0, b1, b2]."""
    joint = torch.eye(5)  # one direction per class
    feats = torch.tensor(
        [[0.0, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0.9, 0, 0, 0.1, 0], [0, 0, 0, 1, 0]]
    )  # 4 B images
    labels = torch.tensor([0, 2, 1, 1])  # within B: b0, b2, b1, b1
    # image 0 -> b0 right; image 1 -> b2 right; image 2 -> a0 (another task's class) wrong; image 3 -> b1 right
    assert joint_accuracy(feats, labels, joint, offset=2) == pytest.approx(75.0)
    # per task (MTIL) the same images, scored among B's classes only, get image 2 right as well (b1 > b0, b2)
    from ranksearch.training.evaluate import subset_accuracy

    assert subset_accuracy(feats, labels, joint[2:], [0, 1, 2]) == pytest.approx(100.0)


def test_continual_trial_over_the_real_loaders(tmp_path):
    """search_spaces/codyra.yaml's shape on fabricated files: the codyra preset, two MTIL datasets, both label
    spaces reported."""
    from ranksearch.config import validate_trial_config
    from ranksearch.trial import run_trial

    _write_cifar(tmp_path / "DATA" / "cifar100")
    _write_mnist(tmp_path / "DATA" / "mnist")
    config = validate_trial_config(
        {
            "preset": "codyra",
            "model": {"pretrained": None},
            "data": {
                "task": "cifar100",
                "root": str(tmp_path / "DATA"),
                "protocol": "continual",
                "sequence": ["cifar100", "mnist"],
                "shots": 2,
                "max_test_per_class": 2,
            },  # fmt: skip
            "adapter": {"r": 2},
            "train": {"iterations": 4, "batch_size": 8},
            "tracking": {"enabled": False},
        }
    )
    assert config.train.loss == "symmetric" and config.train.crop_scale == (0.9, 1.0)
    result = run_trial(config, output_dir=tmp_path / "out", progress=False)
    saved = json.loads((tmp_path / "out" / "accuracy_matrix.json").read_text())
    assert saved["tasks"] == ["cifar100", "mnist"] and np.array(saved["A_xtail"]).shape == (2, 2)
    for space, matrix in (("cl", saved["A"]), ("cl/xtail", saved["A_xtail"])):
        for k, v in continual_metrics(matrix).items():
            assert result.metrics[f"{space}/{k}"] == pytest.approx(v)
    # X-TAIL can only be harder: the joint table holds every class of the per-task one
    assert all(
        x <= a + 1e-9
        for ra, rx in zip(saved["A"], saved["A_xtail"], strict=True)
        for a, x in zip(ra, rx, strict=True)
    )
    assert "val/seen_acc" in result.metrics and len(result.history) == 2
