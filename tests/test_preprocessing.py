"""ranksearch's train and eval preprocessing equals the papers' torchvision/open_clip pipelines on the same images.

References, built from the libraries exactly as the authors' code builds them:

* CLIP-LoRA (``main.py``): RandomResizedCrop(size, scale=(0.08, 1), BICUBIC), RandomHorizontalFlip(0.5), ToTensor,
  Normalize(OpenAI mean/std);
* CoDyRA: open_clip's ``image_transform(size, is_train=True)`` (crop scale (0.9, 1), no flip);
* evaluation: open_clip's ``image_transform(size, is_train=False)`` (resize shorter side, centre crop).

The reference runs on PIL images with the global RNG seeded; ranksearch runs on its cached uint8 tensors with its own
generator seeded the same way. The criterion is ≤ 1/255 per pixel; the measured difference is 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as T
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ranksearch.data.cache import decode_image, load_train_images_cached
from ranksearch.data.transforms import OPENAI_MEAN, OPENAI_STD, arrays_to_images, from_pil, normalize, to_pil
from ranksearch.training.augment import AugmentSpec, augment_batch, pil_bicubic_resized_crop

TOL = 1 / 255 / min(OPENAI_STD)  # one grey level, in normalised units
SIZES = [(375, 500), (300, 451), (53, 37), (224, 224), (90, 130), (640, 480)]


def _photos(n: int = len(SIZES), seed: int = 0) -> list[Image.Image]:
    """Smooth-ish RGB pictures (random walks along rows), the sizes of typical CoOp photos and some odd ones."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in (SIZES * 2)[:n]:
        walk = np.cumsum(rng.normal(0, 9, (h, w, 3)), axis=1) + rng.uniform(60, 190, (h, 1, 3))
        out.append(Image.fromarray(np.clip(walk, 0, 255).astype(np.uint8)))
    return out


def _reference(transform, images: list[Image.Image], order: list[int], seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.stack([transform(images[i]) for i in order])


def _ours(
    images: list[Image.Image], order: list[int], seed: int, size: int, spec: AugmentSpec
) -> torch.Tensor:
    originals = [from_pil(im) for im in images]
    raw = augment_batch(originals, order, size, torch.Generator().manual_seed(seed), spec)
    return normalize(raw)


def _clip_lora_train(size: int) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size=size, scale=(0.08, 1), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=0.5),
            T.ToTensor(),
            T.Normalize(mean=OPENAI_MEAN, std=OPENAI_STD),
        ]
    )


@pytest.mark.parametrize("size", [224, 32])
def test_clip_lora_train_transform_matches_torchvision(size):
    images = _photos()
    order = [0, 1, 2, 3, 4, 5, 0, 2, 5, 1]  # repeats, as epochs do
    ref = _reference(_clip_lora_train(size), images, order, seed=7)
    ours = _ours(images, order, 7, size, AugmentSpec(scale=(0.08, 1.0)))
    diff = (ref - ours).abs().max().item()
    assert diff <= TOL and diff < 1e-5, f"max difference {diff * 255 * min(OPENAI_STD):.3f} grey levels"


def test_codyra_train_transform_matches_open_clip():
    images = _photos()
    reference = open_clip.image_transform(64, is_train=True)  # open_clip's default: scale (0.9, 1), no flip
    order = list(range(len(images))) * 2
    ref = _reference(reference, images, order, seed=3)
    ours = _ours(images, order, 3, 64, AugmentSpec(scale=(0.9, 1.0), flip=False))
    assert (ref - ours).abs().max().item() < 1e-5


def test_eval_transform_matches_open_clip(tmp_path: Path):
    """The cache's decoding (a file on disk -> uint8 -> normalise) equals open_clip's eval transform of the file."""
    reference = open_clip.image_transform(96, is_train=False)
    for i, im in enumerate(_photos()):
        path = tmp_path / f"{i}.png"
        im.save(path)
        ref = reference(Image.open(path))
        ours = normalize(torch.from_numpy(decode_image(path, 96)).unsqueeze(0))[0]
        assert (ref - ours).abs().max().item() < 1e-5


def test_grey_arrays_match_the_reference_pipeline():
    """Fashion-MNIST / MNIST arrays (grey, 28x28): upscaled by PIL like a torchvision dataset's image."""
    rng = np.random.default_rng(1)
    arrays = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    images, originals = arrays_to_images(arrays, 32, keep_originals=True)
    reference = open_clip.image_transform(32, is_train=False)
    for i in range(5):
        ref = reference(Image.fromarray(arrays[i]))  # mode "L": resized, then converted to RGB
        assert (ref - normalize(images[i : i + 1])[0]).abs().max().item() < 1e-5
        assert torch.equal(originals[i], torch.from_numpy(arrays[i]).expand(3, -1, -1))


def test_train_cache_keeps_the_original_pixels(tmp_path: Path):
    images = _photos(3)
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    kw = {"key_parts": ["t"], "cache_dir": tmp_path / "cache", "name": "t-train"}
    small, originals = load_train_images_cached(paths, 48, **kw)
    again, originals2 = load_train_images_cached(paths, 48, **kw)  # read back from the cache file
    assert small.shape == (3, 3, 48, 48) and torch.equal(small, again)
    for im, orig, orig2 in zip(images, originals, originals2, strict=True):
        assert torch.equal(orig, from_pil(im)) and torch.equal(orig2, orig)
    _, capped = load_train_images_cached(paths, 48, **kw, max_side=100)
    assert all(min(o.shape[1:]) == 100 for o in capped[:2])  # both photos were larger


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(8, 70),
    w=st.integers(8, 70),
    size=st.integers(4, 80),
    seed=st.integers(0, 10_000),
    low=st.sampled_from([0.08, 0.5, 0.9]),
)
def test_batched_resampling_equals_pil(h, w, size, seed, low):
    """The batched path (originals of one size in one tensor) gives PIL's pixels for any size, crop and scale."""
    gen = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 256, (6, 3, h, w), dtype=torch.uint8, generator=gen)
    spec = AugmentSpec(scale=(low, 1.0))
    ours = augment_batch(batch, range(6), size, torch.Generator().manual_seed(seed), spec)
    pil = augment_batch(list(batch), range(6), size, torch.Generator().manual_seed(seed), spec)  # per image
    assert torch.equal(ours, pil)
    boxes = torch.tensor([[0, 0, h, w]] * 6)
    ref = torch.stack([from_pil(to_pil(im).resize((size, size), Image.BICUBIC)) for im in batch])
    assert torch.equal(pil_bicubic_resized_crop(batch, boxes, size), ref)


def test_no_crop_flip_only_is_the_eval_image_flipped():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    spec = AugmentSpec(crop=False, flip=True)
    out = augment_batch(images, [0, 1, 2, 3], 16, torch.Generator().manual_seed(0), spec, images=images)
    torch.manual_seed(0)
    flips = [bool(torch.rand(1) < 0.5) for _ in range(4)]
    for i in range(4):
        assert torch.equal(out[i], images[i].flip(-1) if flips[i] else images[i])


def test_trainer_feeds_the_reference_pipeline_on_a_coop_task(tmp_path: Path, monkeypatch):
    """The real loader + cache + Trainer: the images the model sees in a training step are the reference pipeline's
    on the files, in the sampler's order (CLIP-LoRA preset's crop scale on the CoOp-layout fixture)."""
    import json

    from ranksearch.config import validate_trial_config
    from ranksearch.data import build_task
    from ranksearch.session import TrialSession

    monkeypatch.setenv("RANKSEARCH_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "DATA" / "oxford_pets"
    doc: dict[str, list] = {"train": [], "val": [], "test": []}
    for y, (cname, im) in enumerate(zip(["pug", "siamese"], _photos(2, seed=5), strict=True)):
        for i in range(4):
            rel = f"{cname}_{i}.png"
            (base / "images").mkdir(parents=True, exist_ok=True)
            im.rotate(90 * i, expand=True).save(base / "images" / rel)
            doc["train" if i < 2 else "val" if i < 3 else "test"].append([rel, y, cname])
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(doc))
    config = validate_trial_config(
        {
            "model": {"pretrained": None},
            "data": {
                "task": "oxford_pets",
                "root": str(tmp_path / "DATA"),
                "protocol": "fewshot",
                "shots": 2,
            },
            "train": {"iterations": 2, "batch_size": 4, "crop_scale": [0.08, 1.0]},
            "eval": {"evals": 1},
            "tracking": {"enabled": False},
        }
    )
    session = TrialSession(config, 2)
    task = build_task(config.data, session.image_size)
    trainer = session.trainer_for(task, 2)
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(
        session.model, "encode_image", lambda x: seen.append(x.detach().clone()) or x.mean((2, 3))
    )
    aug_state = trainer.aug_gen.get_state()
    idx = trainer.sampler.next()
    trainer.sampler.cursor -= len(idx)  # let the step draw the same batch
    trainer.encode_batch(idx)
    on_disk = [Image.open(base / "images" / rel).convert("RGB") for rel, _, _ in doc["train"]]
    files = []
    for i in idx:  # the file each training row came from: the cache must hold its exact pixels
        match = [im for im in on_disk if torch.equal(from_pil(im), task.train.originals[int(i)])]
        assert len(match) == 1
        files.append(match[0])
    torch.set_rng_state(aug_state)
    ref = torch.stack([_clip_lora_train(session.image_size)(im) for im in files])
    assert (ref - seen[0]).abs().max().item() < 1e-5
