"""Golden tests: each preset resolves to the authors' values, field by field.

The tables below are typed from the authors' code (repository @ commit, file:line in the comment), not copied from
``ranksearch.config.presets``: a change to a preset that drifts from the source fails here.
"""

from __future__ import annotations

import pytest
import yaml

from ranksearch.config import validate_trial_config
from ranksearch.config.presets import PRESETS

# MaxZanella/CLIP-LoRA @ 358f0d7
CLIP_LORA = {
    "adapter.family": "lora",
    "adapter.r": 2,  # run_utils.py:35  --r default=2
    "adapter.alpha": 1.0,  # run_utils.py:36  --alpha default=1
    "adapter.scaling": "sqrt",  # loralib/layers.py:42  self.scaling = self.lora_alpha/math.sqrt(self.r)
    "adapter.dropout": 0.25,  # run_utils.py:37  --dropout_rate default=0.25
    "placement.towers": "both",  # run_utils.py:33  --encoder default='both'
    "placement.layers": "all",  # run_utils.py:32  --position default='all'
    "placement.matrices": ["q", "k", "v"],  # run_utils.py:34  --params default=['q', 'k', 'v']
    "train.lr": 2e-4,  # run_utils.py:28  --lr default=2e-4
    "train.betas": (0.9, 0.999),  # lora.py:75  AdamW(..., betas=(0.9, 0.999))
    "train.weight_decay": 1e-2,  # lora.py:75  AdamW(..., weight_decay=1e-2)
    "train.batch_size": 32,  # run_utils.py:30  --batch_size default=32
    "train.iterations_per_shot": 500,  # run_utils.py:29 --n_iters 500; lora.py:73 total_iters = n_iters * shots
    "train.iterations": None,
    "train.warmup_steps": 0,  # lora.py:76  CosineAnnealingLR, no warm-up
    "train.eta_min": 1e-6,  # lora.py:76  eta_min=1e-6
    "train.logit_scale": 100.0,  # main.py:22  logit_scale = 100
    "train.augment": True,  # main.py:38-43  train_tranform
    "train.crop": True,  # main.py:39  RandomResizedCrop
    "train.crop_scale": (0.08, 1.0),  # main.py:39  scale=(0.08, 1), BICUBIC
    "train.crop_ratio": (3 / 4, 4 / 3),  # main.py:39  torchvision's default ratio
    "train.flip": True,  # main.py:40  RandomHorizontalFlip(p=0.5)
    "train.loss": "ce",  # lora.py:112-113  F.cross_entropy(logit_scale * image @ text.t(), target)
    "model.precision": "amp",  # lora.py:82, 98-108  torch.amp.autocast(float16) + GradScaler
    "data.template": "generic",  # datasets/dtd.py:10 (and every dataset) template = ['a photo of a {}.']
}

# Artificer-AI-Lab/CoDyRA @ c1691e4; runner_codyra.sh overrides main.py's argparse defaults
CODYRA = {
    "adapter.family": "codyra",  # runner_codyra.sh:8  METHOD="codyra"
    "adapter.r": 16,  # runner_codyra.sh:9  RANK=16
    "adapter.kappa_max": 0.005,  # runner_codyra.sh:15  MAX_KAPPA=0.005 (main.py:63 default 7e-4)
    "adapter.lambda_num": 50,  # main.py:64  --lambda_num default=50
    "adapter.dense_frac": 0.5,  # runner_codyra.sh:16  DENSE_ITERS=0.5
    "adapter.threshold": "code",  # models/codyra.py train_model: p[p > t] -= t; p[p < -t] += t; p[|p| < t] = 0
    "adapter.gate_init": "randn",  # loralib/codyra.py codyra_Linear: self.gate = nn.Parameter(torch.randn(1, r))
    "adapter.dropout": 0.0,  # loralib/codyra.py codyra_Linear: lora_dropout=0.
    "placement.towers": "both",  # runner_codyra.sh:10  TARGET_ENCODER="all"
    "placement.layers": "all",  # models/codyra.py apply_lora: every block of model.resblocks
    "placement.matrices": ["q", "k", "v", "o", "fc", "proj"],  # runner_codyra.sh:11 "qkvoinout"; main.py:27
    "train.lr": 5e-4,  # runner_codyra.sh:13  LR=5e-4
    "train.betas": (0.9, 0.9999),  # models/codyra.py train_model: AdamW(..., betas=(0.9, 0.9999))
    "train.weight_decay": 0.0,  # main.py:46  --wd default=0.0
    "train.batch_size": 64,  # main.py:42  --batch_size default=64
    "train.iterations": 500,  # runner_codyra.sh:14  ITERATIONS=500 (per task)
    "train.warmup_steps": 0,  # main.py:48  --warmup_length default=0
    "train.eta_min": 0.0,  # utils.py cosine_lr: lr = 0.5 * (1 + cos(pi * e / es)) * base_lr
    "train.logit_scale": None,  # models/codyra.py train_model: logit_scale.exp() of the model
    "train.augment": True,  # models/codyra.py get_codyra: create_model_and_transforms' train transform
    "train.crop": True,  # open_clip transform.py image_transform(is_train=True): RandomResizedCrop(BICUBIC)
    "train.crop_scale": (0.9, 1.0),  # open_clip transform.py AugmentationCfg.scale = (0.9, 1.0)
    "train.crop_ratio": (3 / 4, 4 / 3),  # torchvision's default ratio
    "train.flip": False,  # open_clip's train transform has no flip
    "train.loss": "symmetric",  # models/codyra.py train_model: loss = ce_loss + loss_ce_t
    "model.precision": "fp32",  # models/codyra.py train_model: no autocast
    "data.template": "coop",  # models/codyra.py finetune: dataset.template[0]
}

# zstarN70/RLRR @ 287c772, VTAB-1k (train_vtab.py, RLRRDatasets/VTABConfig.py, models/networks.py)
RLRR = {
    "adapter.family": "rlrr",
    "adapter.init": "kaiming",  # models/networks.py:56-58  kaiming_uniform_(scale_col/scale_line), shift 0
    "adapter.r": 1,  # models/networks.py:46-47  scale_col (1, d_in), scale_line (d_out, 1)
    "adapter.ssf": True,  # models/networks.py:169-170, 222, 253  ssf after norms, encoder norm, patch embed
    "adapter.sides": "both",  # models/networks.py:68  weight * scale_col * scale_line
    "adapter.residual": True,  # models/networks.py:68  ... + self.mlp.weight
    "placement.towers": "vision",  # models/networks.py:289  RLRRVisionTransformer (an image model)
    "placement.layers": "all",  # models/networks.py:218-219  every block
    "placement.matrices": ["q", "k", "v", "o", "fc", "proj"],  # models/networks.py:83-86, 123-124
    "train.lr": 1e-3,  # RLRRDatasets/VTABConfig.py:15  caltech101 lr (per task 1e-3 .. 1e-2)
    "train.betas": (0.9, 0.999),  # train_vtab.py:165  AdamW without betas: torch's defaults
    "train.weight_decay": 5e-5,  # RLRRDatasets/VTABConfig.py:19
    "train.batch_size": 32,  # RLRRDatasets/VTABConfig.py:12
    "train.iterations": 3520,  # train_vtab.py:31 epochs 100 + :42 cooldown 10; 1000 images / 32 = 32 steps
    "train.warmup_steps": 320,  # train_vtab.py:39  warmup_epochs 10 x 32 steps
    "train.eta_min": 1e-8,  # RLRRDatasets/VTABConfig.py:17  min_lr
    "train.augment": True,  # RLRRDatasets/VTABDataLoader.py:92-96
    "train.crop": False,  # RLRRDatasets/VTABDataLoader.py:93  Resize((224, 224)) only, no random crop
    "train.flip": True,  # train_vtab.py:36 simple_aug default True; VTABDataLoader.py:94 RandomHorizontalFlip
    "train.loss": "ce",  # train_vtab.py:163  nn.CrossEntropyLoss()
    "model.precision": "amp",  # train_vtab.py:116 autocast(), :164 NativeScaler
}

# huggingface/peft @ 5d602fd src/peft/tuners/adalora/config.py (+ lora/config.py); QingruZhang/AdaLoRA README.md
ADALORA = {
    "adapter.family": "adalora",
    "adapter.init_r": 12,  # adalora/config.py:60  init_r default=12
    "adapter.target_r": 8,  # adalora/config.py:59  target_r default=8
    "adapter.t_init_frac": 0.0,  # adalora/config.py:61  tinit default=0
    "adapter.t_final_frac": 0.0,  # adalora/config.py:62  tfinal default=0
    "adapter.delta_t": 1,  # adalora/config.py:63  deltaT default=1
    "adapter.beta1": 0.85,  # adalora/config.py:64
    "adapter.beta2": 0.85,  # adalora/config.py:65
    "adapter.orth_reg_weight": 0.5,  # adalora/config.py:66
    "adapter.alpha": 8.0,  # lora/config.py:633  lora_alpha default=8
    "adapter.dropout": 0.0,  # lora/config.py:634  lora_dropout default=0.0
    "placement.matrices": ["q", "k", "v", "o", "fc", "proj"],  # AdaLoRA README.md:93 --lora_module (all six)
    "train.lr": 5e-4,  # AdaLoRA README.md:97  --learning_rate 5e-4
    "train.batch_size": 32,  # AdaLoRA README.md:97  --per_device_train_batch_size 32
    "train.weight_decay": 0.0,  # AdaLoRA README.md:99  --weight_decay 0
    "train.betas": (0.9, 0.999),  # transformers TrainingArguments adam_beta1/adam_beta2 defaults
    "model.precision": "fp32",  # AdaLoRA README.md:83-105  no --fp16
}

# DRA-style: no public code; the reconstruction of docs/methods.md, DRA-style (labelled as such everywhere)
DRA_STYLE = {
    "adapter.family": "dra",
    "adapter.group_fractions": (0.25, 0.5, 0.25),  # docs/methods.md, DRA-style step 2
    "adapter.group_ranks": (8, 4, 0),  # docs/methods.md, DRA-style step 3
    "adapter.importance": "cls_eot",  # docs/methods.md, DRA-style step 1
    "adapter.channel_response": True,  # abstract: "channel response mechanism"
    "adapter.l1_target": "gate",  # abstract: "L1 regularization"; on the per-instance gate activations
    "placement.towers": "both",
    "placement.matrices": ["o", "proj"],  # docs/methods.md, DRA-style step 3: attention and MLP outputs
}

GOLDEN = {"clip-lora": CLIP_LORA, "codyra": CODYRA, "rlrr": RLRR, "adalora": ADALORA, "dra-style": DRA_STYLE}


def _get(config, path: str):
    node = config
    for part in path.split("."):
        node = getattr(node, part)
    return node


def test_every_preset_has_a_golden_table():
    assert set(GOLDEN) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_preset_resolves_to_the_authors_values(name):
    config = validate_trial_config({"preset": name})
    for path, expected in GOLDEN[name].items():
        got = _get(config, path)
        if isinstance(expected, float) or (isinstance(expected, tuple) and isinstance(expected[0], float)):
            assert got == pytest.approx(expected), path
        else:
            assert got == expected, path
    # and the preset sets nothing the table does not know about (each field has a source)
    assert set(PRESETS[name].fields) <= set(GOLDEN[name]), sorted(
        set(PRESETS[name].fields) - set(GOLDEN[name])
    )
    assert all(source for _, source in PRESETS[name].fields.values())


def test_explicit_fields_override_the_preset():
    config = validate_trial_config({"preset": "codyra", "train": {"lr": 1e-3}, "adapter": {"r": 8}})
    assert (config.train.lr, config.adapter.r, config.adapter.kappa_max) == (1e-3, 8, 0.005)
    # the user's iterations rule replaces the preset's (CoDyRA: 500 per task) instead of being outranked by it
    config = validate_trial_config({"preset": "codyra", "train": {"iterations_per_shot": 10}})
    assert config.train.iterations is None and config.train.total_steps(4) == 40
    # another family drops the preset's adapter fields but keeps the rest of the recipe
    config = validate_trial_config({"preset": "codyra", "adapter": {"family": "lora"}})
    assert config.adapter.family == "lora" and config.train.betas == (0.9, 0.9999)


def test_unknown_preset_lists_the_known_ones():
    from ranksearch.errors import ConfigError

    with pytest.raises(ConfigError, match="preset") as info:
        validate_trial_config({"preset": "clip_lora"})
    assert "clip-lora" in str(info.value)


def test_resolved_config_round_trips_through_yaml():
    from ranksearch.config.load import dump_trial_config

    config = validate_trial_config({"preset": "rlrr", "train": {"lr": 3e-3}})
    again = validate_trial_config(yaml.safe_load(dump_trial_config(config)))
    assert again == config


def test_a_search_space_base_takes_a_preset(tmp_path):
    from ranksearch.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(
        "# ranksearch sweep search_spaces/x.yaml\n"
        "base: {preset: codyra, model: {pretrained: null}, data: {protocol: fewshot}}\n"
        "params:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true, default: 5.0e-4}\n"
        "objective: {metric: val/acc, mode: max}\n"
    )
    space = load_space(path)
    assert space.families == ["codyra"]
    config = space.trial_config({"train.lr": 2e-4})
    assert (config.adapter.family, config.train.lr, config.train.loss) == ("codyra", 2e-4, "symmetric")


def test_show_config_prints_the_resolved_config(tmp_path, capsys):
    from ranksearch.cli import main

    path = tmp_path / "trial.yaml"
    path.write_text("preset: clip-lora\ntrain: {lr: 1.0e-3}\n")
    main(["trial", str(path), "--show-config", "--set", "adapter.r=4"])
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)
    assert (
        resolved["preset"] == "clip-lora"
        and resolved["adapter"]["r"] == 4
        and resolved["train"]["lr"] == 1e-3
    )
    assert resolved["train"]["crop_scale"] == [0.08, 1.0] and resolved["model"]["precision"] == "amp"
    assert "run_utils.py:28" in out and "overridden" in out  # the sources travel along as comments
    assert not (tmp_path / "ranksearch-runs").exists()  # nothing ran
