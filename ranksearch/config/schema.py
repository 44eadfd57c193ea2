"""The trial config: one pydantic schema for everything a single trial needs.

Sections: ``model``, ``data``, ``adapter`` (a family-specific section chosen by ``adapter.family``),
``placement``, ``train``, ``eval``, ``tracking``. Every section forbids unknown keys. YAML in and out is in
``ranksearch.config.load``; the sweep's search-space format (``ranksearch.space``) compiles to these too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from ranksearch.adapters.configs import family_configs
from ranksearch.config.base import Name, Section, Seed, cross_field, suggest
from ranksearch.config.presets import PRESET_NAMES, apply_preset

LAYER_POSITIONS = ("all", "bottom", "mid", "up", "half-up", "half-bottom", "top1", "top2", "top3")
MATRICES = ("q", "k", "v", "o", "fc", "proj")
MAX_LAYER = 1023  # the deepest open_clip tower has 56 blocks
MAX_STEPS = 10_000_000  # optimizer steps of one trial (CLIP-LoRA's longest runs take 8,000)
_RANGE = re.compile(r"^(\d{1,4})-(\d{1,4})$")
_DEVICE = re.compile(r"^(?:auto|cpu|mps|cuda(?::\d{1,3})?)$")


class ModelConfig(Section):
    """Which open_clip model to adapt."""

    name: str = Field(
        "rs-tiny-clip", description="open_clip model name (built-in or a ranksearch tiny config)"
    )
    pretrained: str | None = Field(
        "shapeworld",
        description=(
            "'shapeworld' (the built-in offline checkpoint, pretrained on first use), an open_clip pretrained tag "
            "such as 'openai', a checkpoint file path, 'local-dir:DIR', or null for random init"
        ),
    )
    precision: Literal["fp32", "amp"] = Field(
        "fp32", description="amp: fp16 autocast + GradScaler on CUDA, bf16 autocast on CPU"
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', 'mps'")
    compile: bool = Field(False, description="wrap the model in torch.compile")
    threads: int | Literal["auto"] = Field(
        "auto",
        description="torch threads on CPU: auto = 1 for models under 20 M parameters (dispatch-bound: a second "
        "thread only slows them), else every CPU the trial has (a sweep's resources.cpu); or a number",
    )

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, v: int | str) -> int | str:
        if v != "auto" and not 1 <= v <= 1024:
            raise ValueError(f"threads must be 'auto' or in [1, 1024], got {v}")
        return v

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        from ranksearch.config.models import known_models

        known = known_models()
        if known and v not in known:
            raise ValueError(f"unknown open_clip model {v!r}{suggest(v, known)}; see open_clip.list_models()")
        return v

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError(f"{v!r} is not a device: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v


class DataConfig(Section):
    """The downstream task and its protocol."""

    task: str = Field(
        "shapeworld", description="shapeworld | world | fashion-mnist | a CoOp dataset name | imagefolder"
    )
    root: str | None = Field(None, description="data root ($DATA) for on-disk datasets")
    protocol: Literal["base2new", "fewshot", "cross-dataset", "domain-shift", "continual"] = Field(
        "base2new",
        description="base2new (CoCoOp/DRA): train on base classes, report base/new/HM; fewshot (CLIP-LoRA): all "
        "classes, top-1; cross-dataset: few-shot on this task, zero-shot on data.eval_tasks (test/cross/avg); "
        "domain-shift: few-shot on this task, evaluated on its domain variants (test/dg/avg); continual "
        "(CoDyRA): few-shot on each task of data.sequence in turn, merging at task boundaries (cl/transfer, "
        "cl/average, cl/last)",
    )
    sequence: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="continual: the task sequence; shapeworld domains (e.g. [clutter, lowcontrast, bright]) for "
        "task shapeworld, else task names (each with this section's other settings)",
    )
    shots: int = Field(16, ge=1, le=10_000, description="training images per class")
    val_shots: int | None = Field(
        None, ge=1, le=10_000, description="validation images per class; default min(shots, 4)"
    )
    split_seed: Seed = Field(
        1,
        description="seed of the few-shot sample and of the pseudo-new draw; every trial of a sweep shares it",
    )
    val_new_fraction: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="base2new: share of the base classes held out of training as pseudo-new classes, so "
        "val/new and val/hm estimate new-class generalisation without any real new class (docs/data.md); "
        "0 = train on every base class, validation then reports val/base only",
    )
    domain: str | None = Field(
        None,
        description="shapeworld: the rendering domain (default clutter); world: the world task (mixed | pixel | "
        "concept | words, default mixed)",
    )
    test_per_class: int = Field(40, ge=1, le=10_000, description="shapeworld, world: test images per class")
    template: str | None = Field(
        None,
        description="prompt template with one '{}', or 'generic' ('a photo of a {}.', CLIP-LoRA) or 'coop' "
        "(CoOp's per-dataset template); null = the task's default",
    )
    cache_dir: str | None = Field(
        None,
        description="cache root for decoded image tensors and few-shot split files; default $RANKSEARCH_CACHE "
        "or ~/.cache/ranksearch (files go under <cache_dir>/data)",
    )
    eval_tasks: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="extra test-only evaluation sets (e.g. imagenet_sketch, imagenetv2, imagenet_a, imagenet_r, "
        "or another CoOp dataset for cross-dataset transfer), read from data.root into Task.extra_tests",
    )
    max_test_per_class: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="real datasets (fashion-mnist, CoOp, imagefolder, eval_tasks): cap the test split at this many "
        "images per class (seeded) for speed; null = the full test split",
    )
    train_max_side: int | None = Field(
        None,
        ge=16,
        le=65_536,
        description="training images keep their original pixels for the train-time crop (~3·h·w bytes each); this "
        "caps their shorter side (bicubic) to save memory, at the price of a crop no longer bit-identical to the "
        "papers' pipeline; null = whole originals",
    )

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str | None) -> str | None:
        if v is None or v in ("generic", "coop"):
            return v
        if v.count("{}") != 1 or v.count("{") != 1 or v.count("}") != 1:
            raise ValueError(
                f"{v!r}: a template holds exactly one '{{}}' (where the class name goes) and no other brace, "
                "e.g. 'a photo of a {}.'; or use 'generic' or 'coop'"
            )
        return v

    @model_validator(mode="after")
    def _check_sequence(self) -> DataConfig:
        if self.protocol == "continual" and len(self.sequence) < 2:
            raise ValueError("protocol 'continual' needs data.sequence with at least two tasks")
        if self.sequence and self.protocol != "continual":
            raise ValueError(f"data.sequence is only used by protocol 'continual', not {self.protocol!r}")
        return self

    def validation_metrics(self) -> tuple[str, ...]:
        """The ``val/`` metrics a trial of this data section reports (objectives must be among them)."""
        if self.protocol == "base2new":
            return ("val/base", "val/new", "val/hm") if self.val_new_fraction > 0 else ("val/base",)
        if self.protocol == "continual":  # the current task's, and the mean over the tasks learned so far
            return ("val/acc", "val/seen_acc")
        return ("val/acc",)


class PlacementConfig(Section):
    """Where adapters go: towers × layers × matrices."""

    towers: Literal["vision", "text", "both"] = "both"
    layers: str | list[int] = Field(
        "all",
        description="all | bottom | mid | up | half-up | half-bottom | top1 | top2 | top3 | 'A-B' | [i, j, ...]",
    )
    matrices: list[Literal["q", "k", "v", "o", "fc", "proj"]] = Field(
        default_factory=lambda: ["q", "k", "v"],
        description="attention q,k,v,o and MLP fc (c_fc), proj (c_proj)",
    )

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, v: str | list[int]) -> str | list[int]:
        if isinstance(v, str):
            m = _RANGE.match(v)
            if v not in LAYER_POSITIONS and not (m and int(m.group(1)) <= int(m.group(2))):
                raise ValueError(
                    f"{v!r} is not one of {', '.join(LAYER_POSITIONS)} or a range 'A-B' with A <= B"
                )
        elif not v or any(i < 0 or i > MAX_LAYER for i in v):
            raise ValueError(f"a layer list must be non-empty and hold indices in [0, {MAX_LAYER}]")
        elif len(set(v)) != len(v):
            raise ValueError(f"duplicate layer indices in {v}")
        return v

    @field_validator("matrices")
    @classmethod
    def _check_matrices(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one matrix is needed")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate matrices in {v}")
        return v


class TrainConfig(Section):
    """Optimisation (CLIP-LoRA defaults: AdamW, cosine, iterations = multiplier × shots)."""

    lr: float = Field(2e-4, gt=0, le=1.0)
    weight_decay: float = Field(1e-2, ge=0, le=10.0, description="AdamW's decoupled weight decay")
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = Field(32, ge=1, le=65_536)
    iterations_per_shot: int = Field(
        500, ge=1, le=MAX_STEPS, description="total steps = this × shots (CLIP-LoRA)"
    )
    iterations: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="explicit total steps; overrides iterations_per_shot"
    )
    warmup_steps: int = Field(
        0, ge=0, le=MAX_STEPS, description="linear warm-up steps (fewer than the total)"
    )
    eta_min: float = Field(1e-6, ge=0, le=1.0, description="cosine schedule floor (at most lr)")
    logit_scale: float | None = Field(
        None, gt=0, description="fixed logit scale; null = the model's own (frozen)"
    )
    augment: bool = Field(
        True,
        description="train-time augmentation: a random resized crop of the original image (train.crop) and a "
        "horizontal flip (train.flip); false = CLIP's evaluation preprocessing only",
    )
    crop: bool = Field(
        True,
        description="torchvision RandomResizedCrop (bicubic) of the original image; false = the evaluation resize "
        "+ centre crop (then the flip, if on)",
    )
    crop_scale: tuple[float, float] | None = Field(
        None,
        description="area range of the random crop; null = (0.08, 1) at >= 96 px (CLIP-LoRA), (0.5, 1) below",
    )
    crop_ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="aspect-ratio range of the random crop (torchvision's default)"
    )
    flip: bool = Field(True, description="random horizontal flip with p = 0.5")
    loss: Literal["ce", "symmetric"] = Field(
        "ce",
        description="ce: cross-entropy of each image over the class texts (CLIP-LoRA); symmetric: plus CoDyRA's "
        "text->image cross-entropy of each class text over the batch's images (added when the vision tower "
        "is adapted, as in CoDyRA's code)",
    )
    grad_clip: float | None = Field(None, gt=0, le=1e6)
    max_seconds: float | None = Field(
        None, gt=0, le=1e8, description="stop training after this wall time (seconds)"
    )
    max_memory_mb: float | None = Field(
        None,
        gt=0,
        le=1e9,
        description="fail the trial (status failed, not a crash) when its memory exceeds this many MiB: peak "
        "allocated GPU memory on CUDA, else the worker process's resident memory (Python and libraries "
        "included, ~0.5 GiB with torch loaded)",
    )
    cache_frozen_prefix: bool = Field(
        False,
        description="with augment=false: compute the frozen vision blocks below the lowest adapted one once per "
        "training image and start later steps from the cached activations (same numbers, less compute; memory: "
        "images × tokens × width × 4 bytes, skipped above 4 GiB); ignored with a warning when augment is on",
    )

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v

    @field_validator("crop_scale")
    @classmethod
    def _check_crop_scale(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {v}")
        return v

    @field_validator("crop_ratio")
    @classmethod
    def _check_crop_ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 100:
            raise ValueError(f"crop_ratio must be (low, high) with 0 < low <= high, got {v}")
        return v

    @model_validator(mode="after")
    def _check_schedule(self) -> TrainConfig:
        if self.eta_min > self.lr:
            raise cross_field([("eta_min", f"the cosine floor {self.eta_min} is above lr {self.lr}")])
        return self

    def total_steps(self, shots: int) -> int:
        return self.iterations if self.iterations is not None else self.iterations_per_shot * shots


class EvalConfig(Section):
    """When and how to evaluate. Selection uses the validation split only; the test split is for the report."""

    evals: int = Field(
        4,
        ge=1,
        le=100_000,
        description="evaluations on the validation split during training (last at the end); at most one per step",
    )
    schedule: Literal["linear", "geometric"] = Field(
        "linear",
        description="linear: evenly spaced; geometric: each evaluation √2 × the previous step (25 % and 50 % of "
        "the steps are evaluation points when evals >= 5)",
    )
    batch_size: int = Field(256, ge=1, le=65_536)
    zero_shot: bool = Field(True, description="also evaluate the unadapted model (before training)")


class TrackingConfig(Section):
    """MLflow logging of the trial."""

    enabled: bool = True
    uri: str | None = Field(
        None,
        description="tracking URI; default $MLFLOW_TRACKING_URI or sqlite:///./ranksearch-runs/mlflow.db",
    )
    experiment: Name = Field("ranksearch", description="MLflow experiment (no '/')")
    run_name: Name | None = Field(None, description="MLflow run name (no '/'); default trial-<family>")
    log_every: int = Field(10, ge=1, le=MAX_STEPS, description="log training metrics every N steps (batched)")
    allocation_every: int = Field(
        10, ge=1, le=MAX_STEPS, description="record the per-layer rank allocation every N steps"
    )

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or v != v.strip()):
            raise ValueError(f"{v!r} is not a tracking URI (e.g. sqlite:///path/mlflow.db, http://host:5000)")
        return v


def _adapter_union() -> Any:
    configs = tuple(family_configs().values())
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[configs], Field(discriminator="family")]  # noqa: UP007


AdapterConfig = _adapter_union()


DEFAULT_FAMILY = "lora"


def _default_adapter() -> Any:
    return family_configs()[DEFAULT_FAMILY]()


class TrialConfig(Section):
    """Everything one trial needs. Load it with ``ranksearch.config.load_trial_config``."""

    preset: Literal[PRESET_NAMES] | None = Field(  # type: ignore[valid-type]
        None,
        description="a paper's recipe: sets every field its code sets (ranksearch.config.presets, docs/methods.md); "
        "fields written in the config override it",
    )
    seed: Seed = Field(1, description="seed of initialisation, data order and augmentation")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    adapter: AdapterConfig = Field(default_factory=_default_adapter)  # type: ignore[valid-type]
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_family(cls, data: Any) -> Any:
        """Fill in the preset (if any) under the user's fields; then an adapter section without ``family`` means the
        default family (lora), as everywhere else."""
        data = apply_preset(data)
        if (
            isinstance(data, dict)
            and isinstance(data.get("adapter"), dict)
            and "family" not in data["adapter"]
        ):
            data = {**data, "adapter": {"family": DEFAULT_FAMILY, **data["adapter"]}}
        return data

    @model_validator(mode="after")
    def _check_across_sections(self) -> TrialConfig:
        """Relations between sections: the schedule fits the step budget, the layers exist in the model."""
        problems: list[tuple[str, str]] = []
        total = self.train.total_steps(self.data.shots)
        steps_field = "train.iterations" if self.train.iterations is not None else "train.iterations_per_shot"
        if total > MAX_STEPS:
            problems.append((steps_field, f"{total:,} training steps; at most {MAX_STEPS:,}"))
        elif self.eval.evals > total:
            problems.append(("eval.evals", f"{self.eval.evals} evaluations but only {total} training steps"))
        if self.train.warmup_steps >= total > 0 and self.train.warmup_steps > 0:
            problems.append(
                ("train.warmup_steps", f"{self.train.warmup_steps} warm-up steps of {total} training steps")
            )
        problems += self._layer_problems()
        if problems:
            raise cross_field(problems)
        return self

    def _layer_problems(self) -> list[tuple[str, str]]:
        """``placement.layers`` against the model's tower depths, when its architecture file says them; then a
        rank budget's per-module minimum against the number of adapted modules."""
        from ranksearch.adapters.placement import layer_indices
        from ranksearch.config.models import tower_depths

        pretrained = self.model.pretrained or ""
        depths = None if pretrained.startswith("local-dir:") else tower_depths(self.model.name)
        if not depths:
            return []
        towers = ["vision", "text"] if self.placement.towers == "both" else [self.placement.towers]
        misfits, modules = [], 0
        for tower in towers:
            if tower not in depths:
                return []  # not an open_clip transformer tower: checked when the model is built
            try:
                modules += len(layer_indices(self.placement.layers, depths[tower])) * len(
                    self.placement.matrices
                )
            except ValueError:
                misfits.append(f"{tower}: {depths[tower]} blocks, 0-{depths[tower] - 1}")
        if misfits:
            where = f"{self.placement.layers!r} is out of range for {self.model.name} ({'; '.join(misfits)})"
            return [("placement.layers", where)]
        budget = getattr(self.adapter, "budget", None)
        if (
            budget is not None
            and budget.total_rank is not None
            and budget.min_rank * modules > budget.total_rank
        ):
            return [
                (
                    "adapter.budget.min_rank",
                    f"min_rank {budget.min_rank} × {modules} adapted modules = {budget.min_rank * modules} exceeds "
                    f"total_rank {budget.total_rank}",
                )
            ]
        return []
