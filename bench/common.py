"""What the benchmarks share: devices, models, a synthetic few-shot workload, the peers' LoRA and their step.

Every benchmark uses open_clip models with random weights (``pretrained=None``: no download) and a synthetic
task (random uint8 images, ``C`` class names, one prompt template), so the suite runs offline anywhere.
The peers are trained by ``peer_step``, a plain loop with the same data path as ranksearch's ``Trainer``
(normalise, the same batched crop+flip augmentation, cross-entropy over ``scale · cos(image, class text)``,
AdamW), so step-time differences come from the adapter implementation and not from the loop around it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLASSNAMES = [f"class{i}" for i in range(1000)]


def resolve_device(spec: str) -> torch.device:
    """auto: CUDA when available, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    return device


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark setting. ``quick`` settings only check that everything executes."""

    model: str  # open_clip model name
    batch: int
    classes: int
    images: int  # training images (the few-shot set)
    repeats: int
    warmup: int


def build(name: str, device: torch.device, seed: int = 0) -> tuple[nn.Module, int]:
    """A frozen, randomly initialised open_clip model (same weights for the same seed) and its image size."""
    from ranksearch.models.clip import build_model

    torch.manual_seed(seed)
    return build_model(name, None, device=str(device))


@dataclass
class Workload:
    """A synthetic few-shot training set: uint8 images, labels in [0, C), prompt tokens (C * T, context)."""

    images: torch.Tensor
    labels: torch.Tensor
    tokens: torch.Tensor
    num_templates: int = 1

    @classmethod
    def make(cls, model_name: str, image_size: int, n_images: int, n_classes: int, seed: int = 0) -> Workload:
        import open_clip

        from ranksearch.training.text import tokenize_prompts

        g = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (n_images, 3, image_size, image_size), generator=g, dtype=torch.uint8)
        labels = torch.arange(n_images) % n_classes
        tokenizer = open_clip.get_tokenizer(model_name)
        tokens = tokenize_prompts(tokenizer, CLASSNAMES[:n_classes], ["a photo of a {}."])
        return cls(images, labels, tokens)


def lora_sites(model: nn.Module, towers: str = "both", layers="all", matrices=("q", "k", "v")):
    from ranksearch.adapters.placement import resolve_sites
    from ranksearch.models.clip import tower_blocks

    depths = {t: len(b) for t, b in tower_blocks(model).items()}
    return resolve_sites(towers, layers, list(matrices), depths)


def make_trainer(
    model: nn.Module,
    family_name: str,
    adapter_cfg,
    sites,
    work: Workload,
    device: torch.device,
    batch: int,
    precision: str = "fp32",
    augment: bool = True,
    steps: int = 10_000,
    **train_kw,
):
    """Attach ``family_name`` at ``sites`` and return ranksearch's ``Trainer`` for the workload (and the family)."""
    from ranksearch.adapters import get_family
    from ranksearch.adapters.inject import attach_adapters
    from ranksearch.config.schema import TrainConfig
    from ranksearch.training.loop import Trainer

    family = get_family(family_name)(adapter_cfg, steps)
    layers = attach_adapters(model, family, sites)
    text_adapted = any(layer.site.tower == "text" for layer in layers)
    cfg = TrainConfig(batch_size=batch, iterations=steps, augment=augment, **train_kw)
    from ranksearch.session import crop_scale_for

    image_size = work.images.shape[-1]
    trainer = Trainer(
        model, family, work.images, work.labels, work.tokens, work.num_templates, cfg, steps, device,
        precision, seed=0, text_adapted=text_adapted, crop_scale=crop_scale_for(image_size),
    )  # fmt: skip
    return trainer, family


# --- peers -----------------------------------------------------------------------------------------------------
class PlainLoraLinear(nn.Linear):
    """CLIP-LoRA's ``LinearLoRA`` written plainly: ``F.linear(x, W, b) + B(A(drop(x))) · α/√r``."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None)
        self.load_state_dict(base.state_dict())
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / math.sqrt(r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


class PlainMultiheadAttentionLoRA(nn.Module):
    """CLIP-LoRA's ``PlainMultiheadAttentionLoRA``: separate q/k/v/o linears (q/k/v with LoRA) + SDPA."""

    def __init__(self, mha: nn.MultiheadAttention, r: int, alpha: float, dropout: float):
        super().__init__()
        d = mha.embed_dim
        self.num_heads, self.head_dim, self.batch_first = mha.num_heads, d // mha.num_heads, mha.batch_first
        projs = []
        for i in range(3):
            lin = nn.Linear(d, d)
            lin.weight.data.copy_(mha.in_proj_weight.data[i * d : (i + 1) * d])
            lin.bias.data.copy_(mha.in_proj_bias.data[i * d : (i + 1) * d])
            projs.append(PlainLoraLinear(lin, r, alpha, dropout))
        self.q_proj, self.k_proj, self.v_proj = projs
        self.out_proj = nn.Linear(d, d)
        self.out_proj.load_state_dict(mha.out_proj.state_dict())
        self.out_proj.requires_grad_(False)

    def forward(self, x, k=None, v=None, need_weights=False, attn_mask=None, **_):
        if not self.batch_first:
            x = x.transpose(0, 1)
        n, length, d = x.shape
        q, k, v = (
            p(x).view(n, length, self.num_heads, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def attach_plain_lora(
    model: nn.Module, r: int = 2, alpha: float = 1.0, dropout: float = 0.0
) -> list[nn.Parameter]:
    """Swap every MHA of both towers for ``PlainMultiheadAttentionLoRA``; returns the trainable parameters."""
    from ranksearch.models.clip import tower_blocks

    model.requires_grad_(False)
    for blocks in tower_blocks(model).values():
        for block in blocks:
            block.attn = PlainMultiheadAttentionLoRA(block.attn, r, alpha, dropout).to(
                next(block.parameters()).device
            )
    return [p for p in model.parameters() if p.requires_grad]


def peft_available() -> str | None:
    """PEFT's version, or None when it is not installed (the PEFT rows are then reported as skipped)."""
    try:
        import peft

        return peft.__version__
    except ImportError:
        return None


def attach_peft_lora(
    model: nn.Module, r: int = 2, alpha: float = 1.0
) -> tuple[nn.Module, list[nn.Parameter]]:
    """PEFT's LoRA the way its docs say for ``nn.MultiheadAttention``: target the ``attn`` modules.

    PEFT then adapts the fused ``in_proj_weight`` (one rank-r update for q,k,v together) and ``out_proj``; it
    cannot leave out_proj out, and it has no input dropout on in_proj (it merges the update into the weight before
    every forward and unmerges after). ``use_rslora`` gives CLIP-LoRA's α/√r scale.
    """
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["attn"], use_rslora=True)
    model = inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model, [p for p in model.parameters() if p.requires_grad]


@dataclass
class PeerLoop:
    """The peers' training step: same data path, loss and optimiser as ranksearch's ``Trainer``."""

    model: nn.Module
    params: list[nn.Parameter]
    work: Workload
    device: torch.device
    batch: int
    precision: str = "fp32"
    text_adapted: bool = True
    # encode prompts only up to the batch's last end-of-text token, as ranksearch's Trainer does: the cut is a
    # property of CLIP's causal, EOT-pooled text tower, so the peers get it too when rows compare equal work
    cut_prompts: bool = False

    def __post_init__(self) -> None:
        from ranksearch.training.loop import autocast_for

        self.optimizer = torch.optim.AdamW(self.params, lr=2e-4, weight_decay=1e-2)
        self.gen = torch.Generator().manual_seed(0)
        self.autocast = autocast_for(self.device, self.precision)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.precision == "amp" and self.device.type == "cuda"
        )
        self.tokens = self.work.tokens.to(self.device)
        self._text: torch.Tensor | None = None

    def text(self) -> torch.Tensor:
        if self.text_adapted:
            return self._encode()
        if self._text is None:
            with torch.no_grad():
                self._text = self._encode()
        return self._text

    def _encode(self) -> torch.Tensor:
        from ranksearch.training.loop import fast_class_text_features
        from ranksearch.training.text import class_text_features

        if not self.cut_prompts:
            return class_text_features(self.model, self.tokens, self.work.num_templates)
        # the length ranksearch's text_prefix_length gives for these tokens (a causal mask, argmax pooling),
        # passed in: its check of the model's modules is ranksearch-specific and the peers' modules differ
        length = int(self.tokens.argmax(dim=-1).max()) + 1
        return fast_class_text_features(self.model, self.tokens, self.work.num_templates, length)

    def step(self) -> float:
        loss = batch_loss(self)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def step_fn(obj) -> Callable[[], object]:
    """A zero-argument callable doing one training step (``Trainer.train_step`` or ``PeerLoop.step``)."""
    return obj.train_step if hasattr(obj, "train_step") else obj.step


class FloorLoop:
    """The lower bound of an adapter step: the frozen stock model's forward plus the backward through the
    activations from the lowest adapted block up (no adapter, no optimiser, same data path and loss).

    A forward pre-hook on the lowest adapted block of each tower detaches its input and marks it as requiring
    grad, so autograd computes exactly the input gradients an adapter above it would need and nothing below.
    ``cut_prompts`` encodes prompts up to their EOT token as ranksearch's Trainer does for token-wise adapters.
    """

    def __init__(
        self,
        model: nn.Module,
        work: Workload,
        device: torch.device,
        batch: int,
        starts: dict[str, int],
        cut_prompts: bool = True,
        precision: str = "fp32",
    ):
        from ranksearch.models.clip import tower_blocks
        from ranksearch.training.loop import autocast_for

        self.model, self.work, self.device, self.batch = model, work, device, batch
        self.starts, self.cut_prompts = starts, cut_prompts
        self.tokens = work.tokens.to(device)
        self.gen = torch.Generator().manual_seed(0)
        self.autocast = autocast_for(device, precision)
        self._text: torch.Tensor | None = None
        blocks = tower_blocks(model)
        for tower, start in starts.items():
            if start < len(blocks[tower]):
                blocks[tower][start].register_forward_pre_hook(_leaf_input, with_kwargs=True)

    def text(self) -> torch.Tensor:
        from ranksearch.training.loop import fast_class_text_features
        from ranksearch.training.text import class_text_features

        encode = fast_class_text_features if self.cut_prompts else class_text_features
        if "text" in self.starts:
            return encode(self.model, self.tokens, self.work.num_templates)
        if self._text is None:
            with torch.no_grad():
                self._text = encode(self.model, self.tokens, self.work.num_templates)
        return self._text

    def step(self) -> float:
        loss = batch_loss(self)
        loss.backward()
        return float(loss.detach())


def batch_loss(loop: PeerLoop | FloorLoop) -> torch.Tensor:
    """One batch through the shared data path (as ``Trainer``: crop+flip, normalise) and the CLIP-LoRA loss."""
    from ranksearch.data.transforms import normalize
    from ranksearch.session import crop_scale_for
    from ranksearch.training.augment import AugmentSpec, augment_batch

    loop.model.train()
    idx = torch.randint(0, len(loop.work.labels), (loop.batch,), generator=loop.gen)
    images = loop.work.images
    spec = AugmentSpec(scale=crop_scale_for(images.shape[-1]))
    x = augment_batch(images, idx, images.shape[-1], loop.gen, spec)  # uint8 (B, 3, H, W)
    x = normalize(x.to(loop.device), loop.model)
    y = loop.work.labels[idx].to(loop.device)
    with loop.autocast():
        img = F.normalize(loop.model.encode_image(x), dim=-1)  # (B, D)
        logits = 100.0 * img.float() @ loop.text().float().t()  # (B, C)
        return F.cross_entropy(logits, y)


def _leaf_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: the block's input becomes a leaf that requires grad (where the backward stops)."""
    return (args[0].detach().requires_grad_(True), *args[1:]), kwargs


def lowest_adapted(sites) -> dict[str, int]:
    """Lowest adapted block per tower."""
    out: dict[str, int] = {}
    for s in sites:
        out[s.tower] = min(out.get(s.tower, s.layer), s.layer)
    return out


def unfuse_all(model: nn.Module) -> nn.Module:
    """Replace every block's ``nn.MultiheadAttention`` by ranksearch's ``UnfusedAttention`` (no adapter)."""
    from ranksearch.adapters.inject import unfuse_block_attention
    from ranksearch.models.clip import tower_blocks

    for blocks in tower_blocks(model).values():
        for block in blocks:
            unfuse_block_attention(block)
    return model
