"""A generated world of coloured shapes: zero-shot and base-to-new that a CPU can learn.

64 classes = 8 colours × 8 shapes ("red star", ...), label ``colour_index * 8 + shape_index``. The "new"
classes are 16 held-out *combinations*, {(colour[(j + k) mod 8], shape[j]) : j = 0..7, k ∈ {0, 3}}, so
every colour and shape word still appears in 6 base combos (new words would not transfer, docs/data.md, Shape world).
The task declares ``base_classes`` explicitly; the CoOp "first half of the label list" rule is not used.

Images are rendered with numpy only, vectorised over the batch: each shape is a signed distance function
evaluated on a per-image rotated/scaled/shifted pixel grid, with a one-pixel soft edge for anti-aliasing.
Every image has a size ("small"/"large"), a position (centre or a corner), ±20° rotation and jitter.

Rendering domains (``DOMAINS``):

- ``clean``: dark noisy background, saturated colours. The look the built-in checkpoint is pretrained on.
- ``clutter``: the default downstream domain. Textured, brighter background, 2-4 small distractor shapes
  of other colours, lower contrast, more noise. Zero-shot drops a lot, leaving room for adaptation.
- ``lowcontrast``: dark background, faded colours, heavy noise.
- ``bright``: flat mid-grey to light background (white and yellow shapes lose contrast).
- ``outline``: the clean look, but shapes drawn as outlines only.

Everything is deterministic from a seed. Geometry (what is where) and appearance (colours, background,
distractors) come from two independent child streams, so the same seed renders the *same scenes* in every
domain: a domain-shift comparison differs only in the look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ranksearch.data.task import Split, Task
from ranksearch.errors import DataError

if TYPE_CHECKING:
    from ranksearch.config.schema import DataConfig

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "pink")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "heart")
SIZES = ("small", "large")
POSITIONS = (
    "in the middle",
    "in the top left",
    "in the top right",
    "in the bottom left",
    "in the bottom right",
)
DOMAINS = ("clean", "clutter", "lowcontrast", "bright", "outline")
DEFAULT_DOMAIN = "clutter"  # data.domain: null
CLASSNAMES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
# The checkpoint is pretrained on captions "a red star", so this template makes zero-shot prompts match.
DEFAULT_TEMPLATE = "a {}"
# Bump when rendering changes, so cached checkpoints pretrained on the old look are rebuilt.
GENERATOR_VERSION = 1

_RGB = np.array(
    [
        (220, 40, 40),
        (40, 190, 60),
        (50, 90, 235),
        (235, 220, 50),
        (150, 60, 205),
        (245, 140, 30),
        (240, 240, 240),
        (250, 140, 190),
    ],
    dtype=np.float32,
)
# Shape radius as a fraction of the image side (small, large) and position centres (x, y) as fractions.
_RADIUS = np.array([0.14, 0.24], dtype=np.float32)
_CENTRES = np.array([(0.5, 0.5), (0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)], dtype=np.float32)
_CHUNK = 2048  # images rendered at once: bounds the (chunk, H, W) float32 temporaries to a few MB each

# Stream ids for ``np.random.SeedSequence``: train/val/test never share a stream, hence never an image.
_STREAMS = {"train": 1, "val": 2, "test": 3}


def class_index(colour: str, shape: str) -> int:
    """The label of a colour/shape combination."""
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


NEW_CLASSES: tuple[int, ...] = tuple(
    sorted(class_index(COLOURS[(j + k) % 8], SHAPES[j]) for j in range(8) for k in (0, 3))
)
BASE_CLASSES: tuple[int, ...] = tuple(c for c in range(len(CLASSNAMES)) if c not in set(NEW_CLASSES))


def check_domain(domain: str) -> None:
    """Raise ``DataError`` naming ``data.domain`` unless ``domain`` is a known rendering domain."""
    if domain not in DOMAINS:
        raise DataError(
            f"data.domain: unknown shapeworld domain {domain!r}; choose one of {', '.join(DOMAINS)}"
        )


# --------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Scenes:
    """Per-image geometry of a batch; every field is an array of length N.

    Attributes:
        colour, shape, size, position: int indices into COLOURS, SHAPES, SIZES, POSITIONS.
        angle: rotation in radians (±20°).
        scale: multiplicative size jitter around the nominal radius.
        dx, dy: centre jitter as a fraction of the image side.
    """

    colour: np.ndarray
    shape: np.ndarray
    size: np.ndarray
    position: np.ndarray
    angle: np.ndarray
    scale: np.ndarray
    dx: np.ndarray
    dy: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.colour * len(SHAPES) + self.shape


def sample_scenes(labels: np.ndarray, rng: np.random.Generator) -> Scenes:
    """Draw size, position, rotation and jitter for one image of each label."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    return Scenes(
        colour=labels // len(SHAPES),
        shape=labels % len(SHAPES),
        size=rng.integers(0, len(SIZES), n),
        position=rng.integers(0, len(POSITIONS), n),
        angle=rng.uniform(-1, 1, n).astype(np.float32) * np.float32(math.radians(20)),
        scale=rng.uniform(0.9, 1.1, n).astype(np.float32),
        dx=rng.uniform(-0.045, 0.045, n).astype(np.float32),
        dy=rng.uniform(-0.045, 0.045, n).astype(np.float32),
    )


def captions(scenes: Scenes, rng: np.random.Generator) -> list[str]:
    """Pretraining captions, each at random one of "a red star", "a small red star",
    "a red star in the top left", "a small red star in the top left" (size word "small" or "large")."""
    with_size = rng.random(len(scenes.colour)) < 0.5
    with_pos = rng.random(len(scenes.colour)) < 0.5
    out = []
    for i in range(len(scenes.colour)):
        words = ["a"]
        if with_size[i]:
            words.append(SIZES[scenes.size[i]])
        words += [COLOURS[scenes.colour[i]], SHAPES[scenes.shape[i]]]
        if with_pos[i]:
            words.append(POSITIONS[scenes.position[i]])
        out.append(" ".join(words))
    return out


# ------------------------------------------------------------------------------------- signed distances
# All take shape-frame coordinates (u right, v up) in units of the shape radius and return a signed
# distance in the same units (negative inside). Exact or close enough for a one-pixel soft edge.


def _sdf_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Fold the plane into one half-spike (tip on the +x axis of the folded frame), then measure the
    # distance to the edge from the tip (R, 0) to the inner vertex at angle pi/5.
    r = np.hypot(u, v)
    sector = 2 * np.pi / 5
    psi = np.pi / 5 - np.abs(np.mod(np.arctan2(u, v), sector) - np.pi / 5)
    qx, qy = r * np.cos(psi), r * np.sin(psi)
    tip_r, inner_r = 1.0, 0.45
    ex, ey = inner_r * math.cos(math.pi / 5) - tip_r, inner_r * math.sin(math.pi / 5)
    norm = math.hypot(ex, ey)
    nx, ny = ey / norm, -ex / norm  # outward normal of the edge
    return (qx - tip_r) * nx + qy * ny


def _sdf_triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, pointing up, circumradius 1 -> inradius 0.5; max over the three edge half-planes.
    d = -v
    for a in (math.radians(30), math.radians(150)):
        d = np.maximum(d, u * math.cos(a) + v * math.sin(a))
    return d - 0.5


def _sdf_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Union of a diamond (bottom point) and two circles tangent to its upper edges.
    v = v + 0.1  # centre the union vertically
    diamond = (np.abs(u) + np.abs(v + 0.2) - 0.8) / math.sqrt(2)
    lobe = np.hypot(np.abs(u) - 0.4, v - 0.2) - 0.4 * math.sqrt(2)
    return np.minimum(diamond, lobe)


def _sdf_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 0.3, av - 0.9), np.maximum(au - 0.9, av - 0.3))


_SDF = (
    lambda u, v: np.hypot(u, v) - 0.9,  # circle
    lambda u, v: np.maximum(np.abs(u), np.abs(v)) - 0.72,  # square
    _sdf_triangle,
    _sdf_star,
    _sdf_cross,
    lambda u, v: (np.abs(u) + np.abs(v) - 0.95) / math.sqrt(2),  # diamond
    lambda u, v: np.abs(np.hypot(u, v) - 0.68) - 0.24,  # ring
    _sdf_heart,
)


def _coverage(
    shape: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    size: int,
    outline: bool = False,
) -> np.ndarray:
    """Anti-aliased coverage (N, H, W) in [0, 1] of one shape per image.

    Args:
        shape: (N,) shape indices. cx, cy: (N,) centres in pixels. radius: (N,) radius in pixels.
        angle: (N,) rotation in radians. size: image side. outline: draw a ~1.5 px outline instead of a fill.
    """
    n = len(shape)
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    x = grid[None, None, :] - cx[:, None, None]  # (N, 1, W)
    y = cy[:, None, None] - grid[None, :, None]  # (N, H, 1); y up
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    rad = radius[:, None, None]
    u = (x * cos + y * sin) / rad  # rotate the grid by -angle = rotate the shape by +angle
    v = (y * cos - x * sin) / rad
    out = np.zeros((n, size, size), dtype=np.float32)
    for s in np.unique(shape):
        idx = np.nonzero(shape == s)[0]
        dist_px = _SDF[s](u[idx], v[idx]) * rad[idx]  # signed distance in pixels
        if outline:
            dist_px = np.abs(dist_px) - 0.75
        out[idx] = np.clip(0.5 - dist_px, 0.0, 1.0)
    return out


# ------------------------------------------------------------------------------------------ rendering


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int = 4) -> np.ndarray:
    """Low-frequency texture (N, 3, H, W) in about [-1, 1]: a random cells×cells grid, bilinearly upsampled."""
    coarse = rng.uniform(-1, 1, (n, 3, cells, cells)).astype(np.float32)
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * (cells - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    w = pos - lo
    interp = np.zeros((size, cells), dtype=np.float32)  # (H, cells) row-interpolation matrix
    interp[np.arange(size), lo] = 1 - w
    interp[np.arange(size), lo + 1] = w
    return np.einsum("hc,nkcd,wd->nkhw", interp, coarse, interp, optimize=True)


def _render_chunk(sc: Scenes, rng: np.random.Generator, domain: str, size: int) -> np.ndarray:
    n = len(sc.colour)
    colour = _RGB[sc.colour] + rng.uniform(-18, 18, (n, 3)).astype(np.float32)  # (N, 3)
    colour *= rng.uniform(0.85, 1.05, (n, 1)).astype(np.float32)
    noise_sd = 6.0
    if domain in ("clean", "outline"):
        bg = np.broadcast_to(rng.uniform(0, 50, (n, 3, 1, 1)).astype(np.float32), (n, 3, size, size)).copy()
        bg += _smooth_noise(rng, n, size) * 6
    elif domain == "lowcontrast":
        bg = np.broadcast_to(rng.uniform(10, 60, (n, 3, 1, 1)).astype(np.float32), (n, 3, size, size)).copy()
        bg += _smooth_noise(rng, n, size) * 10
        noise_sd = 16.0
        contrast = rng.uniform(0.35, 0.55, (n, 1)).astype(np.float32)
        colour = bg.mean(axis=(2, 3)) + contrast * (colour - bg.mean(axis=(2, 3)))
    elif domain == "bright":
        bg = np.broadcast_to(rng.uniform(90, 160, (n, 3, 1, 1)).astype(np.float32), (n, 3, size, size)).copy()
        bg += _smooth_noise(rng, n, size) * 15
        noise_sd = 10.0
    elif domain == "clutter":
        bg = np.broadcast_to(rng.uniform(30, 110, (n, 3, 1, 1)).astype(np.float32), (n, 3, size, size)).copy()
        bg += _smooth_noise(rng, n, size, cells=6) * 35
        noise_sd = 14.0
        contrast = rng.uniform(0.6, 0.9, (n, 1)).astype(np.float32)
        colour = bg.mean(axis=(2, 3)) + contrast * (colour - bg.mean(axis=(2, 3)))
    else:  # pragma: no cover - callers check the domain first
        check_domain(domain)
    img = bg  # (N, 3, H, W) float32 in 0..255

    if domain == "clutter":
        # Small distractors of other colours, drawn under the target so the label stays well defined.
        count = rng.integers(2, 5, n)
        for slot in range(4):
            on = slot < count  # (N,)
            d_shape = rng.integers(0, len(SHAPES), n)
            d_colour = (sc.colour + rng.integers(1, len(COLOURS), n)) % len(COLOURS)  # never the target's
            d_rgb = _RGB[d_colour] * rng.uniform(0.5, 0.8, (n, 1)).astype(np.float32)
            cx, cy = rng.uniform(0.1, 0.9, (2, n)).astype(np.float32) * size
            radius = rng.uniform(0.07, 0.1, n).astype(np.float32) * size
            alpha = _coverage(d_shape, cx, cy, radius, rng.uniform(-np.pi, np.pi, n).astype(np.float32), size)
            alpha *= on[:, None, None]
            img = img * (1 - alpha[:, None]) + d_rgb[:, :, None, None] * alpha[:, None]

    cx = (_CENTRES[sc.position, 0] + sc.dx) * size
    cy = (_CENTRES[sc.position, 1] + sc.dy) * size
    radius = _RADIUS[sc.size] * sc.scale * size
    alpha = _coverage(sc.shape, cx, cy, radius, sc.angle, size, outline=domain == "outline")[
        :, None
    ]  # (N, 1, H, W)
    img = img * (1 - alpha) + colour[:, :, None, None] * alpha
    img += rng.normal(0, noise_sd, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def render(
    scenes: Scenes, rng: np.random.Generator, domain: str = "clean", image_size: int = 32
) -> np.ndarray:
    """Render scenes to uint8 images (N, 3, image_size, image_size).

    Args:
        scenes: the geometry, e.g. from ``sample_scenes``.
        rng: the appearance stream (colour jitter, background, distractors, noise).
        domain: one of ``DOMAINS``.
        image_size: side in pixels; geometry scales with it, so any size renders the same scene.

    Raises:
        DataError: unknown domain.
    """
    check_domain(domain)
    n = len(scenes.colour)
    out = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        part = Scenes(*(getattr(scenes, f)[start : start + _CHUNK] for f in Scenes.__dataclass_fields__))
        out[start : start + _CHUNK] = _render_chunk(part, rng, domain, image_size)
    return out


def _streams(seed: int, stream: str) -> tuple[np.random.Generator, np.random.Generator]:
    """(geometry rng, appearance rng) for one split. The seed sequence does not include the domain, so
    the same seed gives the same scenes in every domain."""
    # SeedSequence wants non-negative entries; DataConfig allows any int seed.
    geo, look = np.random.SeedSequence([seed % 2**63, _STREAMS[stream]]).spawn(2)
    return np.random.default_rng(geo), np.random.default_rng(look)


def render_labels(
    labels: np.ndarray, seed: int, stream: str = "test", domain: str = "clean", image_size: int = 32
) -> np.ndarray:
    """Render one image for each label, deterministically from (seed, stream); uint8 (N, 3, H, W)."""
    check_domain(domain)
    geo, look = _streams(seed, stream)
    return render(sample_scenes(labels, geo), look, domain, image_size)


# ---------------------------------------------------------------------------------------- splits/tasks


def _per_class_labels(
    classes: list[int] | tuple[int, ...], per_class: int, rng: np.random.Generator
) -> np.ndarray:
    labels = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
    return labels[rng.permutation(len(labels))]  # shuffled, so a prefix is still class-balanced-ish


def make_split(
    classes: list[int] | tuple[int, ...],
    per_class: int,
    seed: int,
    stream: str,
    domain: str = "clean",
    image_size: int = 32,
) -> Split:
    """``per_class`` images of each class in ``classes``, rendered in ``domain``.

    Args:
        classes: labels to draw. per_class: images per label. seed: e.g. ``DataConfig.split_seed``.
        stream: "train", "val" or "test"; each is an independent random stream, so splits never share images.
        domain: rendering domain. image_size: side in pixels.
    """
    check_domain(domain)
    geo, look = _streams(seed, stream)
    labels = _per_class_labels(classes, per_class, geo)
    images = render(sample_scenes(labels, geo), look, domain, image_size)
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def domain_test_split(domain: str, per_class: int = 40, seed: int = 1, image_size: int = 32) -> Split:
    """The test split of all 64 classes in another rendering domain (same scenes as the task's test split
    for the same seed). ``build_shapeworld_task`` puts these in ``Task.extra_tests``."""
    return make_split(range(len(CLASSNAMES)), per_class, seed, "test", domain, image_size)  # type: ignore[arg-type]


def build_shapeworld_task(cfg: DataConfig, image_size: int) -> Task:
    """Materialise the shape-world task of a ``DataConfig``.

    train: ``cfg.shots`` images per train class (the 48 base classes under "base2new", all 64 under
    "fewshot"); val: ``cfg.val_shots or min(cfg.shots, 4)`` per class, all classes; test:
    ``cfg.test_per_class`` per class, all classes; all in ``cfg.domain``, seeded by ``cfg.split_seed``.
    ``extra_tests`` holds the test split of every other domain, named ``"shapeworld-<domain>"`` (same scenes,
    other look; 64 × test_per_class images each, which renders in well under a second).

    Raises:
        DataError: unknown ``cfg.domain``.
    """
    domain = cfg.domain or DEFAULT_DOMAIN
    check_domain(domain)
    all_classes = list(range(len(CLASSNAMES)))
    base2new = cfg.protocol == "base2new"
    train_classes = list(BASE_CLASSES) if base2new else all_classes
    val_shots = cfg.val_shots or min(cfg.shots, 4)
    seed = cfg.split_seed
    extra = {
        f"shapeworld-{d}": (
            list(CLASSNAMES),
            make_split(all_classes, cfg.test_per_class, seed, "test", d, image_size),
        )
        for d in DOMAINS
        if d != domain
    }
    return Task(
        name=f"shapeworld-{domain}",
        classnames=list(CLASSNAMES),
        templates=[cfg.template or DEFAULT_TEMPLATE],
        train=make_split(train_classes, cfg.shots, seed, "train", domain, image_size),
        val=make_split(all_classes, val_shots, seed, "val", domain, image_size),
        test=make_split(all_classes, cfg.test_per_class, seed, "test", domain, image_size),
        base_classes=list(BASE_CLASSES) if base2new else None,
        extra_tests=extra,
    )


def pretraining_batch(
    rng: np.random.Generator,
    n: int,
    image_size: int = 32,
    classes: tuple[int, ...] | list[int] = BASE_CLASSES,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A batch of the pretraining stream: clean-domain images with captions.

    By default only the 48 base combos appear, so the 16 new combos stay unseen by the checkpoint and
    "new" measures compositional generalisation (docs/data.md, Shape world), as real CLIP's new classes are at least not
    the adapter's training classes. Pass ``classes=range(64)`` to pretrain on everything.

    Args:
        rng: drives labels, geometry, appearance and caption choice.
        n: batch size.
        image_size: side in pixels.
        classes: the labels to sample uniformly from.

    Returns:
        (images uint8 (n, 3, H, W), captions (n strings), labels int64 (n,)).
    """
    labels = np.asarray(classes, dtype=np.int64)[rng.integers(0, len(classes), n)]
    scenes = sample_scenes(labels, rng)
    return render(scenes, rng, "clean", image_size), captions(scenes, rng), labels
