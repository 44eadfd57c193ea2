"""Per-paper presets: ``preset: clip-lora | codyra | rlrr | adalora | dra-style`` in a trial config (or a search
space's ``base``) sets every field the paper's code sets, each value with the file and line it comes from.

A preset is a layer under the user's config: fields the user writes win (``docs/methods.md`` lists every preset
field, its source and what ranksearch does differently). Fields a source does not set keep ranksearch's defaults and
are not part of the preset. Two rules keep overrides sensible: an adapter section naming another family drops the
preset's adapter fields, and a user's ``train.iterations_per_shot`` (or ``train.iterations``) replaces the preset's
iterations rule rather than being silently outranked by it.

Sources (repository @ commit, read for this table):

* CLIP-LoRA: MaxZanella/CLIP-LoRA @ 358f0d7.
* CoDyRA: Artificer-AI-Lab/CoDyRA @ c1691e4 (``runner_codyra.sh`` over ``main.py``'s defaults, as the README runs it).
* RLRR: zstarN70/RLRR @ 287c772, VTAB-1k recipe (``train_vtab.py``, ``RLRRDatasets/VTABConfig.py``).
* AdaLoRA: huggingface/peft @ 5d602fd ``AdaLoraConfig`` defaults; placement and optimiser from the authors'
  QingruZhang/AdaLoRA README.
* DRA-style: ranksearch's reconstruction from the abstract (no public code), docs/methods.md, DRA-style.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

CLIP_LORA = "MaxZanella/CLIP-LoRA@358f0d7"
CODYRA = "Artificer-AI-Lab/CoDyRA@c1691e4"
RLRR = "zstarN70/RLRR@287c772"
PEFT = "huggingface/peft@5d602fd"
ADALORA = "QingruZhang/AdaLoRA"


@dataclass(frozen=True)
class Preset:
    """A named recipe: dotted trial-config paths -> (value, where the value comes from)."""

    name: str
    summary: str
    fields: dict[str, tuple[Any, str]]

    @property
    def family(self) -> str:
        return self.fields["adapter.family"][0]

    def tree(self) -> dict[str, Any]:
        """The preset as a nested partial trial config."""
        out: dict[str, Any] = {}
        for path, (value, _) in self.fields.items():
            node = out
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = copy.deepcopy(value)
        return out


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "clip-lora",
            "CLIP-LoRA few-shot recipe (Zanella & Ben Ayed, CVPRW 2024)",
            {
                "adapter.family": ("lora", f"{CLIP_LORA} loralib/layers.py:152 (LinearLoRA)"),
                "adapter.r": (2, f"{CLIP_LORA} run_utils.py:35"),
                "adapter.alpha": (1.0, f"{CLIP_LORA} run_utils.py:36"),
                "adapter.scaling": ("sqrt", f"{CLIP_LORA} loralib/layers.py:42 (alpha/sqrt(r))"),
                "adapter.dropout": (0.25, f"{CLIP_LORA} run_utils.py:37"),
                "placement.towers": ("both", f"{CLIP_LORA} run_utils.py:33"),
                "placement.layers": ("all", f"{CLIP_LORA} run_utils.py:32"),
                "placement.matrices": (["q", "k", "v"], f"{CLIP_LORA} run_utils.py:34"),
                "train.lr": (2e-4, f"{CLIP_LORA} run_utils.py:28"),
                "train.betas": ((0.9, 0.999), f"{CLIP_LORA} lora.py:75"),
                "train.weight_decay": (1e-2, f"{CLIP_LORA} lora.py:75"),
                "train.batch_size": (32, f"{CLIP_LORA} run_utils.py:30"),
                "train.iterations_per_shot": (
                    500,
                    f"{CLIP_LORA} run_utils.py:29, lora.py:73 (n_iters × shots)",
                ),
                "train.warmup_steps": (0, f"{CLIP_LORA} lora.py:76 (CosineAnnealingLR, no warm-up)"),
                "train.eta_min": (1e-6, f"{CLIP_LORA} lora.py:76"),
                "train.logit_scale": (100.0, f"{CLIP_LORA} main.py:22"),
                "train.augment": (True, f"{CLIP_LORA} main.py:38-43"),
                "train.crop": (True, f"{CLIP_LORA} main.py:39"),
                "train.crop_scale": ((0.08, 1.0), f"{CLIP_LORA} main.py:39 (bicubic)"),
                "train.crop_ratio": ((3 / 4, 4 / 3), f"{CLIP_LORA} main.py:39 (torchvision's default ratio)"),
                "train.flip": (True, f"{CLIP_LORA} main.py:40 (p = 0.5)"),
                "train.loss": ("ce", f"{CLIP_LORA} lora.py:112-113"),
                "model.precision": ("amp", f"{CLIP_LORA} lora.py:82, 98-108 (fp16 autocast + GradScaler)"),
                "data.template": (
                    "generic",
                    f"{CLIP_LORA} datasets/dtd.py:10 ('a photo of a {{}}.' everywhere)",
                ),
            },
        ),
        Preset(
            "codyra",
            "CoDyRA continual recipe (Lu et al., arXiv 2412.01004), the authors' runner",
            {
                "adapter.family": ("codyra", f"{CODYRA} runner_codyra.sh:8"),
                "adapter.r": (16, f"{CODYRA} runner_codyra.sh:9"),
                "adapter.kappa_max": (0.005, f"{CODYRA} runner_codyra.sh:15"),
                "adapter.lambda_num": (50, f"{CODYRA} main.py:64"),
                "adapter.dense_frac": (0.5, f"{CODYRA} runner_codyra.sh:16"),
                "adapter.threshold": ("code", f"{CODYRA} models/codyra.py train_model (prune block)"),
                "adapter.gate_init": (
                    "randn",
                    f"{CODYRA} loralib/codyra.py codyra_Linear (torch.randn(1, r))",
                ),
                "adapter.dropout": (0.0, f"{CODYRA} loralib/codyra.py codyra_Linear (lora_dropout=0.)"),
                "placement.towers": ("both", f"{CODYRA} runner_codyra.sh:10 (TARGET_ENCODER=all)"),
                "placement.layers": ("all", f"{CODYRA} models/codyra.py apply_lora (every resblock)"),
                "placement.matrices": (
                    ["q", "k", "v", "o", "fc", "proj"],
                    f"{CODYRA} runner_codyra.sh:11 (qkvoinout), main.py:27",
                ),
                "train.lr": (5e-4, f"{CODYRA} runner_codyra.sh:13"),
                "train.betas": ((0.9, 0.9999), f"{CODYRA} models/codyra.py train_model (AdamW betas)"),
                "train.weight_decay": (0.0, f"{CODYRA} main.py:46"),
                "train.batch_size": (64, f"{CODYRA} main.py:42"),
                "train.iterations": (500, f"{CODYRA} runner_codyra.sh:14 (per task)"),
                "train.warmup_steps": (0, f"{CODYRA} main.py:48"),
                "train.eta_min": (0.0, f"{CODYRA} utils.py cosine_lr (0.5·(1 + cos)·lr)"),
                "train.logit_scale": (None, f"{CODYRA} models/codyra.py train_model (logit_scale.exp())"),
                "train.augment": (True, f"{CODYRA} models/codyra.py get_codyra (open_clip train transform)"),
                "train.crop": (
                    True,
                    "open_clip 3.3 transform.py image_transform (RandomResizedCrop, bicubic)",
                ),
                "train.crop_scale": ((0.9, 1.0), "open_clip 3.3 transform.py AugmentationCfg.scale"),
                "train.crop_ratio": (
                    (3 / 4, 4 / 3),
                    "open_clip 3.3 transform.py (torchvision's default ratio)",
                ),
                "train.flip": (False, "open_clip 3.3 transform.py image_transform (no flip)"),
                "train.loss": ("symmetric", f"{CODYRA} models/codyra.py train_model (ce_loss + loss_ce_t)"),
                "model.precision": ("fp32", f"{CODYRA} models/codyra.py train_model (no autocast)"),
                "data.template": ("coop", f"{CODYRA} models/codyra.py finetune (dataset.template[0])"),
            },
        ),
        Preset(
            "rlrr",
            "RLRR VTAB-1k recipe (Dong et al., CVPR 2024), on the CLIP image tower",
            {
                "adapter.family": ("rlrr", f"{RLRR} models/networks.py:37 (RLRRLinear)"),
                "adapter.init": ("kaiming", f"{RLRR} models/networks.py:56-58"),
                "adapter.r": (1, f"{RLRR} models/networks.py:46-47 (one scale vector per side)"),
                "adapter.ssf": (True, f"{RLRR} models/networks.py:169-170, 222, 253"),
                "adapter.sides": ("both", f"{RLRR} models/networks.py:68"),
                "adapter.residual": (True, f"{RLRR} models/networks.py:68 (+ self.mlp.weight)"),
                "placement.towers": ("vision", f"{RLRR} models/networks.py:289 (a ViT image model)"),
                "placement.layers": ("all", f"{RLRR} models/networks.py:218-219"),
                "placement.matrices": (
                    ["q", "k", "v", "o", "fc", "proj"],
                    f"{RLRR} models/networks.py:83-86, 123-124",
                ),
                "train.lr": (1e-3, f"{RLRR} RLRRDatasets/VTABConfig.py:15 (caltech101; 1e-3..1e-2 per task)"),
                "train.betas": ((0.9, 0.999), f"{RLRR} train_vtab.py:165 (AdamW defaults)"),
                "train.weight_decay": (5e-5, f"{RLRR} RLRRDatasets/VTABConfig.py:19"),
                "train.batch_size": (32, f"{RLRR} RLRRDatasets/VTABConfig.py:12"),
                "train.iterations": (
                    3520,
                    f"{RLRR} train_vtab.py:31, 42 ((100 + 10 cooldown) epochs × 32 steps of 1000 images)",
                ),
                "train.warmup_steps": (320, f"{RLRR} train_vtab.py:39 (10 epochs × 32 steps)"),
                "train.eta_min": (1e-8, f"{RLRR} RLRRDatasets/VTABConfig.py:17 (min_lr)"),
                "train.augment": (True, f"{RLRR} RLRRDatasets/VTABDataLoader.py:92-96"),
                "train.crop": (False, f"{RLRR} RLRRDatasets/VTABDataLoader.py:93 (resize only)"),
                "train.flip": (True, f"{RLRR} train_vtab.py:36, RLRRDatasets/VTABDataLoader.py:94"),
                "train.loss": ("ce", f"{RLRR} train_vtab.py:163"),
                "model.precision": ("amp", f"{RLRR} train_vtab.py:116, 164 (autocast + NativeScaler)"),
            },
        ),
        Preset(
            "adalora",
            "AdaLoRA as PEFT configures it (Zhang et al., ICLR 2023)",
            {
                "adapter.family": ("adalora", f"{PEFT} src/peft/tuners/adalora/config.py:24 (AdaLoraConfig)"),
                "adapter.init_r": (12, f"{PEFT} src/peft/tuners/adalora/config.py:60"),
                "adapter.target_r": (8, f"{PEFT} src/peft/tuners/adalora/config.py:59"),
                "adapter.t_init_frac": (0.0, f"{PEFT} src/peft/tuners/adalora/config.py:61 (tinit = 0)"),
                "adapter.t_final_frac": (0.0, f"{PEFT} src/peft/tuners/adalora/config.py:62 (tfinal = 0)"),
                "adapter.delta_t": (1, f"{PEFT} src/peft/tuners/adalora/config.py:63"),
                "adapter.beta1": (0.85, f"{PEFT} src/peft/tuners/adalora/config.py:64"),
                "adapter.beta2": (0.85, f"{PEFT} src/peft/tuners/adalora/config.py:65"),
                "adapter.orth_reg_weight": (0.5, f"{PEFT} src/peft/tuners/adalora/config.py:66"),
                "adapter.alpha": (8.0, f"{PEFT} src/peft/tuners/lora/config.py:633 (lora_alpha)"),
                "adapter.dropout": (0.0, f"{PEFT} src/peft/tuners/lora/config.py:634 (lora_dropout)"),
                "placement.matrices": (
                    ["q", "k", "v", "o", "fc", "proj"],
                    f"{ADALORA} README.md:93 (--lora_module: every weight matrix)",
                ),
                "train.lr": (5e-4, f"{ADALORA} README.md:97"),
                "train.batch_size": (32, f"{ADALORA} README.md:97"),
                "train.weight_decay": (0.0, f"{ADALORA} README.md:99"),
                "train.betas": (
                    (0.9, 0.999),
                    "[3rd] transformers TrainingArguments adam_beta1/adam_beta2 defaults (README.md:84 trains with run_glue.py)",
                ),
                "model.precision": ("fp32", f"{ADALORA} README.md:83-105 (no --fp16)"),
            },
        ),
        Preset(
            "dra-style",
            "DRA-style adapter, reconstructed from the abstract of arXiv 2507.05668 (not the authors' method)",
            {
                "adapter.family": ("dra", "docs/methods.md, DRA-style (reconstruction)"),
                "adapter.group_fractions": (
                    (0.25, 0.5, 0.25),
                    "docs/methods.md, DRA-style step 2 [inferred]",
                ),
                "adapter.group_ranks": ((8, 4, 0), "docs/methods.md, DRA-style step 3 [inferred]"),
                "adapter.importance": ("cls_eot", "docs/methods.md, DRA-style step 1 [inferred]"),
                "adapter.channel_response": (True, "abstract: channel response mechanism"),
                "adapter.l1_target": (
                    "gate",
                    "abstract: L1 regularisation; docs/methods.md, DRA-style step 5",
                ),
                "placement.towers": ("both", "abstract: an adapter for CLIP [inferred: both encoders]"),
                "placement.matrices": (["o", "proj"], "docs/methods.md, DRA-style step 3 [inferred]"),
            },
        ),
    )
}

PRESET_NAMES = tuple(PRESETS)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``, recursively for nested mappings (``over`` wins)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_family(data: Any) -> str | None:
    """The adapter family a (partial) config's preset implies, if it names a known preset."""
    name = data.get("preset") if isinstance(data, dict) else None
    return PRESETS[name].family if isinstance(name, str) and name in PRESETS else None


def apply_preset(data: Any) -> Any:
    """A trial-config mapping with its ``preset`` (if any) filled in under the user's own fields.

    Unknown preset names are left for the schema to reject (with the list of known ones).
    """
    if not isinstance(data, dict) or not isinstance(data.get("preset"), str) or data["preset"] not in PRESETS:
        return data
    tree = PRESETS[data["preset"]].tree()
    adapter = data.get("adapter")
    if isinstance(adapter, dict) and adapter.get("family") not in (None, tree["adapter"]["family"]):
        tree.pop("adapter")  # the user chose another family: the preset's adapter fields do not apply to it
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    if "train" in tree and ("iterations_per_shot" in train or "iterations" in train):
        tree["train"].pop("iterations", None)  # the user's iterations rule replaces the preset's
        tree["train"].pop("iterations_per_shot", None)
    return _merge(tree, data)


def preset_fields(name: str) -> dict[str, tuple[Any, str]]:
    """Every field the preset sets, as dotted path -> (value, source)."""
    return dict(PRESETS[name].fields)
