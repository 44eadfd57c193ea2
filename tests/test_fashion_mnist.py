"""Fashion-MNIST: idx parsing on hand-written files, the task on a fake folder, and the real Debian package."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ranksearch.config.schema import DataConfig
from ranksearch.data import build_task
from ranksearch.data.fashion_mnist import DEFAULT_DIR, FILES, classnames, read_idx
from ranksearch.errors import DataError


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file by hand: 0, 0, dtype 0x08 (ubyte), ndim, then big-endian int32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", n) for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSEARCH_CACHE", str(tmp_path / "cache"))


def test_read_idx_exact_values(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "img.gz", images)
    _write_idx(tmp_path / "lab.gz", np.array([7, 0, 255], dtype=np.uint8))
    with gzip.open(tmp_path / "img.gz") as f:
        assert len(f.read()) == 16 + images.size  # the 16-byte image header
    got = read_idx(tmp_path / "img.gz")
    assert got.shape == (2, 3, 4) and got.dtype == np.uint8 and np.array_equal(got, images)
    assert read_idx(tmp_path / "lab.gz").tolist() == [7, 0, 255]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">i", 5) + b"\x00\x01")
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "short.gz")


def _fake_package(folder: Path, per_class_train: int = 8, per_class_test: int = 3) -> np.ndarray:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(10), per_class_train)
    train = rng.integers(0, 256, (train_labels.size, 28, 28), dtype=np.uint8)
    test_labels = np.repeat(np.arange(10), per_class_test)
    _write_idx(folder / FILES["train"][0], train)
    _write_idx(folder / FILES["train"][1], train_labels)
    _write_idx(folder / FILES["test"][0], rng.integers(0, 256, (test_labels.size, 28, 28), dtype=np.uint8))
    _write_idx(folder / FILES["test"][1], test_labels)
    return train


def test_task_on_fake_folder(tmp_path: Path) -> None:
    train_pixels = _fake_package(tmp_path / "fm")
    cfg = DataConfig(task="fashion-mnist", root=str(tmp_path / "fm"), protocol="fewshot", shots=3)
    task = build_task(cfg, 28)
    assert (
        task.classnames == classnames()
        and task.classnames[0] == "t-shirt"
        and task.classnames[-1] == "ankle boot"
    )
    assert Counter(task.train.labels.tolist()) == dict.fromkeys(range(10), 3)
    assert Counter(task.val.labels.tolist()) == dict.fromkeys(range(10), 3)  # min(3, 4), from train
    assert len(task.test) == 30
    # At 28 px nothing is resampled: every training image is one of the train file's, grey in all 3 channels.
    img = task.train.images[0]
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])
    assert any(np.array_equal(img[0].numpy(), p) for p in train_pixels)
    as_set = {img[0].numpy().tobytes() for img in task.train.images}
    assert not as_set & {img[0].numpy().tobytes() for img in task.val.images}  # disjoint
    again = build_task(cfg, 28)
    assert torch.equal(again.train.images, task.train.images)
    other = build_task(cfg.model_copy(update={"split_seed": 2}), 28)
    assert not torch.equal(other.train.images, task.train.images)


def test_missing_package_names_apt_command(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        build_task(DataConfig(task="fashion-mnist", root=str(tmp_path / "nowhere")), 32)


@pytest.mark.skipif(
    not (DEFAULT_DIR / FILES["train"][0]).exists(),
    reason=f"Debian package dataset-fashion-mnist not installed ({DEFAULT_DIR} missing): "
    "apt-get install -y dataset-fashion-mnist",
)
def test_real_package() -> None:
    cfg = DataConfig(task="fashion-mnist", protocol="base2new", shots=4, max_test_per_class=5)
    task = build_task(cfg, 32)
    assert len(task.classnames) == 10 and task.base_classes == [0, 1, 2, 3, 4]
    # validation rule: 2 of the 5 base classes are pseudo-new, held out of training
    assert len(task.val_new_classes) == 2 and set(task.val_new_classes) < set(range(5))
    assert task.train.images.shape == (12, 3, 32, 32) and task.train.images.dtype == torch.uint8
    assert Counter(task.train.labels.tolist()) == dict.fromkeys(task.train_classes, 4)
    assert Counter(task.val.labels.tolist()) == dict.fromkeys(range(5), 4)
    assert task.test.images.shape == (50, 3, 32, 32) and Counter(task.test.labels.tolist()) == dict.fromkeys(
        range(10), 5
    )
