"""``ranksearch prepare-data NAME --root DIR``: download a benchmark and arrange it into the CoOp layout.

CIFAR-100 and MNIST (the MTIL sequence's two non-CoOp datasets) come from torchvision too and are kept in their
standard file formats under ``$DATA/cifar100`` and ``$DATA/mnist``.

This is the only code that touches the network for data; training, evaluation and tests never call it.
torchvision downloads DTD, EuroSAT, Flowers102, Food101, FGVC-Aircraft, Oxford-IIIT Pet, SUN397 and
Caltech101; the files are then moved into ``$DATA/<dataset>/`` as CoOp expects. CoOp's ``split_zhou_*.json``
files live on Google Drive and are not fetched: when one is missing, a split is regenerated with CoOp's rule
and a ``NOT_OFFICIAL_SPLIT`` marker is written next to it, because numbers on it are not comparable with
published ones. Stanford Cars (dead URLs), UCF101 mid-frames (CoOp's Drive), ImageNet and its variants
(licence) must be brought by the user; Fashion-MNIST comes from a Debian package.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from ranksearch.data.coop import (
    COOP_DATASETS_MD,
    FGVC_AIRCRAFT,
    IMAGENET,
    IMAGENET_VARIANTS,
    SPLIT_ZHOU,
    _list_dirs,
    _list_images,
    load_coop_splits,
)
from ranksearch.data.fewshot import DatasetSplits, Item, split_by_ratio
from ranksearch.data.resources import classname_table
from ranksearch.errors import DataError

log = logging.getLogger(__name__)

MARKER = "NOT_OFFICIAL_SPLIT"
SPLIT_SEED = 1  # the regenerated splits are fixed: every user who regenerates gets the same split

# name -> (torchvision class, folder the class creates under the download root, entries to move into $DATA/<dataset>)
TORCHVISION: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "dtd": ("DTD", "dtd/dtd", ("images", "labels", "imdb")),
    "eurosat": ("EuroSAT", "eurosat", ("2750",)),
    "oxford_flowers": ("Flowers102", "flowers-102", ("jpg", "imagelabels.mat", "setid.mat")),
    "food101": ("Food101", "food-101", ("images", "meta")),
    "fgvc_aircraft": (
        "FGVCAircraft",
        "fgvc-aircraft-2013b/data",
        (
            "images",
            "variants.txt",
            "images_variant_train.txt",
            "images_variant_val.txt",
            "images_variant_test.txt",
        ),
    ),
    "oxford_pets": ("OxfordIIITPet", "oxford-iiit-pet", ("images", "annotations")),
    "sun397": ("SUN397", "SUN397", ("SUN397",)),
    "caltech101": ("Caltech101", "caltech101", ("101_ObjectCategories",)),
    # the two MTIL datasets that are not CoOp's: their standard files, loaded from memory (cifar.py, mnist.py)
    "cifar100": ("CIFAR100", "cifar-100-python", ("train", "test", "meta")),
    "mnist": (
        "MNIST",
        "MNIST/raw",
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
    ),
}
ARRAY_DATASETS = ("cifar100", "mnist")

MANUAL: dict[str, str] = {
    "stanford_cars": (
        "Stanford Cars' original download URLs are dead. Put cars_train/, cars_test/, devkit/, "
        "cars_test_annos_withlabels.mat and split_zhou_StanfordCars.json under {dest} (see "
        + COOP_DATASETS_MD
        + ")."
    ),
    "ucf101": (
        "UCF101 is used as CoOp's extracted mid-frames. Put UCF-101-midframes/ and split_zhou_UCF101.json "
        "(CoOp's Google Drive, see " + COOP_DATASETS_MD + ") under {dest}."
    ),
    IMAGENET: (
        "ImageNet must be downloaded by you (its licence forbids redistribution): image-net.org. Arrange it as "
        "{dest}/images/{{train,val}}/<wnid>/*.JPEG (CoOp) or {dest}/{{train,val}}/<wnid>/*.JPEG (CLIP-LoRA), "
        "with the val images sorted into wnid folders, and put CoOp's classnames.txt in {dest} "
        "(see " + COOP_DATASETS_MD + ")."
    ),
}
for _variant, (_folder, _images, _) in IMAGENET_VARIANTS.items():
    MANUAL[_variant] = (
        "Download "
        + _variant
        + " from its authors' page and put it as {dest}/"
        + _images
        + "/..., plus CoOp's "
        "classnames.txt in {dest} (see " + COOP_DATASETS_MD + ")."
    )

Downloader = Callable[[str, Path, bool], Path]


def _say(progress: bool, msg: str) -> None:
    log.info(msg)
    if progress:
        print(msg, file=sys.stderr)


def torchvision_download(name: str, download_root: Path, progress: bool = True) -> Path:
    """Download ``name`` with its torchvision dataset class; return the folder holding the raw files."""
    import torchvision.datasets as tvd

    cls_name, sub, _ = TORCHVISION[name]
    _say(progress, f"downloading {name} with torchvision.datasets.{cls_name} into {download_root} ...")
    try:
        getattr(tvd, cls_name)(str(download_root), download=True)
    except Exception as e:  # network errors, checksum errors: one clear message
        raise DataError(f"downloading {name} failed: {e}") from e
    return download_root / sub


# Tests replace this to fabricate a download instead of fetching one.
DOWNLOADER: Downloader = torchvision_download


def dataset_dir(name: str, root: Path) -> Path:
    """``$DATA/<folder>`` of a CoOp task name."""
    if name in SPLIT_ZHOU:
        return Path(root) / SPLIT_ZHOU[name][0]
    if name in IMAGENET_VARIANTS:
        return Path(root) / IMAGENET_VARIANTS[name][0]
    if name in (FGVC_AIRCRAFT, IMAGENET, *ARRAY_DATASETS):
        return Path(root) / name
    raise DataError(f"prepare-data: unknown dataset {name!r}; known: {', '.join(known_preparable())}")


def known_preparable() -> list[str]:
    """Every name ``prepare_dataset`` understands (some only explain what to do)."""
    return ["fashion-mnist", *TORCHVISION, *MANUAL]


def verify_layout(name: str, root: Path, sample: int = 20) -> list[str]:
    """Problems with ``$DATA`` for ``name``: the loader must parse it and the first files of each split must exist.

    Returns:
        An empty list when the layout is usable, else readable problems.
    """
    if name in ARRAY_DATASETS:
        return _verify_arrays(name, root)
    try:
        splits: DatasetSplits = load_coop_splits(name, root)
    except DataError as e:
        return [str(e)]
    problems = []
    for role, items in (("train", splits.train), ("val", splits.val or []), ("test", splits.test)):
        for it in items[:sample]:
            if not (splits.image_dir / it.path).exists():
                problems.append(f"{role}: missing image {splits.image_dir / it.path}")
                break
    if not splits.test:
        problems.append(f"{name}: the test split is empty")
    return problems


def _verify_arrays(name: str, root: Path) -> list[str]:
    """Problems with CIFAR-100 / MNIST under ``root``: the loader must parse them and find both splits."""
    try:
        if name == "cifar100":
            from ranksearch.data.cifar import load_cifar100

            images, labels, _ = load_cifar100(root)
        else:
            from ranksearch.data.mnist import load_mnist

            images, labels = load_mnist(root)
    except DataError as e:
        return [str(e)]
    return [f"{name}: the {part} split is empty" for part in ("train", "test") if len(labels[part]) == 0]


def arrange(name: str, raw: Path, dest: Path) -> None:
    """Move the downloaded entries of ``name`` from torchvision's folder ``raw`` into ``dest`` (CoOp layout)."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in TORCHVISION[name][2]:
        src, dst = raw / entry, dest / entry
        if dst.exists() or not src.exists():
            continue
        shutil.move(str(src), str(dst))


def _write_split(dest: Path, split_file: str, parts: tuple[list[Item], ...], classnames: list[str]) -> Path:
    doc = {
        key: [[it.path, it.label, classnames[it.label]] for it in items]
        for key, items in zip(("train", "val", "test"), parts, strict=True)
    }
    path = dest / split_file
    path.write_text(json.dumps(doc), encoding="utf-8")
    (dest / MARKER).write_text(
        f"{split_file} was regenerated by ranksearch prepare-data with CoOp's rule (seed {SPLIT_SEED}), not "
        f"CoOp's official split: results are not comparable with published numbers. Replace it with the "
        f"official file from CoOp's Google Drive ({COOP_DATASETS_MD}) and delete this marker.\n",
        encoding="utf-8",
    )
    return path


def _class_folders(
    image_dir: Path, ignored: set[str], rename: dict[str, str]
) -> tuple[dict[int, list[Item]], list[str]]:
    folders = [f for f in _list_dirs(image_dir) if f not in ignored]
    by_class = {y: [Item(f"{f}/{n}", y) for n in _list_images(image_dir / f)] for y, f in enumerate(folders)}
    return by_class, [rename.get(f, f) for f in folders]


def _pets_split(dest: Path) -> tuple[tuple[list[Item], ...], list[str]]:
    """CoOp's OxfordPets rule: test = annotations/test.txt; trainval.txt split 80/20 per class."""
    names: dict[int, str] = {}

    def read(fname: str) -> list[Item]:
        items = []
        for line in (dest / "annotations" / fname).read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            imname, label = line.split()[:2]
            y = int(label) - 1
            names[y] = "_".join(imname.split("_")[:-1]).lower()
            items.append(Item(f"{imname}.jpg", y))
        return items

    trainval, test = read("trainval.txt"), read("test.txt")
    rng = random.Random(SPLIT_SEED)
    train, val = [], []
    by_class: dict[int, list[Item]] = {}
    for it in trainval:
        by_class.setdefault(it.label, []).append(it)
    for items in by_class.values():
        items = list(items)
        rng.shuffle(items)
        n_val = max(1, round(len(items) * 0.2))
        val += items[:n_val]
        train += items[n_val:]
    return (train, val, test), [names[y] for y in sorted(names)]


def _sun397_classes(image_dir: Path) -> tuple[dict[int, list[Item]], list[str]]:
    """SUN397 classes are nested folders ("/b/bakery/shop"); CoOp names them "shop bakery" (words reversed)."""
    listing = image_dir / "ClassName.txt"
    if listing.exists():
        rels = [line.strip().lstrip("/") for line in listing.read_text().splitlines() if line.strip()]
    else:
        rels = sorted(str(p.parent.relative_to(image_dir)) for p in image_dir.rglob("*.jpg"))
        rels = sorted(set(rels))
    by_class = {
        y: [Item(f"{rel}/{n}", y) for n in _list_images(image_dir / rel)] for y, rel in enumerate(rels)
    }
    return by_class, [" ".join(rel.split("/")[1:][::-1]) for rel in rels]


def _flowers_classes(dest: Path) -> tuple[dict[int, list[Item]], list[str]]:
    names_file = dest / "cat_to_name.json"
    if not names_file.exists():
        raise DataError(
            f"{names_file} not found: Flowers102 ships no class names. Put CoOp's cat_to_name.json there "
            f"({COOP_DATASETS_MD}) and run prepare-data again"
        )
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise DataError(
            "reading oxford_flowers/imagelabels.mat needs scipy: pip install 'ranksearch[flowers]'"
        ) from e
    labels = loadmat(str(dest / "imagelabels.mat"))["labels"][0]
    cat = json.loads(names_file.read_text())
    by_class: dict[int, list[Item]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(int(lab) - 1, []).append(Item(f"image_{i + 1:05d}.jpg", int(lab) - 1))
    return by_class, [cat[str(y + 1)] for y in sorted(by_class)]


def regenerate_split(name: str, dest: Path) -> Path:
    """Write a CoOp-rule ``split_zhou_*.json`` for ``name`` in ``dest`` plus the ``NOT_OFFICIAL_SPLIT`` marker.

    Rules (CoOp ``datasets/*.py``): class folders split 50/20/30 per class (DTD, EuroSAT, Food101,
    Caltech101, Flowers102, SUN397); Oxford Pets keeps its official test list and splits trainval 80/20.
    """
    _, image_sub, split_file = SPLIT_ZHOU[name]
    image_dir = dest / image_sub
    table = classname_table(name)
    if name == "oxford_pets":
        parts, classnames = _pets_split(dest)
    else:
        if name == "sun397":
            by_class, classnames = _sun397_classes(image_dir)
        elif name == "oxford_flowers":
            by_class, classnames = _flowers_classes(dest)
        else:
            by_class, classnames = _class_folders(
                image_dir, set(table.get("ignored", [])), table.get("rename", {})
            )
        parts = split_by_ratio(by_class, SPLIT_SEED)
    return _write_split(dest, split_file, parts, classnames)


def prepare_dataset(name: str, root: Path, progress: bool = True) -> Path:
    """Download ``name`` (where a public source exists), arrange it in the CoOp layout under ``root``, verify.

    Already-prepared datasets are verified and returned without downloading. When CoOp's official split file
    is missing, a split is regenerated with CoOp's rule and marked ``NOT_OFFICIAL_SPLIT`` (with a warning
    that says where the official file goes). Datasets without a public source raise a ``DataError`` that
    explains what to put where.

    Example:
        >>> from pathlib import Path
        >>> from ranksearch.data.prepare import prepare_dataset
        >>> prepare_dataset("eurosat", Path("~/data").expanduser())  # doctest: +SKIP
        PosixPath('/home/me/data/eurosat')

    Then train with ``data: {task: eurosat, root: ~/data}``.

    Args:
        name: a dataset name (``known_preparable()``): a CoOp task name such as ``eurosat`` or ``fashion-mnist``.
        root: the ``$DATA`` folder; the dataset goes to ``root/<dataset folder>``.
        progress: print progress and torchvision's download bars to stderr.

    Returns:
        The dataset's folder.

    Raises:
        DataError: unknown name, a dataset that must be brought by hand and is not there yet, a failed
            download, or a layout that still does not verify.
    """
    name = name.strip().lower()
    if name in ("fashion-mnist", "fashion_mnist"):
        from ranksearch.data.fashion_mnist import APT_HINT, DEFAULT_DIR, fashion_mnist_dir

        try:
            return fashion_mnist_dir(None)
        except DataError:
            raise DataError(
                f"Fashion-MNIST is installed from the Debian package, not downloaded here: {APT_HINT} "
                f"(as root). It lands in {DEFAULT_DIR}; then use data.task: fashion-mnist"
            ) from None
    root = Path(root).expanduser()
    dest = dataset_dir(name, root)
    problems = verify_layout(name, root)
    if not problems:
        _say(progress, f"{name}: ready at {dest}")
        return dest
    if name in MANUAL:
        raise DataError(
            f"{name} cannot be downloaded automatically. {MANUAL[name].format(dest=dest)}\n"
            f"Currently: {problems[0]}"
        )
    raw = DOWNLOADER(name, root / "_downloads" / name, progress)
    _say(progress, f"arranging {name} into {dest}")
    arrange(name, raw, dest)
    if name in SPLIT_ZHOU and not (dest / SPLIT_ZHOU[name][2]).exists():
        path = regenerate_split(name, dest)
        msg = (
            f"{name}: CoOp's official {path.name} is not downloadable automatically; regenerated it with CoOp's "
            f"rule and wrote {dest / MARKER}. For comparable numbers put the official file at {path} "
            f"(CoOp's Google Drive, {COOP_DATASETS_MD}) and delete the marker."
        )
        log.warning(msg)
        _say(progress, "WARNING: " + msg)
    problems = verify_layout(name, root)
    if problems:
        raise DataError(f"{name}: prepared at {dest} but it does not verify: " + "; ".join(problems[:3]))
    _say(progress, f"{name}: ready at {dest}")
    return dest
