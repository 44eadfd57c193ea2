"""CoOp-layout loaders, few-shot sampler, base/new split and tensor cache, on a tiny fabricated ``$DATA``."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ranksearch.config.schema import DataConfig
from ranksearch.data import build_task, known_tasks
from ranksearch.data.coop import load_coop_splits, load_imagenet, load_split_zhou
from ranksearch.data.fewshot import cocoop_base_classes, fewshot_sample, fewshot_split_path
from ranksearch.data.imagefolder import load_imagefolder
from ranksearch.errors import DataError

SIZE = 16
PETS = ["abyssinian", "great_pyrenees", "pug", "siamese"]
WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
_rng = np.random.default_rng(0)


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Non-square, so the resize + centre crop path is exercised.
    Image.fromarray(_rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(path)


def _classnames_txt(path: Path, names: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in names.items()))


def _make_pets(root: Path, n_classes: int = 4) -> None:
    base = root / "oxford_pets"
    doc: dict[str, list] = {"train": [], "val": [], "test": []}
    for y, cname in enumerate(PETS[:n_classes]):
        for i in range(9):
            rel = f"{cname}_{i}.png"
            _png(base / "images" / rel)
            role = "train" if i < 5 else "val" if i < 7 else "test"
            doc[role].append([rel, y, cname])
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(doc))


def _make_imagenet(root: Path, coop_layout: bool) -> None:
    base = root / "imagenet"
    images = base / "images" if coop_layout else base
    for w in WNIDS:
        for i in range(6):
            _png(images / "train" / w / f"{w}_{i}.JPEG")
        for i in range(2):
            _png(images / "val" / w / f"val_{w}_{i}.JPEG")
    _classnames_txt(base / "classnames.txt", WNIDS)


def _make_aircraft(root: Path) -> None:
    base = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    (base).mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for split, per in (("train", 3), ("val", 2), ("test", 2)):
        lines = []
        for v in variants:
            for _ in range(per):
                n += 1
                _png(base / "images" / f"{n:07d}.jpg")
                lines.append(f"{n:07d} {v}")
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")


def _make_variants(root: Path) -> None:
    for w in WNIDS:  # ImageNet-Sketch: all classes
        for i in range(2):
            _png(root / "imagenet-sketch" / "images" / w / f"s{i}.png")
    _classnames_txt(root / "imagenet-sketch" / "classnames.txt", WNIDS)
    for w in ("n01443537", "n01484850"):  # ImageNet-R style: a class subset
        for i in range(2):
            _png(root / "imagenet-rendition" / "imagenet-r" / w / f"r{i}.png")
    _classnames_txt(root / "imagenet-rendition" / "classnames.txt", WNIDS)
    for label in ("0", "2"):  # ImageNet-V2: folders named by class index
        _png(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / label / "v.jpeg")
    _classnames_txt(root / "imagenetv2" / "classnames.txt", WNIDS)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("DATA")
    _make_pets(root)
    _make_imagenet(root, coop_layout=True)
    _make_aircraft(root)
    _make_variants(root)
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RANKSEARCH_CACHE", str(cache))
    return cache


def _cfg(root: Path, task: str, **kw: object) -> DataConfig:
    return DataConfig(task=task, root=str(root), **{"protocol": "fewshot", "shots": 2, **kw})


def test_split_zhou_task_fewshot(data_root: Path) -> None:
    task = build_task(_cfg(data_root, "oxford_pets"), SIZE)
    assert task.classnames == ["abyssinian", "great pyrenees", "pug", "siamese"]  # "_" -> " " as CoOp prompts
    assert task.templates == ["a photo of a {}."]  # CLIP-LoRA's generic default
    assert task.base_classes is None
    assert task.train.images.shape == (8, 3, SIZE, SIZE) and task.train.images.dtype == torch.uint8
    assert Counter(task.train.labels.tolist()) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert Counter(task.val.labels.tolist()) == {0: 2, 1: 2, 2: 2, 3: 2}  # min(K, 4) from the val split
    assert len(task.test) == 8  # the full test split
    coop = build_task(_cfg(data_root, "oxford_pets", template="coop"), SIZE)
    assert coop.templates == ["a photo of a {}, a type of pet."]


def test_fewshot_sampler_seeds_and_split_file(data_root: Path, _cache: Path) -> None:
    splits = load_split_zhou("oxford_pets", data_root)
    cache = _cache / "data"
    a_train, a_val = fewshot_sample(splits, 3, seed=1, cache_dir=cache)
    path = fewshot_split_path(splits, 3, 1, 3, cache)
    assert path.name == "shot_3-seed_1.json" and path.exists()
    assert [it.path for it in fewshot_sample(splits, 3, seed=1, cache_dir=cache)[0]] == [
        it.path for it in a_train
    ]
    assert [it.path for it in fewshot_sample(splits, 3, seed=1, cache_dir=None)[0]] == [
        it.path for it in a_train
    ]
    b_train, _ = fewshot_sample(splits, 3, seed=2, cache_dir=cache)
    assert {it.path for it in b_train} != {it.path for it in a_train}
    assert Counter(it.label for it in a_train) == {0: 3, 1: 3, 2: 3, 3: 3}
    assert Counter(it.label for it in a_val) == {0: 2, 1: 2, 2: 2, 3: 2}  # only 2 val images per class exist
    train_paths = {it.path for it in splits.train}
    assert {it.path for it in a_train} <= train_paths and not {it.path for it in a_val} & train_paths
    many, _ = fewshot_sample(splits, 8, seed=1, cache_dir=None)
    # fewer than K (5 train images a class): all of them, repeated up to K (Dassl's repeat=True)
    assert Counter(it.label for it in many) == {0: 8, 1: 8, 2: 8, 3: 8}
    assert {it.path for it in many} == train_paths
    doc = json.loads(path.read_text())
    assert doc["train"] == [[it.path, it.label] for it in a_train]


def test_val_drawn_from_train_is_disjoint(tmp_path: Path) -> None:
    _make_imagenet(tmp_path, coop_layout=False)
    splits = load_imagenet(tmp_path)
    for k in (1, 3, 5):
        train, val = fewshot_sample(splits, k, seed=1, cache_dir=None)
        assert Counter(it.label for it in train) == {0: k, 1: k, 2: k}
        assert Counter(it.label for it in val) == {y: min(min(k, 4), 6 - k) for y in range(3)}
        assert not {it.path for it in train} & {it.path for it in val}


def test_cocoop_base_new_rule(data_root: Path, tmp_path: Path) -> None:
    assert cocoop_base_classes([3, 1, 0, 2, 4, 4]) == [0, 1, 2]  # sorted, first ceil(5/2)
    assert cocoop_base_classes(range(4)) == [0, 1]
    task = build_task(_cfg(data_root, "oxford_pets", protocol="base2new"), SIZE)
    assert task.base_classes == [0, 1] and task.new_classes == [2, 3]
    # validation rule: of 2 base classes one is pseudo-new (held out of training); val holds base classes only
    assert len(task.val_new_classes) == 1 and set(task.val_new_classes) < {0, 1}
    assert set(task.train.labels.tolist()) == {0, 1} - set(task.val_new_classes)
    assert set(task.val.labels.tolist()) == {0, 1}
    assert set(task.test.labels.tolist()) == {0, 1, 2, 3}  # labels stay global; no relabelling
    # A dataset may declare its base classes.
    _make_pets(tmp_path)
    (tmp_path / "oxford_pets" / "base_classes.txt").write_text("pug\nabyssinian\n")
    declared = build_task(_cfg(tmp_path, "oxford_pets", protocol="base2new"), SIZE)
    assert declared.base_classes == [0, 2]


def test_tensor_cache_second_load_does_not_decode(
    data_root: Path, _cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_task(_cfg(data_root, "oxford_pets"), SIZE)
    assert list((_cache / "data").glob("oxford_pets-*.pt"))
    calls = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: calls.append(a) or real_open(*a, **k))
    second = build_task(_cfg(data_root, "oxford_pets"), SIZE)
    assert calls == []
    assert torch.equal(first.train.images, second.train.images) and torch.equal(
        first.test.labels, second.test.labels
    )
    build_task(_cfg(data_root, "oxford_pets", split_seed=2), SIZE)  # a new sample decodes its new images
    assert calls


def test_imagenet_both_layouts_agree(tmp_path: Path) -> None:
    _make_imagenet(tmp_path / "coop", coop_layout=True)
    _make_imagenet(tmp_path / "cliplora", coop_layout=False)
    a, b = load_imagenet(tmp_path / "coop"), load_imagenet(tmp_path / "cliplora")
    assert a.classnames == b.classnames == ["tench", "goldfish", "great white shark"]
    assert [(it.path, it.label) for it in a.test] == [(it.path, it.label) for it in b.test]
    assert a.val is None and len(a.test) == 6
    task = build_task(_cfg(tmp_path / "cliplora", "imagenet", shots=1), SIZE)
    assert len(task.train) == 3 and len(task.val) == 3 and len(task.test) == 6


def test_fgvc_aircraft_split_files(data_root: Path) -> None:
    splits = load_coop_splits("fgvc_aircraft", data_root)
    assert splits.classnames == ["707-320", "A300B4", "Cessna 172"]
    assert (len(splits.train), len(splits.val or []), len(splits.test)) == (9, 6, 6)
    task = build_task(_cfg(data_root, "fgvc_aircraft", template="coop"), SIZE)
    assert task.templates == ["a photo of a {}, a type of aircraft."] and len(task.train) == 6


def test_imagenet_variants_and_class_subset(data_root: Path) -> None:
    sketch = load_coop_splits("imagenet_sketch", data_root)
    assert sketch.classnames == list(WNIDS.values()) and len(sketch.test) == 6 and sketch.train == []
    r = load_coop_splits("imagenet_r", data_root)
    assert r.classnames == ["goldfish", "great white shark"]
    assert r.imagenet_indices == [1, 2]  # label c of ImageNet-R is ImageNet class imagenet_indices[c]
    assert sorted({it.label for it in r.test}) == [0, 1]
    v2 = load_coop_splits("imagenetv2", data_root)
    assert v2.classnames == ["tench", "great white shark"] and v2.imagenet_indices == [0, 2]
    task = build_task(
        _cfg(data_root, "imagenet", shots=1, eval_tasks=["imagenet_sketch", "imagenet_r"]), SIZE
    )
    names, split = task.extra_tests["imagenet_r"]
    assert names == ["goldfish", "great white shark"] and split.images.shape == (4, 3, SIZE, SIZE)
    with pytest.raises(DataError, match="test-only"):
        build_task(_cfg(data_root, "imagenet_sketch"), SIZE)


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "eurosat" / "split_zhou_EuroSAT.json")):
        build_task(_cfg(tmp_path, "eurosat"), SIZE)
    _make_imagenet(tmp_path, coop_layout=True)
    (tmp_path / "imagenet" / "classnames.txt").unlink()
    with pytest.raises(DataError, match="classnames.txt"):
        build_task(_cfg(tmp_path, "imagenet"), SIZE)
    _make_pets(tmp_path)
    gone = tmp_path / "oxford_pets" / "images" / "pug_7.png"  # a test image
    gone.unlink()
    with pytest.raises(DataError, match=str(gone)):
        build_task(_cfg(tmp_path, "oxford_pets"), SIZE)
    with pytest.raises(DataError, match="data.root"):
        build_task(DataConfig(task="dtd", root=None), SIZE)


def test_unknown_task_lists_known_ones() -> None:
    assert {
        "fashion-mnist",
        "imagefolder",
        "imagenet",
        "caltech101",
        "fgvc_aircraft",
        "imagenet_sketch",
    } <= set(known_tasks())
    with pytest.raises(DataError, match="known: .*oxford_pets"):
        build_task(DataConfig(task="cifar-1000"), SIZE)


def test_imagefolder_both_layouts(tmp_path: Path) -> None:
    for split, n in (("train", 4), ("test", 2)):
        for c in ("cat", "red_fox"):
            for i in range(n):
                _png(tmp_path / "split" / split / c / f"{i}.png")
    task = build_task(_cfg(tmp_path / "split", "imagefolder"), SIZE)
    assert (
        task.classnames == ["cat", "red fox"]
        and len(task.train) == 4
        and len(task.val) == 4
        and len(task.test) == 4
    )
    train, val = fewshot_sample(load_imagefolder(tmp_path / "split"), 2, seed=1, cache_dir=None)
    assert not {it.path for it in train} & {it.path for it in val}  # no val/: val comes from train/, disjoint
    for c in ("a", "b", "c"):
        for i in range(10):
            _png(tmp_path / "flat" / c / f"{i}.png")
    s1, s2 = load_imagefolder(tmp_path / "flat", seed=1), load_imagefolder(tmp_path / "flat", seed=2)
    assert (len(s1.train), len(s1.val or []), len(s1.test)) == (15, 6, 9)  # 50/20/30 per class
    assert {it.path for it in s1.train} != {it.path for it in s2.train}
    assert not {it.path for it in s1.train} & {it.path for it in s1.test}


def test_prepare_with_fake_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ranksearch.data import prepare

    def fake_download(name: str, download_root: Path, progress: bool) -> Path:
        raw = download_root / "eurosat"
        for c in ("AnnualCrop", "Forest", "SeaLake"):
            for i in range(10):
                _png(raw / "2750" / c / f"{c}_{i}.jpg")
        return raw

    monkeypatch.setattr(prepare, "DOWNLOADER", fake_download)
    dest = prepare.prepare_dataset("eurosat", tmp_path / "DATA", progress=False)
    assert dest == tmp_path / "DATA" / "eurosat" and (dest / "NOT_OFFICIAL_SPLIT").exists()
    splits = load_coop_splits("eurosat", tmp_path / "DATA")
    assert splits.classnames == ["Annual Crop Land", "Forest", "Sea or Lake"]  # CoOp's renames
    assert (len(splits.train), len(splits.val or []), len(splits.test)) == (15, 6, 9)
    assert prepare.verify_layout("eurosat", tmp_path / "DATA") == []
    monkeypatch.setattr(prepare, "DOWNLOADER", lambda *a: pytest.fail("already prepared: no download"))
    assert prepare.prepare_dataset("eurosat", tmp_path / "DATA", progress=False) == dest
    with pytest.raises(DataError, match="licence"):
        prepare.prepare_dataset("imagenet", tmp_path / "DATA", progress=False)


def test_short_trial_on_the_fabricated_data_tree(data_root: Path, tmp_path: Path) -> None:
    """The real loaders feed the real trial runner: base-to-new on a CoOp-layout dataset, cross-dataset eval."""
    from ranksearch.config import validate_trial_config
    from ranksearch.trial import run_trial

    config = validate_trial_config(
        {
            "model": {"pretrained": None},
            "data": {"task": "oxford_pets", "root": str(data_root), "protocol": "base2new", "shots": 2},
            "train": {"iterations": 4, "batch_size": 4},
            "eval": {"evals": 1},
            "tracking": {"enabled": False},
        }
    )
    result = run_trial(config, output_dir=tmp_path / "trial", progress=False)
    assert result.status == "completed"
    assert {"test/base", "test/new", "test/hm", "zs/test/hm"} <= set(result.metrics)


def test_shots_above_a_class_size_repeat_with_a_warning(
    data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    splits = load_split_zhou("oxford_pets", data_root)
    with caplog.at_level("WARNING", logger="ranksearch.data.fewshot"):
        train, val = fewshot_sample(splits, 16, seed=1, cache_dir=None)
    assert (
        "data.shots=16: 4 class(es) of oxford_pets have fewer training images: abyssinian (5)" in caplog.text
    )
    assert Counter(it.label for it in train) == dict.fromkeys(range(4), 16)
    assert Counter(it.label for it in val) == dict.fromkeys(range(4), 2)  # CoOp: min(K, 4), never repeated
    assert len({it.path for it in val}) == len(val)
    caplog.clear()
    with caplog.at_level("WARNING", logger="ranksearch.data.fewshot"):
        fewshot_sample(splits, 5, seed=1, cache_dir=None)
    assert "fewer training images" not in caplog.text


def test_val_from_train_when_a_class_has_no_more_than_k(tmp_path: Path) -> None:
    _make_imagenet(tmp_path, coop_layout=False)  # 6 train images a class
    train, val = fewshot_sample(load_imagenet(tmp_path), 8, seed=1, cache_dir=None)
    assert Counter(it.label for it in train) == {0: 8, 1: 8, 2: 8}  # all 6, repeated up to 8
    assert val == []  # nothing left for validation: no image is both


SAMPLE = """
import json, sys
from pathlib import Path
from ranksearch.data.coop import load_split_zhou
from ranksearch.data.fewshot import fewshot_sample
splits = load_split_zhou("oxford_pets", Path(sys.argv[1]))
out = []
for shots in (2, 8):  # 8: the repetition path too
    train, val = fewshot_sample(splits, shots, seed=3, cache_dir=None)
    out.append([[it.path for it in train], [it.path for it in val]])
print(json.dumps(out))
"""


def test_same_seed_same_files_across_processes_and_copies(data_root: Path, tmp_path: Path) -> None:
    """Same seed -> same files in every trial and on every machine: other hash seeds, another copy of $DATA."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "elsewhere"
    shutil.copytree(data_root / "oxford_pets", copy / "oxford_pets")
    outs = set()
    for root, hash_seed in ((data_root, "0"), (copy, "1"), (data_root, "4242")):
        run = subprocess.run(
            [sys.executable, "-c", SAMPLE, str(root)],
            env={**os.environ, "PYTHONHASHSEED": hash_seed}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        outs.add(run.stdout.strip())
    assert len(outs) == 1  # one answer, whatever the process or the copy
    here = [
        [[it.path for it in part] for part in fewshot_sample(load_split_zhou("oxford_pets", copy), k, 3)]
        for k in (2, 8)
    ]
    assert json.loads(outs.pop()) == here


def test_class_names_one_spelling_per_label(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The first entry's case does not rename a class; Oxford Pets is lower-cased as CoOp does; others keep case."""
    from ranksearch.data.coop import read_split_zhou

    doc = {
        "train": [
            ["a1.png", 0, "ABYSSINIAN"],
            ["a2.png", 0, "abyssinian"],
            ["b1.png", 1, "Annual_Crop_Land"],
        ],
        "val": [["a3.png", 0, "abyssinian"], ["b2.png", 1, "Annual_Crop_Land"]],
        "test": [["a4.png", 0, "abyssinian"], ["b3.png", 1, "Annual_Crop_Land"]],
    }
    path = tmp_path / "split.json"
    path.write_text(json.dumps(doc))
    with caplog.at_level("WARNING", logger="ranksearch.data.coop"):
        assert read_split_zhou(path)[3] == ["abyssinian", "Annual Crop Land"]
    assert "several class names" not in caplog.text  # a case difference is not a different name
    doc["test"][0][2] = "cat"
    path.write_text(json.dumps(doc))
    with caplog.at_level("WARNING", logger="ranksearch.data.coop"):
        assert read_split_zhou(path)[3][0] == "abyssinian"
    assert "label 0 has several class names ['ABYSSINIAN', 'abyssinian', 'cat']" in caplog.text
    assert read_split_zhou(path, lower=True)[3] == ["abyssinian", "annual crop land"]
    _make_pets(tmp_path)
    split = tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"
    pets = json.loads(split.read_text())
    pets["train"] = [[p, y, c.title()] for p, y, c in pets["train"]]  # "Great_Pyrenees" in train only
    split.write_text(json.dumps(pets))
    assert load_split_zhou("oxford_pets", tmp_path).classnames == [
        "abyssinian",
        "great pyrenees",
        "pug",
        "siamese",
    ]


def test_one_shot_scoring_sample_and_likelihood_on_the_coop_layout(tmp_path: Path) -> None:
    """One-shot scoring (``search.score_images``, ``search.score: likelihood``) on CoOp-layout data: the
    stratified sample keeps every image with its own label, one per class here, and val/loglik is the
    mean of the two pseudo-split groups' log-likelihoods, each over 2 classes."""
    import dataclasses

    from ranksearch.config import validate_trial_config
    from ranksearch.session import TrialSession
    from ranksearch.training.evaluate import image_features, subset_log_likelihood

    base = tmp_path / "oxford_pets"
    doc: dict[str, list] = {"train": [], "val": [], "test": []}
    for y, cname in enumerate(f"breed_{i}" for i in range(8)):
        for i in range(9):
            rel = f"{cname}_{i}.png"
            _png(base / "images" / rel)
            doc["train" if i < 5 else "val" if i < 7 else "test"].append([rel, y, cname])
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(doc))
    config = validate_trial_config(
        {
            "model": {"pretrained": None},
            "data": {"task": "oxford_pets", "root": str(tmp_path), "protocol": "base2new", "shots": 2,
                     "val_new_fraction": 0.5},
            "train": {"iterations": 1},
            "eval": {"evals": 1},
            "tracking": {"enabled": False},
        }
    )  # fmt: skip
    session = TrialSession(config, 1)
    task = build_task(config.data, session.image_size)
    assert len(task.train_classes) == 2 and len(task.val_new_classes) == 2  # of the 4 base classes
    full = task.val  # 4 base classes x 2 validation images
    sample = full.stratified_sample(4, seed=0)
    assert sorted(sample.labels.tolist()) == sorted(set(full.labels.tolist()))  # one image of each class
    # each kept image still carries its own label (the fabricated images are distinct noise)
    index = [next(i for i in range(len(full)) if torch.equal(full.images[i], x)) for x in sample.images]
    assert len(set(index)) == 4 and torch.equal(sample.labels, full.labels[index])
    small = dataclasses.replace(task, val=sample)
    metrics = session.evaluate(small, "val", likelihood=True)
    text = session.text_features(task.classnames, task.templates)
    feats = image_features(session.model, sample.images, session.device, 256, session.autocast)
    scale = float(session.model.logit_scale.exp().item())  # train.logit_scale unset: the model's own
    groups = [
        subset_log_likelihood(feats, sample.labels, text, c, scale)
        for c in (task.train_classes, task.val_new_classes)
    ]
    assert all(-math.log(2) * 50 < g < 0 for g in groups)  # finite, below certainty
    assert metrics["val/loglik"] == pytest.approx(sum(groups) / 2, rel=1e-6)
    assert set(metrics) == {"val/base", "val/new", "val/hm", "val/loglik"}
