"""The adapted model of one trial, and what every trial mode does with it: train on a task, evaluate a task.

``run_trial`` (one task) and ``run_continual`` (a sequence of tasks) share this, so model construction,
placement, text features and evaluation exist once.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn

from ranksearch.config.schema import TrialConfig
from ranksearch.data.task import Task
from ranksearch.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([("model.device", f"{spec!r} requested but CUDA is not available on this machine")])
    return device


def crop_scale_for(image_size: int) -> tuple[float, float]:
    """CLIP-LoRA's (0.08, 1) area range suits 224 px photos; on tiny renders it would crop the object away."""
    return (0.08, 1.0) if image_size >= 96 else (0.5, 1.0)


def adapter_init_seed(seed: int) -> int:
    """The global-generator seed adapters are initialised under: derived from the trial seed, so a random-init
    model (built under ``seed``) and its adapters do not draw the same numbers."""
    return int.from_bytes(hashlib.sha256(f"adapter-init:{seed}".encode()).digest()[:7], "big")


class TrialSession:
    """A frozen open_clip model with the config's adapter attached at the config's placement.

    ``model`` (model, image size, tokenizer) attaches to an already built model instead of building one.

    Attributes:
        model, family, layers: the adapted model, the family object and its adapter layers.
        image_size: the model's input side; tokenizer: the model's tokenizer.
        text_adapted: whether any adapter sits in the text tower (then text features need gradients).
    """

    def __init__(
        self, config: TrialConfig, total_steps: int, model: tuple[nn.Module, int, object] | None = None
    ):
        import open_clip

        from ranksearch.adapters import get_family
        from ranksearch.adapters.inject import attach_adapters
        from ranksearch.adapters.placement import resolve_sites
        from ranksearch.models.clip import build_model, tower_blocks
        from ranksearch.training.loop import autocast_for
        from ranksearch.training.threads import apply_threads

        self.config = config
        self.device = resolve_device(config.model.device)
        if model is None:
            self.model, self.image_size = build_model(
                config.model.name, config.model.pretrained, device=str(self.device)
            )
            self.tokenizer = open_clip.get_tokenizer(config.model.name)
            apply_threads(self.model, config.model.threads, self.device)
        else:  # a pack's shared frozen model, shown as this member's view (ranksearch.training.packed)
            self.model, self.image_size, self.tokenizer = model
        p = config.placement
        depths = {tower: len(blocks) for tower, blocks in tower_blocks(self.model).items()}
        try:
            sites = resolve_sites(p.towers, p.layers, p.matrices, depths)
        except ValueError as e:
            raise ConfigError([("placement", str(e))]) from None
        pattern = getattr(config.adapter, "rank_pattern", None) or {}
        unknown = sorted(set(pattern) - {s.key for s in sites})
        if unknown:
            raise ConfigError(
                [
                    (
                        "adapter.rank_pattern",
                        f"{unknown[:3]} are not sites of this placement ({len(sites)} sites)",
                    )
                ]
            )
        self.family = self.family_class(get_family(config.adapter.family))(config.adapter, total_steps)
        # the adapter's initialisation depends on the seed only, not on how (or whether) this process built the
        # model: a member of a pack (ranksearch.training.packed) starts exactly like the same trial alone
        torch.manual_seed(adapter_init_seed(config.seed))
        self.layers = attach_adapters(self.model, self.family, sites)
        self.text_adapted = any(layer.site.tower == "text" for layer in self.layers)
        self.autocast = autocast_for(self.device, config.model.precision)
        if config.model.compile:
            self.model.encode_image = torch.compile(self.model.encode_image)
        log.info(
            "%s adapter on %d sites, %d trainable parameters",
            self.family.name,
            len(self.layers),
            self.trainable_params,
        )

    def trainer_type(self, default: type) -> type:
        """The ``Trainer`` class to build (hook: a one-shot supernet trains with the sandwich rule)."""
        return default

    def family_class(self, registered: type) -> type:
        """The family class to build (hook: a one-shot supernet swaps in its nested-rank layers)."""
        return registered

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.family.trainable_parameters())

    def trainer_for(self, task: Task, total_steps: int, prior_classes: int = 0):
        """A ``Trainer`` over ``task``'s training split (labels mapped to the training classes).

        ``prior_classes``: classes of earlier continual tasks (CoDyRA's symmetric loss counts them).
        """
        from ranksearch.training.loop import Trainer
        from ranksearch.training.text import tokenize_prompts

        train_classes = task.train_classes
        # labels -> positions in the training class list (base classes only under base-to-new)
        to_train = torch.full((len(task.classnames),), -1, dtype=torch.long)
        to_train[torch.as_tensor(train_classes)] = torch.arange(len(train_classes))
        tokens = tokenize_prompts(self.tokenizer, [task.classnames[c] for c in train_classes], task.templates)
        c = self.config
        return self.trainer_type(Trainer)(
            self.model, self.family, task.train.images, to_train[task.train.labels], tokens, len(task.templates),
            c.train, total_steps, self.device, c.model.precision, c.seed, self.text_adapted,
            crop_scale=c.train.crop_scale or crop_scale_for(self.image_size),
            train_originals=task.train.originals, prior_classes=prior_classes,
        )  # fmt: skip

    def text_features(self, classnames: list[str], templates: list[str]) -> torch.Tensor:
        """(C, D) class features under the current adapter, without gradients."""
        from ranksearch.training.text import class_text_features, tokenize_prompts

        tokens = tokenize_prompts(self.tokenizer, classnames, templates).to(self.device)
        with torch.no_grad(), self.autocast():
            return class_text_features(self.model, tokens, len(templates)).float()

    def evaluate(self, task: Task, split_name: str, likelihood: bool = False) -> dict[str, float]:
        """``<split>/<metric>`` for val or test; "test" adds every extra test set as ``test/<name>/<metric>``.
        ``likelihood`` adds ``<split>/loglik`` (``evaluate_split``) at the training loss's logit scale.

        An extra set in the task's label space keeps the task's base/new split; another dataset is scored by
        accuracy over its own classes.
        """
        from ranksearch.training.evaluate import evaluate_split
        from ranksearch.training.loop import loss_logit_scale

        self.model.eval()
        text = self.text_features(task.classnames, task.templates)
        kw = {"device": self.device, "batch_size": self.config.eval.batch_size, "autocast": self.autocast}
        split = getattr(task, split_name)
        scale = loss_logit_scale(self.config.train.logit_scale, self.model) if likelihood else None
        metrics = {
            f"{split_name}/{k}": v
            for k, v in evaluate_split(
                self.model, task, split, text, split_name=split_name, logit_scale=scale, **kw
            ).items()
        }
        if split_name == "test":
            for name, (classnames, extra) in task.extra_tests.items():
                if classnames == task.classnames:
                    sub, extra_text = task, text
                else:
                    sub = Task(name, classnames, task.templates, extra, extra, extra)
                    extra_text = self.text_features(classnames, task.templates)
                for k, v in evaluate_split(self.model, sub, extra, extra_text, **kw).items():
                    metrics[f"test/{name}/{k}"] = v
        return metrics
