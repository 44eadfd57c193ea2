"""The optimisation loop of one trial: plain PyTorch, no framework, resumable from a state dict.

One step (CLIP-LoRA): sample a batch of few-shot images, augment them as the papers do (a torchvision random
resized crop of the original image and a flip, ``ranksearch.training.augment``), encode, cross-entropy over
``logit_scale · cos(image, class text)`` for the training classes (``train.loss: symmetric`` adds CoDyRA's
text->image term), plus the family's regulariser; AdamW; cosine schedule; then the family's ``after_step`` (rank
updates). Text features are recomputed every step only when the text tower is adapted; otherwise they are computed
once. ``model.precision: amp`` runs fp16 autocast with a GradScaler on CUDA, as CLIP-LoRA and RLRR do.

Work the loop avoids without changing the numbers (``docs/benchmarks.md`` has the measured effect):

* Prompts are encoded only up to the longest prompt's end-of-text token (``text_prefix_length``). CLIP's text
  tower is causal and pools at the EOT token, so the padding after it cannot change the pooled feature; a
  prompt of ~8 tokens no longer pays for 77. Only used where it is exact: a stock open_clip ``CLIP`` with
  argmax pooling and every text adapter token-wise (mergeable).
* ``train.cache_frozen_prefix`` (augmentation off): the vision blocks below the lowest adapted one are frozen
  and see the same image every epoch, so their output is computed once per training image (lazily, the first
  time the image is drawn) and later steps start at the first adapted block (``FrozenPrefixCache``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ranksearch.adapters.base import AdapterFamily, AdapterLayer
from ranksearch.config.schema import TrainConfig
from ranksearch.data.transforms import normalize
from ranksearch.errors import ConfigError, TrialError
from ranksearch.training.augment import AugmentSpec, augment_batch
from ranksearch.training.phases import PhaseHook, no_phase
from ranksearch.training.text import class_text_features

log = logging.getLogger(__name__)

# Above this many bytes the frozen-prefix cache is not built (the trial trains without it and says so).
PREFIX_CACHE_MAX_BYTES = 4 * 2**30


def memory_mb(device: torch.device | str | None = None) -> float:
    """Memory a trial uses now, in MiB, for ``train.max_memory_mb``: peak allocated memory on a CUDA device,
    else this process's resident set size (read from /proc, ~10 µs; psutil elsewhere)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(dev) / 2**20
    import os

    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def cosine_lambda(total: int, warmup: int, base_lr: float, eta_min: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine from 1 to eta_min/base_lr over the remaining steps."""
    floor = eta_min / base_lr

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """fp32: no autocast. amp: fp16 on CUDA (with a GradScaler), bf16 on CPU."""
    if precision != "amp":
        return contextlib.nullcontext
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device.type, dtype=dtype)


# --- text: encode prompts only up to their end-of-text token ------------------------------------------------------
def text_prefix_length(model: nn.Module, tokens: torch.Tensor) -> int | None:
    """How many leading token positions decide the pooled text features, or None when cutting is not exact.

    open_clip's ``CLIP.encode_text`` runs a causal transformer and pools the end-of-text token (the highest id,
    ``argmax`` pooling). Position p only attends to positions <= p, so the columns after the last EOT of the batch
    cannot change any pooled feature. That holds only if every text-tower module acts per token: adapters that
    look at the whole sequence (DRA-style grouping; any non-mergeable layer, or an attention ``probs_hook``)
    would see a different sequence length, so for them the full context is kept.
    """
    import open_clip

    from ranksearch.models.attention import UnfusedAttention

    if (
        type(model).encode_text is not open_clip.CLIP.encode_text
        or getattr(model, "text_pool_type", None) != "argmax"
        or getattr(model, "attn_mask", None) is None
        or getattr(model.transformer, "grad_checkpointing", False)
    ):
        return None
    for m in model.transformer.modules():
        if isinstance(m, AdapterLayer) and not m.mergeable:
            return None
        if isinstance(m, UnfusedAttention) and m.probs_hook is not None:
            return None
    length = int(tokens.argmax(dim=-1).max()) + 1
    mask = model.attn_mask[:length, :length]
    causal = torch.full_like(mask, float("-inf")).triu(1)
    if not torch.equal(mask, causal):  # only the causal mask makes the tail irrelevant
        return None
    return length


def encode_text_prefix(model: nn.Module, tokens: torch.Tensor, length: int) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on the first ``length`` positions only (see ``text_prefix_length``).

    Mirrors open_clip 3.x ``CLIP.encode_text`` line by line, with the positional embedding and the causal mask cut
    to ``length``.
    """
    from open_clip.transformer import text_global_pool

    cast_dtype = model.transformer.get_cast_dtype()
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens).to(cast_dtype)  # (B, length, d)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, nn.Linear)
            else x @ model.text_projection
        )
    return x


def fast_class_text_features(
    model: nn.Module, tokens: torch.Tensor, num_templates: int, length: int | None = None
) -> torch.Tensor:
    """``class_text_features`` with prompts cut after their last EOT token where that is exact.

    ``length`` skips the check (``text_prefix_length``) when the caller has already done it for these tokens.
    """
    length = length if length is not None else text_prefix_length(model, tokens)
    if length is None or length >= tokens.shape[1]:
        return class_text_features(model, tokens, num_templates)
    feats = F.normalize(encode_text_prefix(model, tokens, length), dim=-1)  # (C*T, D)
    feats = feats.view(-1, num_templates, feats.shape[-1]).mean(dim=1)  # (C, D)
    return F.normalize(feats, dim=-1)


# --- vision: cache the output of the frozen blocks below the lowest adapted one ------------------------------------
class FrozenPrefixCache:
    """Per training image, the vision tower's hidden states entering block ``start`` (the lowest adapted block).

    Exact only when the images do not change between epochs (no augmentation) and nothing below ``start`` is
    trainable or random; ``build`` checks the latter and returns None when caching is not possible. Entries are
    filled lazily: a step computes the prefix for the images of its batch that are not cached yet, so the first
    epoch costs what an uncached step costs and no extra pass over the data is made.
    """

    def __init__(self, visual: nn.Module, start: int, n_images: int):
        self.visual, self.start, self.n = visual, start, n_images
        self.blocks = list(visual.transformer.resblocks)
        self.store: torch.Tensor | None = None  # (N, L, d) hidden states, allocated on first use
        self.filled: torch.Tensor = torch.zeros(n_images, dtype=torch.bool)

    @classmethod
    def build(
        cls, model: nn.Module, family: AdapterFamily, n_images: int, image_size: int
    ) -> FrozenPrefixCache | None:
        """A cache for ``model``'s vision tower, or None (with a log line saying why) when it would not be exact."""
        from open_clip.transformer import VisionTransformer

        visual = getattr(model, "visual", None)
        if type(visual) is not VisionTransformer or type(model).encode_image is not _clip_encode_image():
            log.warning(
                "train.cache_frozen_prefix: only open_clip VisionTransformer towers are supported; not caching"
            )
            return None
        depth = len(visual.transformer.resblocks)
        vision_layers = [layer.site.layer for layer in family.layers if layer.site.tower == "vision"]
        start = min(vision_layers, default=depth)  # no vision adapter: the whole tower is a frozen prefix
        if start == 0:
            log.info(
                "train.cache_frozen_prefix: the lowest adapted vision block is the first; nothing to cache"
            )
            return None
        prefix = [visual.conv1, visual.ln_pre, *list(visual.transformer.resblocks)[:start]]
        random = getattr(visual.patch_dropout, "prob", 0.0) > 0 or any(
            (isinstance(m, nn.Dropout) and m.p > 0)
            or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)
            for part in prefix
            for m in part.modules()
        )
        trainable = any(p.requires_grad for part in prefix for p in part.parameters()) or any(
            p.requires_grad for p in (visual.class_embedding, visual.positional_embedding)
        )
        if random or trainable or visual.transformer.grad_checkpointing:
            log.warning("train.cache_frozen_prefix: the vision prefix is trainable or random; not caching")
            return None
        tokens = (image_size // visual.patch_size[0]) * (image_size // visual.patch_size[1]) + 1
        nbytes = n_images * tokens * visual.transformer.width * 4
        if nbytes > PREFIX_CACHE_MAX_BYTES:
            log.warning(
                "train.cache_frozen_prefix: the cache would take %.1f GiB (> %.1f GiB); not caching",
                nbytes / 2**30,
                PREFIX_CACHE_MAX_BYTES / 2**30,
            )
            return None
        return cls(visual, start, n_images)

    def _run_blocks(self, x: torch.Tensor, blocks: list[nn.Module]) -> torch.Tensor:
        batch_first = self.visual.transformer.batch_first
        if not batch_first:
            x = x.transpose(0, 1)
        for block in blocks:
            x = block(x)
        return x if batch_first else x.transpose(0, 1)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> hidden states (B, L, d) entering block ``start`` (no graph)."""
        with torch.no_grad():
            return self._run_blocks(self.visual._embeds(x), self.blocks[: self.start])

    def hidden(self, idx: torch.Tensor, images: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Cached hidden states for training images ``idx``; ``images(i)`` gives normalised images to fill misses."""
        missing = idx[~self.filled[idx]].unique()
        if len(missing):
            h = self.prefix(images(missing))
            if self.store is None:
                self.store = torch.empty((self.n, *h.shape[1:]), dtype=h.dtype, device=h.device)
            self.store[missing.to(h.device)] = h
            self.filled[missing] = True
        return self.store[idx.to(self.store.device)]

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """The rest of ``VisionTransformer.forward`` from block ``start``: blocks, pooling, projection."""
        x = self._run_blocks(h, self.blocks[self.start :])
        pooled, _ = self.visual._pool(x)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled


def _clip_encode_image():
    import open_clip

    return open_clip.CLIP.encode_image


def text_to_image_loss(logits: torch.Tensor, labels: torch.Tensor, prior_classes: int = 0) -> torch.Tensor:
    """CoDyRA's text->image cross-entropy (``models/codyra.py::train_model``, ``loss_ce_t``).

    Each class text is scored against the batch's images, with the multi-hot membership of the images as its soft
    target: ``F.cross_entropy(s·T·Fᵀ, mask)``, averaged over every class row the code has, i.e. the C current
    classes plus the ``prior_classes`` of earlier continual tasks (whose rows hold no image: they add nothing but
    count in the mean). Rows are not normalised by their number of images, as in the code.

    Args:
        logits: (B, C) image->text logits ``s · f_img · Tᵀ``.
        labels: (B,) class of each image in [0, C).
        prior_classes: classes of earlier tasks in the code's embedding table.
    """
    classes = torch.arange(logits.shape[1], device=labels.device)
    mask = (classes.unsqueeze(1) == labels.unsqueeze(0)).to(logits.dtype)  # (C, B) multi-hot targets
    return F.cross_entropy(logits.t(), mask, reduction="sum") / (logits.shape[1] + prior_classes)


def clip_loss(
    logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce", prior_classes: int = 0
) -> torch.Tensor:
    """The training loss over (B, C) image->text logits: ``ce`` (image->text) or ``symmetric`` (CoDyRA's sum)."""
    loss = F.cross_entropy(logits, labels)
    if kind == "symmetric":
        loss = loss + text_to_image_loss(logits, labels, prior_classes)
    return loss


def loss_logit_scale(logit_scale: float | None, model: nn.Module) -> float:
    """The scale of the training loss's logits: ``train.logit_scale`` when set (CLIP-LoRA's fixed 100), else the
    model's learned temperature, ``exp(logit_scale)``."""
    return logit_scale if logit_scale is not None else float(model.logit_scale.exp().item())


def adam_kwargs(params: list[nn.Parameter]) -> dict:
    """``foreach=True`` for AdamW: one multi-tensor op per update stage instead of ~10 ops per parameter.

    torch already picks it on CUDA; on CPU it defaults to the per-tensor loop, which for an adapter's ~100 small
    tensors costs more than the update itself (measured on ViT-B-32 LoRA: 24 ms -> 10 ms per step). The fused
    CPU kernel was measured and rejected: erratic on a loaded 2-core machine (1 ms to 500 ms per step). Same
    update rule; results agree to rounding.
    """
    return {"foreach": True} if params and all(p.device.type in ("cpu", "cuda") for p in params) else {}


@dataclass
class BatchSampler:
    """Epoch-wise shuffled batches from a fixed-seed generator; its state is part of the checkpoint."""

    n: int
    batch_size: int
    generator: torch.Generator
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    cursor: int = 0

    def next(self) -> torch.Tensor:
        if self.cursor + self.batch_size > len(self.perm):
            # drop the ragged tail, as a DataLoader with drop_last would; tiny sets still yield full batches
            self.perm = torch.randperm(self.n, generator=self.generator)
            if self.n < self.batch_size:
                reps = math.ceil(self.batch_size / self.n)
                self.perm = torch.cat([torch.randperm(self.n, generator=self.generator) for _ in range(reps)])
            self.cursor = 0
        idx = self.perm[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx


@dataclass
class StepStats:
    step: int
    loss: float
    lr: float
    seconds: float


class Trainer:
    """Owns the optimiser, scheduler, sampler and RNG of a trial; ``steps()`` yields after every step."""

    def __init__(
        self,
        model: nn.Module,
        family: AdapterFamily,
        train_images: torch.Tensor,
        train_targets: torch.Tensor,
        text_tokens: torch.Tensor,
        num_templates: int,
        cfg: TrainConfig,
        total_steps: int,
        device: torch.device,
        precision: str,
        seed: int,
        text_adapted: bool,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        train_originals: Sequence[torch.Tensor] | None = None,
        prior_classes: int = 0,
    ):
        self.model, self.family, self.cfg = model, family, cfg
        self.images, self.targets = train_images, train_targets  # uint8 (N,3,H,W) on CPU; (N,) in [0, C)
        # the train-time crop is taken from the original images (uint8 (3, h, w) each); the shape world's renders are
        # their own originals
        self.originals = train_originals if train_originals is not None else train_images
        self.tokens, self.num_templates = text_tokens.to(device), num_templates
        self.total_steps, self.device, self.text_adapted = total_steps, device, text_adapted
        self.crop_scale = crop_scale
        self.augment_spec = AugmentSpec(cfg.crop, tuple(crop_scale), tuple(cfg.crop_ratio), cfg.flip)
        # CoDyRA adds its text->image term only when the vision encoder is adapted (models/codyra.py::train_model)
        vision_adapted = any(layer.site.tower == "vision" for layer in family.layers)
        self.loss_kind = "symmetric" if cfg.loss == "symmetric" and vision_adapted else "ce"
        self.prior_classes = prior_classes
        self.phase: PhaseHook = no_phase  # a profiler's timer around each phase of train_step
        params = family.trainable_parameters()
        if not params:
            raise ConfigError(
                [("adapter", "no trainable parameters: check the placement and the family settings")]
            )
        self.optimizer = torch.optim.AdamW(
            family.parameter_groups(cfg.weight_decay),
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
            **adam_kwargs(params),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_lambda(total_steps, cfg.warmup_steps, cfg.lr, cfg.eta_min)
        )
        self.autocast = autocast_for(device, precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "amp" and device.type == "cuda")
        self.data_gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 1)
        self.sampler = BatchSampler(len(self.targets), cfg.batch_size, self.data_gen)
        self.step = 0
        self._frozen_text: torch.Tensor | None = None
        self.logit_scale = loss_logit_scale(cfg.logit_scale, model)
        # encode prompts only up to their EOT token where that is exact (the bench turns it off to compare)
        self.cut_prompts = True
        self.prefix_cache: FrozenPrefixCache | None = None
        if cfg.cache_frozen_prefix:
            if cfg.augment:
                log.warning(
                    "train.cache_frozen_prefix needs train.augment=false (augmented images differ per epoch)"
                )
            else:
                size = train_images.shape[-1]
                self.prefix_cache = FrozenPrefixCache.build(model, family, len(self.targets), size)

    def _text_length(self) -> int | None:
        """Prompt length to encode (``text_prefix_length``), worked out once: tokens and family are fixed."""
        if not hasattr(self, "_cut_length"):
            self._cut_length = text_prefix_length(self.model, self.tokens)
        return self._cut_length

    def _encode_text(self) -> torch.Tensor:
        length = self._text_length() if self.cut_prompts else None
        if length is None or length >= self.tokens.shape[1]:
            return class_text_features(self.model, self.tokens, self.num_templates)
        return fast_class_text_features(self.model, self.tokens, self.num_templates, length)

    def text_features(self) -> torch.Tensor:
        """(C_train, D) class features; cached when the text tower is frozen (issue: compute once per trial)."""
        if self.text_adapted:
            return self._encode_text()
        if self._frozen_text is None:
            with torch.no_grad(), self.autocast():
                self._frozen_text = self._encode_text().float()
        return self._frozen_text

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        """Normalised training images ``idx`` (B, 3, H, W) on the device."""
        return normalize(self.images[idx].to(self.device, non_blocking=True), self.model)

    def batch_inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The model input for training images ``idx``: (with ``train.augment``) cropped from the originals and
        flipped as the papers do, then normalised; (B, 3, size, size) on the device."""
        if not self.cfg.augment:
            return self._images(idx)
        size = self.images.shape[-1]
        raw = augment_batch(self.originals, idx, size, self.aug_gen, self.augment_spec, images=self.images)
        return normalize(raw.to(self.device, non_blocking=True), self.model)

    def encode_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Image features (B, D) of training images ``idx``: augment, normalise, encode (or start from the cache)."""
        return self._encode(idx, self.batch_inputs(idx) if self.prefix_cache is None else None)

    def _encode(self, idx: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """Image features (B, D) of the model inputs ``x`` (B, 3, H, W); ``x`` None: from the frozen-prefix cache."""
        with self.autocast():
            if x is None:
                return self.prefix_cache.encode(self.prefix_cache.hidden(idx, self._images))
            return self.model.encode_image(x)

    def loss_terms(
        self, feats: torch.Tensor, y: torch.Tensor, txt: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(classification loss, loss + the family's regulariser) of image features (B, D) with labels (B,).

        ``txt`` (C, D): class text features computed by the caller (a pack encodes every member's prompts in one
        pass); default ``text_features()``. Raises ``TrialError`` when the total is not finite.
        """
        with self.autocast():
            img = F.normalize(feats, dim=-1)  # (B, D)
            txt = self.text_features() if txt is None else txt  # (C, D)
            logits = self.logit_scale * img.float() @ txt.float().t()  # (B, C)
            loss = clip_loss(logits, y, self.loss_kind, self.prior_classes)
            reg = self.family.regularizer()
            total = loss if reg is None else loss + reg
        if not torch.isfinite(total):
            raise TrialError(f"diverged: non-finite loss ({total.item()}) at step {self.step + 1}")
        return loss, total

    def apply_gradients(self, loss: torch.Tensor, started: float) -> StepStats:
        """Everything after the backward of one step: clip, optimiser and scheduler, the family's rank update."""
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.family.trainable_parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        self.family.after_step(self.step)  # gradients are still present (AdaLoRA importance needs them)
        self.optimizer.zero_grad(set_to_none=True)
        return StepStats(self.step, float(loss.detach()), lr, time.perf_counter() - started)

    def train_step(self) -> StepStats:
        t0 = time.perf_counter()
        if not self.model.training:  # train() walks every module (~1 ms on the tiny model); only when needed
            self.model.train()
        with self.phase("augment"):
            idx = self.sampler.next()
            y = self.targets[idx].to(self.device)
            x = self.batch_inputs(idx) if self.prefix_cache is None else None
        with self.phase("image forward"):
            feats = self._encode(idx, x)
        with self.phase("text forward + loss"):
            loss, total = self.loss_terms(feats, y)
        with self.phase("backward"):
            self.scaler.scale(total).backward()
        with self.phase("optimizer + after-step"):
            return self.apply_gradients(loss, t0)

    def steps(self) -> Iterator[StepStats]:
        while self.step < self.total_steps:
            yield self.train_step()

    # --- checkpointing ---------------------------------------------------------------------------------
    def state_dict(self, adapter_state: dict[str, torch.Tensor]) -> dict:
        """Everything needed to continue exactly: adapter tensors, optimiser, scheduler, sampler, RNGs."""
        return {
            "adapter": {k: v.detach().cpu().clone() for k, v in adapter_state.items()},
            # deep copy: optimizer.state_dict() references the live moment tensors, updated in place later
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "sampler_perm": self.sampler.perm.clone(),
            "sampler_cursor": self.sampler.cursor,
            "data_rng": self.data_gen.get_state(),
            "aug_rng": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),  # dropout draws from the global generator
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "family": self.family.state_dict() if hasattr(self.family, "state_dict") else {},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["adapter"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.sampler.perm, self.sampler.cursor = state["sampler_perm"], int(state["sampler_cursor"])
        self.data_gen.set_state(state["data_rng"])
        self.aug_gen.set_state(state["aug_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if state.get("family") and hasattr(self.family, "load_state_dict"):
            self.family.load_state_dict(state["family"])
