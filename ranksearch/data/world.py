"""The adaptation world: downstream tasks of the shape world where *what* you adapt, and *where*, matters.

``data.task: world`` with ``data.domain`` one of ``WORLD_TASKS``. Every task keeps the shape world's 64
colour × shape classes, its 48 base / 16 new split (held-out *combinations*) and its pretraining look, then
applies one or more **shifts** that the pretrained checkpoint (``rs-small-clip``, pretrained on the clean shape
world) has never seen:

- ``sensor`` (low-level): the camera is out of focus (a Gaussian blur of ``DEFOCUS_SIGMA`` = 2.5 px at 32 px)
  and its pixel noise is heavier. Colour survives; the edges that tell a star from a cross or a heart are smeared,
  so the frozen encoder maps blurred shapes close together. Only the image side can recover them (sharper early
  features, identical for every class, so the fix transfers to the new classes); the text tower can only relabel
  what the frozen image embedding still separates. (A colour-channel rotation, the first version of this shift,
  is a bijection of the colour words: the text tower fixed it as well as the vision tower did — docs/world.md.)
- ``pair`` (semantic): every image holds two objects, the target drawn large and a small distractor of another
  colour *and* another shape elsewhere; the class is the large one. The rendering of each object is the
  pretraining look, so low-level features are right; what changes is which object the pooled embedding should
  describe, a late-layer (attention pooling) decision.
- ``synonyms`` (text-side): the images are the clean pretraining look, but the class names use colour words the
  text encoder never saw in pretraining ("crimson star" for red star, ...; their token embeddings are still the
  random initialisation). The image side needs nothing; the text tower must learn what the new words mean, which
  then also holds for the new classes (every new word appears in base classes).

Tasks (``WORLD_TASKS``): ``pixel`` = sensor, ``concept`` = pair, ``words`` = synonyms, and the default ``mixed`` =
sensor + synonyms (a shift on each side: neither tower alone fixes it). Under base-to-new the new classes are
new combinations of seen words, so adaptation that learns the shift generalises while adaptation that memorises
the 36 trained combinations (a high rank everywhere, a high learning rate) loses new-class accuracy: the
harmonic mean rewards the right placement and penalises over-adaptation.

Splits (all seeded by ``data.split_seed``; train, val and test are independent streams): train ``data.shots``
per base class, validation ``data.val_shots`` (default ``VAL_SHOTS`` = 21) per base class, i.e. 1,008 images
before the pseudo-new rule of ``fewshot.base2new_validation`` (applied by ``build_task``) — which holds a seeded
quarter of the base classes out of training and scores them as val/new —, test ``data.test_per_class`` per class
over all 64 classes. ``extra_tests["world-clean"]`` is the clean, original-vocabulary test split (same scenes),
which measures forgetting of the pretraining world.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

import ranksearch.data.shapeworld as sw
from ranksearch.data.task import Split, Task
from ranksearch.errors import DataError

if TYPE_CHECKING:
    from ranksearch.config.schema import DataConfig

TASK_NAME = "world"
# task -> its shifts
WORLD_TASKS: dict[str, frozenset[str]] = {
    "mixed": frozenset({"sensor", "synonyms"}),
    "pixel": frozenset({"sensor"}),
    "concept": frozenset({"pair"}),
    "words": frozenset({"synonyms"}),
}
DEFAULT_TASK = "mixed"
VAL_SHOTS = 21  # 48 base classes x 21 = 1,008 validation images (one image = 0.1 points)
# Colour words absent from every pretraining caption (sw.captions): untrained token embeddings.
SYNONYMS = ("crimson", "emerald", "azure", "golden", "violet", "amber", "ivory", "rose")
DEFOCUS_SIGMA = 2.5  # sensor blur, pixels at 32 px (scaled with the image size)
SENSOR_NOISE = 10.0  # sensor noise SD, 0-255 scale
_STREAMS = {"train": 11, "val": 12, "test": 13}  # never the shape world's 1..3


def check_world_task(name: str) -> None:
    """Raise ``DataError`` naming ``data.domain`` unless ``name`` is a world task."""
    if name not in WORLD_TASKS:
        raise DataError(f"data.domain: unknown world task {name!r}; choose one of {', '.join(WORLD_TASKS)}")


def classnames(task: str) -> list[str]:
    """The 64 class names of a world task, in the shape world's label order."""
    check_world_task(task)
    colours = SYNONYMS if "synonyms" in WORLD_TASKS[task] else sw.COLOURS
    return [f"{c} {s}" for c in colours for s in sw.SHAPES]


def _streams(seed: int, stream: str) -> tuple[np.random.Generator, np.random.Generator]:
    geo, look = np.random.SeedSequence([seed % 2**63, _STREAMS[stream]]).spawn(2)
    return np.random.default_rng(geo), np.random.default_rng(look)


def _add_distractor(images: np.ndarray, scenes: sw.Scenes, rng: np.random.Generator, size: int) -> np.ndarray:
    """Paint one small object of another colour and another shape into each image, away from the target.

    images: uint8 (N, 3, H, W) with the target already drawn large; returns a new uint8 array.
    """
    n = len(scenes.colour)
    colour = (scenes.colour + rng.integers(1, len(sw.COLOURS), n)) % len(sw.COLOURS)
    shape = (scenes.shape + rng.integers(1, len(sw.SHAPES), n)) % len(sw.SHAPES)
    # another of the five positions than the target's
    position = (scenes.position + rng.integers(1, len(sw.POSITIONS), n)) % len(sw.POSITIONS)
    cx = (sw._CENTRES[position, 0] + rng.uniform(-0.03, 0.03, n)) * size
    cy = (sw._CENTRES[position, 1] + rng.uniform(-0.03, 0.03, n)) * size
    radius = (sw._RADIUS[0] * rng.uniform(0.8, 1.0, n) * size).astype(np.float32)
    angle = rng.uniform(-1, 1, n).astype(np.float32) * np.float32(math.radians(20))
    alpha = sw._coverage(shape, cx.astype(np.float32), cy.astype(np.float32), radius, angle, size)[:, None]
    rgb = sw._RGB[colour] + rng.uniform(-18, 18, (n, 3)).astype(np.float32)  # (N, 3)
    out = images.astype(np.float32) * (1 - alpha) + rgb[:, :, None, None] * alpha
    return np.clip(out, 0, 255).round().astype(np.uint8)


def render_task(
    labels: np.ndarray, task: str, seed: int, stream: str, image_size: int = 32, shifted: bool = True
) -> np.ndarray:
    """Render one image per label for a world task; uint8 (N, 3, H, W), deterministic from (seed, stream).

    ``shifted=False`` renders the same scenes in the clean pretraining look (no sensor, no distractor).
    """
    check_world_task(task)
    shifts = WORLD_TASKS[task] if shifted else frozenset()
    geo, look = _streams(seed, stream)
    scenes = sw.sample_scenes(labels, geo)
    if "pair" in shifts:  # the target is the large object
        scenes = sw.Scenes(**{**scenes.__dict__, "size": np.ones_like(scenes.size)})
    distractor_rng = np.random.default_rng(look.integers(2**63))  # its own stream: same scenes either way
    images = sw.render(scenes, look, "clean", image_size)
    if "pair" in shifts:
        images = _add_distractor(images, scenes, distractor_rng, image_size)
    if "sensor" in shifts:
        blurred = defocus(images.astype(np.float32), DEFOCUS_SIGMA * image_size / 32)
        noise = distractor_rng.normal(0, SENSOR_NOISE, images.shape).astype(np.float32)
        images = np.clip(blurred + noise, 0, 255).round().astype(np.uint8)
    return images


def defocus(images: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur of float images (N, C, H, W), edges replicated; same shape."""
    radius = max(1, math.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    h, w = images.shape[2:]
    padded = np.pad(images, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="edge")
    rows = sum(k * padded[:, :, :, i : i + w] for i, k in enumerate(kernel))  # (N, C, H + 2r, W)
    return sum(k * rows[:, :, i : i + h, :] for i, k in enumerate(kernel))  # (N, C, H, W)


def make_split(
    classes: list[int] | tuple[int, ...],
    per_class: int,
    task: str,
    seed: int,
    stream: str,
    image_size: int = 32,
    shifted: bool = True,
) -> Split:
    """``per_class`` images of each class in ``classes`` for a world task (labels shuffled)."""
    order = np.random.default_rng([seed % 2**63, _STREAMS[stream], 99])
    labels = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
    labels = labels[order.permutation(len(labels))]
    images = render_task(labels, task, seed, stream, image_size, shifted)
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def build_world_task(cfg: DataConfig, image_size: int) -> Task:
    """Materialise the world task named by ``cfg.domain`` (default ``mixed``) under ``cfg.protocol``.

    base2new: train on the 48 base classes (the pseudo-new rule is applied afterwards by ``build_task``),
    validation over the base classes; fewshot: all 64 classes everywhere.

    Raises:
        DataError: unknown world task.
    """
    task = cfg.domain or DEFAULT_TASK
    check_world_task(task)
    all_classes = list(range(len(sw.CLASSNAMES)))
    base2new = cfg.protocol == "base2new"
    train_classes = list(sw.BASE_CLASSES) if base2new else all_classes
    seed = cfg.split_seed
    val_shots = cfg.val_shots or VAL_SHOTS
    clean = make_split(all_classes, cfg.test_per_class, task, seed, "test", image_size, shifted=False)
    return Task(
        name=f"world-{task}",
        classnames=classnames(task),
        templates=[cfg.template or sw.DEFAULT_TEMPLATE],
        train=make_split(train_classes, cfg.shots, task, seed, "train", image_size),
        val=make_split(train_classes, val_shots, task, seed, "val", image_size),
        test=make_split(all_classes, cfg.test_per_class, task, seed, "test", image_size),
        base_classes=list(sw.BASE_CLASSES) if base2new else None,
        extra_tests={"world-clean": (list(sw.CLASSNAMES), clean)},
    )
