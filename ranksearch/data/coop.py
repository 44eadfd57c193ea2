"""The CoOp benchmark datasets in the CoOp ``$DATA`` layout (docs/data.md).

* Nine datasets with a ``split_zhou_*.json`` (``{"train"|"val"|"test": [[rel_path, label, classname], ...]}``
  relative to the dataset's image folder) share one loader, :func:`load_split_zhou`.
* ImageNet: ``imagenet/images/{train,val}/<wnid>/...`` (CoOp) or ``imagenet/{train,val}/<wnid>/...``
  (CLIP-LoRA), plus ``imagenet/classnames.txt`` ("<wnid> <name>" per line). Labels follow the sorted wnid
  folders; the official val set is the test split and validation is drawn from train (CLIP-LoRA), because
  selecting on the test split would leak it.
* FGVC-Aircraft: its own ``images_variant_{train,val,test}.txt`` and ``variants.txt``.
* ImageNet-V2, -Sketch, -A, -R: test-only domain-shift sets, each with its ``classnames.txt``. -A and -R hold
  200 of the 1000 classes: their labels are 0..199 over the folders present (as in CoOp) and
  ``DatasetSplits.imagenet_indices`` maps each back to its ImageNet class index.

Class names are taken from the split files (CoOp's renamed names, e.g. EuroSAT "Annual Crop Land"), with
"_" turned into spaces as CoOp does when it writes prompts; one spelling per label (``class_names``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from ranksearch.data.cache import data_cache_dir, digest, file_digest
from ranksearch.data.fewshot import DatasetSplits, Item, eval_split, splits_to_task
from ranksearch.data.resources import templates_for
from ranksearch.data.task import Split, Task
from ranksearch.errors import DataError

if TYPE_CHECKING:
    from ranksearch.config.schema import DataConfig

log = logging.getLogger(__name__)
# where CoOp says how to get each dataset and its split file (an external page, not a file of this repository)
COOP_DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"

# task name -> (folder under $DATA, image folder inside it ("" = the folder itself), split file)
SPLIT_ZHOU: dict[str, tuple[str, str, str]] = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}

# variant -> (folder under $DATA, image folder inside it, how class folders are named)
IMAGENET_VARIANTS: dict[str, tuple[str, str, str]] = {
    "imagenetv2": ("imagenetv2", "imagenetv2-matched-frequency-format-val", "index"),  # folders 0..999
    "imagenet_sketch": ("imagenet-sketch", "images", "wnid"),
    "imagenet_a": ("imagenet-adversarial", "imagenet-a", "wnid"),  # 200-class subset
    "imagenet_r": ("imagenet-rendition", "imagenet-r", "wnid"),  # 200-class subset
}

FGVC_AIRCRAFT = "fgvc_aircraft"
IMAGENET = "imagenet"
COOP_TASKS: tuple[str, ...] = (IMAGENET, *SPLIT_ZHOU, FGVC_AIRCRAFT, *IMAGENET_VARIANTS)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def clean_classname(name: str) -> str:
    """CoOp writes prompts with ``name.replace("_", " ")``; do it once here."""
    return name.replace("_", " ").strip()


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    return path


def _list_images(folder: Path) -> list[str]:
    """Image file names in ``folder`` (no hidden files), sorted so listings do not depend on the filesystem."""
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _list_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


# --------------------------------------------------------------------------------------------- split_zhou


def read_split_zhou(path: Path, lower: bool = False) -> tuple[list[Item], list[Item], list[Item], list[str]]:
    """Parse a ``split_zhou_*.json``.

    Args:
        path: the split file.
        lower: lower-case the class names (Oxford Pets: CoOp lower-cases the breed names it writes).

    Returns:
        (train, val, test, classnames): items with paths relative to the image folder; class names in label
        order (``class_names``).

    Raises:
        DataError: missing file, or not in the split_zhou format.
    """
    _require(path, "split file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        spellings: dict[int, Counter[str]] = {}
        parts: list[list[Item]] = []
        for key in ("train", "val", "test"):
            items = []
            for rel, label, cname in doc[key]:
                items.append(Item(str(rel), int(label)))
                spellings.setdefault(int(label), Counter())[str(cname)] += 1
            parts.append(items)
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path}: not a split_zhou file ({{'train'|'val'|'test': [[path, label, classname]]}}): {e}"
        ) from e
    labels = sorted(spellings)
    if labels != list(range(len(labels))):
        raise DataError(f"{path}: labels must be 0..{len(labels) - 1}, got {labels[:5]}...")
    return parts[0], parts[1], parts[2], class_names(spellings, lower, path)


def class_names(spellings: dict[int, Counter[str]], lower: bool, source: Path) -> list[str]:
    """One prompt name per label from the names a split file gives it.

    The spelling most entries use wins (ties: the first seen), so one odd entry ("ABYSSINIAN" first, then
    "abyssinian" everywhere) does not rename a class; ``lower`` lower-cases as CoOp does for Oxford Pets. A
    label with really different names (not only in case) is kept with a warning naming them.
    """
    out = []
    for label in sorted(spellings):
        counts = spellings[label]
        name = max(counts, key=lambda n: counts[n])  # first maximal entry = the first seen among ties
        if len({n.casefold() for n in counts}) > 1:
            log.warning(
                "%s: label %d has several class names %s; using %r", source, label, sorted(counts), name
            )
        out.append(clean_classname(name.lower() if lower else name))
    return out


def load_split_zhou(name: str, root: Path) -> DatasetSplits:
    """One of the nine split_zhou datasets (``SPLIT_ZHOU``) under ``root`` (``$DATA``)."""
    folder, image_sub, split_file = SPLIT_ZHOU[name]
    base = Path(root) / folder
    split_path = base / split_file
    if not split_path.exists():
        raise DataError(
            f"split file not found: {split_path}. Put CoOp's official {split_file} there (see {COOP_DATASETS_MD}), "
            f"or run `ranksearch prepare-data {name} --root {root}`"
        )
    train, val, test, classnames = read_split_zhou(split_path, lower=name == "oxford_pets")
    image_dir = _require(base / image_sub if image_sub else base, "image folder")
    if (base / "NOT_OFFICIAL_SPLIT").exists():
        log.warning(
            "%s uses a regenerated split (%s exists): results are not comparable with published numbers",
            name,
            base / "NOT_OFFICIAL_SPLIT",
        )
    return DatasetSplits(
        name,
        image_dir,
        classnames,
        train,
        val,
        test,
        file_digest(split_path),
        _declared_base(base, classnames),
    )


def _declared_base(base: Path, classnames: list[str]) -> list[int] | None:
    """Base classes a dataset declares in ``<dataset>/base_classes.txt`` (one class name a line), if any."""
    path = base / "base_classes.txt"
    if not path.exists():
        return None
    index = {c: i for i, c in enumerate(classnames)}
    wanted = [clean_classname(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    unknown = [c for c in wanted if c not in index]
    if unknown:
        raise DataError(f"{path}: unknown class names {unknown[:5]}")
    return sorted(index[c] for c in wanted)


# --------------------------------------------------------------------------------------------- ImageNet


def read_classnames_txt(path: Path) -> OrderedDict[str, str]:
    """CoOp's ``classnames.txt``: "<folder> <class name>" per line, in label order."""
    _require(path, "classnames.txt")
    out: OrderedDict[str, str] = OrderedDict()
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(" ", 1)
        if parts and parts[0]:
            out[parts[0]] = parts[1].strip() if len(parts) > 1 else parts[0]
    return out


def imagenet_image_root(root: Path) -> Path:
    """``$DATA/imagenet/images`` (CoOp layout) or ``$DATA/imagenet`` (CLIP-LoRA layout), whichever has train/."""
    base = Path(root) / IMAGENET
    for cand in (base / "images", base):
        if (cand / "train").is_dir():
            return cand
    raise DataError(
        f"ImageNet not found: expected {base / 'images' / 'train'} (CoOp layout) or {base / 'train'} "
        "(CLIP-LoRA layout). ImageNet must be downloaded by the user (licence): see `ranksearch prepare-data imagenet`"
    )


def _folder_items(split_dir: Path, folders: list[str], label_of: dict[str, int]) -> list[Item]:
    items = []
    for folder in folders:
        for fname in _list_images(split_dir / folder):
            items.append(Item(f"{split_dir.name}/{folder}/{fname}", label_of[folder]))
    return items


def load_imagenet(root: Path) -> DatasetSplits:
    """ImageNet in either layout; test = the official val set, validation drawn from train."""
    image_root = imagenet_image_root(root)
    names_path = Path(root) / IMAGENET / "classnames.txt"
    if not names_path.exists():
        raise DataError(
            f"classnames.txt not found: {names_path}. Put CoOp's ImageNet classnames.txt there "
            f"('<wnid> <class name>' per line; CoOp's {COOP_DATASETS_MD} links it)"
        )
    names = read_classnames_txt(names_path)
    folders = _list_dirs(image_root / "train")
    missing = [f for f in folders if f not in names]
    if missing:
        raise DataError(f"{names_path}: no class name for folder(s) {missing[:5]}")
    label_of = {f: i for i, f in enumerate(folders)}
    val_dir = _require(image_root / "val", "ImageNet val folder")
    val_folders = _list_dirs(val_dir)
    if not val_folders:
        raise DataError(
            f"{val_dir}: expected one sub-folder per class (wnid); sort the val images into class folders"
        )
    extra = [f for f in val_folders if f not in label_of]
    if extra:
        raise DataError(f"{val_dir}: class folder(s) {extra[:5]} are not in {image_root / 'train'}")
    train = _folder_items(image_root / "train", folders, label_of)
    test = _folder_items(val_dir, val_folders, label_of)
    fingerprint = digest([it.path for it in train], [it.path for it in test], file_digest(names_path))
    classnames = [clean_classname(names[f]) for f in folders]
    return DatasetSplits(IMAGENET, image_root, classnames, train, None, test, fingerprint)


def load_imagenet_variant(name: str, root: Path) -> DatasetSplits:
    """A test-only ImageNet variant (``IMAGENET_VARIANTS``), with the class mapping back to ImageNet.

    Labels are 0..C-1 over the class folders present, as in CoOp; ``imagenet_indices[c]`` is the ImageNet
    label of class c (position of its wnid among the sorted wnids of ``classnames.txt``).
    """
    folder, image_sub, naming = IMAGENET_VARIANTS[name]
    base = Path(root) / folder
    names = read_classnames_txt(base / "classnames.txt")
    wnids = list(names)
    imagenet_index = {w: i for i, w in enumerate(sorted(wnids))}
    image_dir = _require(base / image_sub, f"{name} image folder")
    present = _list_dirs(image_dir)
    if naming == "index":  # ImageNet-V2: folder "i" is the i-th class of classnames.txt
        present = sorted((d for d in present if d.isdigit()), key=int)
        bad = [d for d in present if int(d) >= len(wnids)]
        if bad:
            raise DataError(
                f"{image_dir}: class folder(s) {bad[:5]} exceed the {len(wnids)} classes of classnames.txt"
            )
        folder_wnid = {d: wnids[int(d)] for d in present}
    else:
        unknown = [d for d in present if d not in names]
        if unknown:
            raise DataError(f"{base / 'classnames.txt'}: no class name for folder(s) {unknown[:5]}")
        folder_wnid = {d: d for d in present}
    if not present:
        raise DataError(f"{image_dir}: no class folders")
    label_of = {d: i for i, d in enumerate(present)}
    test = _folder_items(image_dir, present, label_of)
    classnames = [clean_classname(names[folder_wnid[d]]) for d in present]
    indices = [imagenet_index[folder_wnid[d]] for d in present]
    fingerprint = digest([it.path for it in test], file_digest(base / "classnames.txt"))
    return DatasetSplits(
        name, image_dir.parent, classnames, [], None, test, fingerprint, imagenet_indices=indices
    )


# --------------------------------------------------------------------------------------------- FGVC-Aircraft


def load_fgvc_aircraft(root: Path) -> DatasetSplits:
    """FGVC-Aircraft from its own split files (``images_variant_*.txt``: "<image id> <variant name>")."""
    base = Path(root) / FGVC_AIRCRAFT
    variants = [
        line.strip()
        for line in _require(base / "variants.txt", "variants.txt").read_text().splitlines()
        if line.strip()
    ]
    label_of = {c: i for i, c in enumerate(variants)}
    parts: list[list[Item]] = []
    hashes = [file_digest(base / "variants.txt")]
    for split in ("train", "val", "test"):
        path = _require(base / f"images_variant_{split}.txt", "split file")
        hashes.append(file_digest(path))
        items = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            image_id, _, cname = line.strip().partition(" ")
            if cname not in label_of:
                raise DataError(f"{path}: variant {cname!r} is not in {base / 'variants.txt'}")
            items.append(Item(f"{image_id}.jpg", label_of[cname]))
        parts.append(items)
    image_dir = _require(base / "images", "image folder")
    return DatasetSplits(
        FGVC_AIRCRAFT,
        image_dir,
        [clean_classname(c) for c in variants],
        parts[0],
        parts[1],
        parts[2],
        digest(hashes),
    )


# --------------------------------------------------------------------------------------------- dispatch


def data_root(cfg: DataConfig) -> Path:
    """``data.root``, else ``$RANKSEARCH_DATA``.

    Raises:
        DataError: neither is set.
    """
    root = cfg.root or os.environ.get("RANKSEARCH_DATA")
    if not root:
        raise DataError(
            f"data.root: task {cfg.task!r} reads images from disk; set data.root (the CoOp $DATA folder)"
        )
    return Path(root).expanduser()


def load_coop_splits(name: str, root: Path) -> DatasetSplits:
    """The full splits of any CoOp task name (``COOP_TASKS``) under ``root``."""
    if name in SPLIT_ZHOU:
        return load_split_zhou(name, root)
    if name == IMAGENET:
        return load_imagenet(root)
    if name == FGVC_AIRCRAFT:
        return load_fgvc_aircraft(root)
    if name in IMAGENET_VARIANTS:
        return load_imagenet_variant(name, root)
    raise DataError(f"unknown CoOp dataset {name!r}; known: {', '.join(COOP_TASKS)}")


def load_eval_set(name: str, cfg: DataConfig, image_size: int) -> tuple[list[str], Split]:
    """A dataset's test split as an extra evaluation set (domain shift or cross-dataset transfer).

    Returns:
        (classnames, split): the set's own class names and labels (ImageNet-A/-R: their 200 classes).
    """
    splits = load_coop_splits(name, data_root(cfg))
    split = eval_split(
        splits,
        image_size,
        data_cache_dir(cfg.cache_dir),
        getattr(cfg, "max_test_per_class", None),
        cfg.split_seed,
    )
    return splits.classnames, split


def build_coop_task(cfg: DataConfig, image_size: int) -> Task:
    """Materialise CoOp task ``cfg.task`` under the protocol of ``cfg``.

    Raises:
        DataError: missing files (the message names the path), or a test-only variant used as the task.
    """
    if cfg.task in IMAGENET_VARIANTS:
        raise DataError(
            f"data.task: {cfg.task!r} is a test-only domain-shift set; train on 'imagenet' and list it in data.eval_tasks"
        )
    splits = load_coop_splits(cfg.task, data_root(cfg))
    return splits_to_task(splits, cfg, image_size, templates_for(cfg.task, cfg.template))
