"""The optimisation loop of one trial: plain PyTorch, no framework, resumable from a state dict.

One step (CLIP-LoRA): sample a batch of few-shot images, augment, encode, cross-entropy over
``logit_scale · cos(image, class text)`` for the training classes, plus the family's regulariser; AdamW; cosine
schedule; then the family's ``after_step`` (rank updates). Text features are recomputed every step only when
the text tower is adapted; otherwise they are computed once.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ranksearch.adapters.base import AdapterFamily
from ranksearch.config.schema import TrainConfig
from ranksearch.data.transforms import normalize
from ranksearch.errors import TrialError
from ranksearch.training.augment import random_resized_crop_flip
from ranksearch.training.text import class_text_features


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
    ):
        self.model, self.family, self.cfg = model, family, cfg
        self.images, self.targets = train_images, train_targets  # uint8 (N,3,H,W) on CPU; (N,) in [0, C)
        self.tokens, self.num_templates = text_tokens.to(device), num_templates
        self.total_steps, self.device, self.text_adapted = total_steps, device, text_adapted
        self.crop_scale = crop_scale
        params = family.trainable_parameters()
        if not params:
            raise TrialError("the adapter has no trainable parameters (check placement and family settings)")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
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
        scale = cfg.logit_scale if cfg.logit_scale is not None else float(model.logit_scale.exp().item())
        self.logit_scale = scale

    def text_features(self) -> torch.Tensor:
        """(C_train, D) class features; cached when the text tower is frozen (issue: compute once per trial)."""
        if self.text_adapted:
            return class_text_features(self.model, self.tokens, self.num_templates)
        if self._frozen_text is None:
            with torch.no_grad(), self.autocast():
                self._frozen_text = class_text_features(self.model, self.tokens, self.num_templates).float()
        return self._frozen_text

    def train_step(self) -> StepStats:
        t0 = time.perf_counter()
        self.model.train()
        idx = self.sampler.next()
        x = normalize(self.images[idx].to(self.device, non_blocking=True), self.model)
        if self.cfg.augment:
            x = random_resized_crop_flip(x, self.aug_gen, self.crop_scale)
        y = self.targets[idx].to(self.device)
        with self.autocast():
            img = F.normalize(self.model.encode_image(x), dim=-1)  # (B, D)
            txt = self.text_features()  # (C, D)
            logits = self.logit_scale * img.float() @ txt.float().t()  # (B, C)
            loss = F.cross_entropy(logits, y)
            reg = self.family.regularizer()
            total = loss if reg is None else loss + reg
        if not torch.isfinite(total):
            raise TrialError(f"diverged: non-finite loss ({total.item()}) at step {self.step + 1}")
        self.scaler.scale(total).backward()
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
        return StepStats(self.step, float(loss.detach()), lr, time.perf_counter() - t0)

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
