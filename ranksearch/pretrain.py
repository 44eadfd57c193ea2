"""Contrastive pretraining of the built-in tiny open_clip models on the shape world, cached on disk.

``model.pretrained: shapeworld`` resolves here (``ranksearch.models.clip.build_model``). The first use
pretrains the model on the clean shape world (about 2 minutes on 2 CPU cores) and caches the state dict;
later uses load the cached file. The cache file name holds a hash of the ``PretrainConfig`` and the
generator version, so changing either builds a new checkpoint instead of reusing a stale one.

Training follows docs/data.md, Shape world: batch 256, AdamW (lr 1e-3, wd 0.05 on matrices only), 50 warm-up steps,
cosine decay, symmetric InfoNCE with the model's own learnable logit scale, and **soft targets over
identical captions**: with 48 classes, a batch of 256 holds many copies of "a red star", and one-hot
"diagonal" targets would push apart pairs that are actually positives.

Images are normalised like everywhere else (``ranksearch.data.transforms.normalize``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ranksearch.data import shapeworld as sw
from ranksearch.data.task import Split
from ranksearch.data.transforms import normalize
from ranksearch.errors import ModelLoadError

log = logging.getLogger(__name__)

# Bump when the training recipe changes in a way the config does not capture.
PRETRAIN_VERSION = 1
# Nominal training throughput on 2 CPU cores, only for the "~N min" estimate in the log.
_NOMINAL_IMG_PER_S = {"rs-tiny-clip": 2000.0, "rs-small-clip": 400.0}
# Per-model recipe fields that differ from the PretrainConfig defaults (part of each model's cache key).
# rs-small-clip (6 + 4 blocks at width 128) is ~5x slower per image than rs-tiny-clip: fewer steps keep its
# one-time pretraining under 6 minutes on one core (docs/world.md has the measurement).
RECIPES: dict[str, dict[str, Any]] = {"rs-small-clip": {"steps": 400}}


@dataclass(frozen=True)
class PretrainConfig:
    """How the built-in checkpoint is pretrained. Every field is part of the cache key.

    Attributes:
        model_name: a tiny open_clip config shipped in ``ranksearch/models/configs``.
        steps: optimiser steps. The default fits about 2 minutes on 2 CPU cores.
        batch_size: images (and captions) per step.
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay, on weight matrices only (not on gains, biases, logit scale).
        warmup_steps: linear warm-up steps before the cosine decay.
        seed: seeds the model initialisation, the data and the batch order.
        data_size: images pre-rendered into the pool batches are drawn from.
        holdout_new: pretrain on the 48 base combos only, keeping the 16 new combos unseen (docs/data.md, Shape world).
    """

    model_name: str = "rs-tiny-clip"
    steps: int = 800
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    seed: int = 0
    data_size: int = 60_000
    holdout_new: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "data_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.seed < 0:
            raise ValueError("lr must be > 0; weight_decay, warmup_steps and seed >= 0")

    def cache_key(self) -> str:
        """12 hex digits identifying this config, the recipe version and the shape-world generator version."""
        payload = {
            **asdict(self),
            "pretrain_version": PRETRAIN_VERSION,
            "generator_version": sw.GENERATOR_VERSION,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def default_recipe(model_name: str) -> PretrainConfig:
    """The shipped recipe of a built-in model (``RECIPES`` over the ``PretrainConfig`` defaults)."""
    return PretrainConfig(model_name=model_name, **RECIPES.get(model_name, {}))


# ------------------------------------------------------------------------------------------ training


def _create(model_name: str) -> tuple[nn.Module, Any, int]:
    """A randomly initialised open_clip model, its tokenizer and its input side."""
    import open_clip

    from ranksearch.models.builtin import register_tiny_configs
    from ranksearch.quiet import no_random_init_warning

    register_tiny_configs()
    with no_random_init_warning():  # random init is the point: pretraining starts from scratch
        model = open_clip.create_model(model_name, pretrained=None)
    size = model.visual.image_size
    return (
        model,
        open_clip.get_tokenizer(model_name),
        int(size[0] if isinstance(size, tuple | list) else size),
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # open_clip's rule: no decay on gains, biases, norms and the logit scale.
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        skip = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return f


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    caption_ids: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets spread over identical captions.

    Args:
        image_features: (B, D) L2-normalised image embeddings.
        text_features: (B, D) L2-normalised embeddings of each image's caption.
        caption_ids: (B,) int ids; equal ids mean identical captions, which are all positives.
        logit_scale: scalar, log of the temperature's inverse.
    """
    logits = logit_scale.exp() * image_features @ text_features.T  # (B, B)
    same = (caption_ids[:, None] == caption_ids[None, :]).float()  # symmetric, ones on the diagonal
    target = same / same.sum(1, keepdim=True)  # row i: uniform over the k_i copies of caption i
    # The transpose's rows have the same targets because ``same`` is symmetric.
    i2t = -(target * logits.log_softmax(1)).sum(1).mean()
    t2i = -(target * logits.T.log_softmax(1)).sum(1).mean()
    return (i2t + t2i) / 2


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[ips]:.0f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def pretrain(
    cfg: PretrainConfig, out_path: str | Path, progress: bool = True, evaluate: bool = True
) -> dict[str, Any]:
    """Pretrain ``cfg.model_name`` from scratch on the clean shape world and save its state dict.

    The file at ``out_path`` loads with ``open_clip.create_model(name, pretrained=out_path)``. Writes go to
    ``out_path`` directly; ``ensure_checkpoint`` adds the atomic rename and the lock.

    Args:
        cfg: the recipe.
        out_path: where to ``torch.save`` the state dict.
        progress: show a rich progress bar (step, loss, img/s).
        evaluate: after training, measure zero-shot accuracy on the clean test split (about a second).

    Returns:
        Metrics: steps, seconds, img_per_s, loss_first (mean of the first 10 steps), loss_last (mean of the
        last 10), losses (every step), and with ``evaluate`` the clean zero-shot ``zs_base``/``zs_new``.
    """
    threads = max(1, min(4, os.cpu_count() or 1))  # a model this small gains nothing from more threads
    # fork_rng: seeding here must not change the caller's global torch RNG stream.
    with _threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model, tokenizer, size = _create(cfg.model_name)
        model.train()

        # Pre-render the pool once; captions are tokenised once per distinct string (a few hundred).
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, 7])
        classes = sw.BASE_CLASSES if cfg.holdout_new else tuple(range(len(sw.CLASSNAMES)))
        images_np, caps, _ = sw.pretraining_batch(rng, cfg.data_size, size, classes)
        vocab = sorted(set(caps))
        index = {c: i for i, c in enumerate(vocab)}
        images = torch.from_numpy(images_np)  # uint8 (P, 3, H, W)
        cap_ids = torch.tensor([index[c] for c in caps])  # (P,)
        tokens = tokenizer(vocab)  # (V, context)
        render_s = time.perf_counter() - t0

        opt = torch.optim.AdamW(
            _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.steps))
        gen = torch.Generator().manual_seed(cfg.seed)
        max_log_scale = math.log(100.0)
        losses: list[float] = []
        t_train = time.perf_counter()
        with _progress(progress) as bar:
            task = bar.add_task(
                f"pretraining {cfg.model_name} on the shape world",
                total=cfg.steps,
                loss=float("nan"),
                ips=0.0,
            )
            for step in range(cfg.steps):
                idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
                ids = cap_ids[idx]
                # Encode each distinct caption of the batch once, then expand back to one row per image.
                uniq, inverse = torch.unique(ids, return_inverse=True)
                img_f = F.normalize(model.encode_image(normalize(images[idx], model)), dim=-1)  # (B, D)
                txt_f = F.normalize(model.encode_text(tokens[uniq]), dim=-1)[inverse]  # (B, D)
                loss = contrastive_loss(img_f, txt_f, ids, model.logit_scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, max_log_scale)  # as open_clip: temperature >= 0.01
                losses.append(loss.item())
                elapsed = time.perf_counter() - t_train
                bar.update(task, advance=1, loss=losses[-1], ips=(step + 1) * cfg.batch_size / elapsed)
        train_s = time.perf_counter() - t_train

        model.eval()
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out_path)
        metrics: dict[str, Any] = {
            "steps": cfg.steps,
            "seconds": round(train_s, 2),
            "render_seconds": round(render_s, 2),
            "img_per_s": round(cfg.steps * cfg.batch_size / train_s, 1),
            "loss_first": float(np.mean(losses[:10])),
            "loss_last": float(np.mean(losses[-10:])),
            "losses": losses,
            "logit_scale": float(model.logit_scale.detach().exp()),
        }
        if evaluate:
            metrics.update(zero_shot_report(model, tokenizer, domains=("clean",), image_size=size))
    return metrics


# --------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _zero_shot_accuracy(
    model: nn.Module,
    tokenizer: Any,
    split: Split,
    classnames: Sequence[str],
    template: str,
    classes: Sequence[int] | None = None,
    batch_size: int = 512,
) -> float:
    """Zero-shot top-1 accuracy of ``split`` among ``classes`` (all classes if ``None``).

    Only the images whose label is in ``classes`` count (the CoCoOp protocol: base = 48-way on base images,
    new = 16-way on new images). A minimal helper for pretraining reports; the evaluation module is the
    real one.
    """
    classes = list(range(len(classnames))) if classes is None else list(classes)
    split = split.subset(classes)
    was_training = model.training
    model.eval()
    text = F.normalize(
        model.encode_text(tokenizer([template.format(classnames[c]) for c in classes])), dim=-1
    )
    correct = 0
    for start in range(0, len(split), batch_size):
        img = F.normalize(
            model.encode_image(normalize(split.images[start : start + batch_size], model)), dim=-1
        )
        pred = torch.as_tensor(classes)[(img @ text.T).argmax(1)]
        correct += int((pred == split.labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(split))


def zero_shot_report(
    model: nn.Module,
    tokenizer: Any,
    domains: Sequence[str] = sw.DOMAINS,
    per_class: int = 40,
    seed: int = 1,
    image_size: int = 32,
    template: str = sw.DEFAULT_TEMPLATE,
) -> dict[str, float]:
    """Zero-shot accuracy per domain: ``zs_base`` (48-way), ``zs_new`` (16-way) and ``zs_all`` (64-way).

    Keys are ``zs_<metric>`` for "clean" and ``zs_<domain>_<metric>`` for the other domains. The images
    are the domain test splits for ``seed`` (the default task's test split when seed is 1).
    """
    out: dict[str, float] = {}
    for domain in domains:
        split = sw.domain_test_split(domain, per_class, seed, image_size)
        prefix = "zs" if domain == "clean" else f"zs_{domain}"
        for name, classes in (("base", sw.BASE_CLASSES), ("new", sw.NEW_CLASSES), ("all", None)):
            out[f"{prefix}_{name}"] = _zero_shot_accuracy(
                model, tokenizer, split, sw.CLASSNAMES, template, classes
            )
    return out


# -------------------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """``$RANKSEARCH_CACHE``, else ``$XDG_CACHE_HOME/ranksearch``, else ``~/.cache/ranksearch``."""
    if os.environ.get("RANKSEARCH_CACHE"):
        return Path(os.environ["RANKSEARCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ranksearch"


def checkpoint_path(cfg: PretrainConfig) -> Path:
    """Where the checkpoint of ``cfg`` is cached (it may not exist yet)."""
    return cache_dir() / "pretrained" / f"{cfg.model_name}-shapeworld-{cfg.cache_key()}.pt"


def _tiny_model_names() -> list[str]:
    from ranksearch.models.builtin import builtin_model_names

    return builtin_model_names()


def ensure_checkpoint(model_name: str, cfg: PretrainConfig | None = None, progress: bool = True) -> Path:
    """The cached shape-world checkpoint of ``model_name``, pretrained now if missing.

    Safe against interruption (the file is written to a temporary name, then renamed atomically) and
    against concurrent callers (an exclusive file lock; the second caller waits and reuses the result).
    Next to the checkpoint, ``<name>.json`` records the config and the pretraining metrics.

    Args:
        model_name: one of the tiny configs in ``ranksearch/models/configs``.
        cfg: the recipe; default ``default_recipe(model_name)``.
        progress: show the progress bar while pretraining.

    Raises:
        ModelLoadError: ``model_name`` is not a built-in tiny model.
    """
    if model_name not in _tiny_model_names():
        raise ModelLoadError(
            f"model.pretrained: 'shapeworld' weights exist only for the built-in tiny models "
            f"({', '.join(_tiny_model_names())}), not {model_name!r}"
        )
    cfg = cfg or default_recipe(model_name)
    if cfg.model_name != model_name:
        raise ValueError(f"cfg.model_name {cfg.model_name!r} != model_name {model_name!r}")
    path = checkpoint_path(cfg)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock  # the same lock as the data cache (ranksearch.data.cache)

    with FileLock(str(path.with_suffix(".lock"))):
        if path.is_file():  # another process built it while we waited
            return path
        minutes = cfg.steps * cfg.batch_size / _NOMINAL_IMG_PER_S.get(model_name, 2000.0) / 60
        log.warning(
            "pretraining the built-in %s on the shape world: one-time, ~%.0f min on 2 CPU cores; cached at %s",
            model_name,
            max(1.0, minutes),
            path,
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            metrics = pretrain(cfg, tmp, progress=progress)
            os.chmod(
                tmp, 0o644
            )  # mkstemp creates 0600; the cache is meant to be readable like any other file
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        summary = {k: v for k, v in metrics.items() if k != "losses"}
        path.with_suffix(".json").write_text(
            json.dumps({"config": asdict(cfg), "metrics": summary}, indent=2)
        )
        log.warning(
            "pretrained in %.0f s (%.0f img/s); zero-shot clean: %s",
            metrics["seconds"],
            metrics["img_per_s"],
            {k: round(v, 3) for k, v in summary.items() if k.startswith("zs")},
        )
    return path
