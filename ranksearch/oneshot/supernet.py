"""The supernet trial: a max-rank nested adapter on every candidate site, trained with the sandwich rule.

Every optimizer step runs the same batch (one augmentation) through several allocations of the one set of
weights and accumulates their mean gradient before one AdamW step (once-for-all's sandwich rule): the max
allocation (every site at the largest candidate rank), the min (every site at its smallest nonzero candidate, so
the first components learn to stand alone) and ``search.sandwich_random`` allocations drawn uniformly per site.
With ``search.distill`` (in-place distillation, once-for-all / BigNAS) only the max allocation learns from
the labels; every other allocation of the step learns the max allocation's predictions on the same batch (its
logits, detached, as a soft target: ``-Σ softmax(teacher) · log_softmax(student)``), which the full supernet
makes smoother and closer to what a well-trained sub-allocation can reach than the one-hot labels are.
The draws come from a generator of their own whose state is in the checkpoint, so a resumed supernet continues
exactly. Between steps the max allocation is active: validation history and telemetry describe the full supernet.

The supernet is an ordinary trial otherwise (``TrialRun``: evaluations, checkpoints, artifacts, MLflow), so
``ranksearch trial`` and the sweep run, resume and track it like any other.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ranksearch.oneshot.nested import apply_allocation, nested_family, nested_layers
from ranksearch.oneshot.spec import OneShotSpec
from ranksearch.session import TrialSession
from ranksearch.training.loop import StepStats, Trainer

ONESHOT_FILE = "oneshot.json"  # the search block a supernet folder was trained under (to rebuild it)


def rebuild_supernet(supernet_dir: Path, device: str = "cpu") -> SupernetSession:
    """The trained supernet of a finished supernet folder (config.yaml, oneshot.json, adapter.safetensors)."""
    from ranksearch.adapters.io import load_adapter
    from ranksearch.config import load_trial_config
    from ranksearch.errors import RanksearchError

    supernet_dir = Path(supernet_dir)
    for name in ("config.yaml", ONESHOT_FILE, "adapter.safetensors"):
        if not (supernet_dir / name).is_file():
            raise RanksearchError(f"{supernet_dir} is not a finished supernet folder: {name} is missing")
    config = load_trial_config(supernet_dir / "config.yaml")
    if device != "auto":
        config = config.model_copy(update={"model": config.model.model_copy(update={"device": device})})
    oneshot = OneShotSpec.model_validate_json((supernet_dir / ONESHOT_FILE).read_text())
    from ranksearch.trial import seed_everything

    seed_everything(config.seed)  # as the trial did before building its model (random-init models)
    session = SupernetSession(config, config.train.total_steps(config.data.shots), oneshot)
    load_adapter(session.model, supernet_dir / "adapter.safetensors")
    session.model.eval()
    return session


class SandwichSampler:
    """The allocations of one supernet step: [max, min, random × n], as per-site rank lists."""

    def __init__(self, n_sites: int, ranks: list[int], n_random: int, seed: int):
        self.n_sites, self.ranks, self.n_random = n_sites, list(ranks), n_random
        self.generator = torch.Generator().manual_seed(seed)
        positive = [r for r in ranks if r > 0]
        self.max = [ranks[-1]] * n_sites
        self.min = [positive[0]] * n_sites

    def draws(self) -> list[list[int]]:
        choices = torch.as_tensor(self.ranks)
        out = [self.max, self.min] if self.min != self.max else [self.max]
        for _ in range(self.n_random):
            idx = torch.randint(len(self.ranks), (self.n_sites,), generator=self.generator)
            out.append(choices[idx].tolist())
        return out


class SupernetTrainer(Trainer):
    """``Trainer`` whose step is the sandwich rule (set ``sandwich`` after construction)."""

    sandwich: SandwichSampler
    distill: bool = False  # in-place distillation (search.distill)
    passes: int = 0  # forward/backward passes so far: the supernet's compute in training-step units

    def train_step(self) -> StepStats:
        t0 = time.perf_counter()
        if not self.model.training:
            self.model.train()
        idx = self.sampler.next()
        y = self.targets[idx].to(self.device)
        x = (
            None if self.prefix_cache is not None else self.batch_inputs(idx)
        )  # one augmentation for every member
        draws = self.sandwich.draws()
        reported, teacher = None, None
        for ranks in draws:  # draws[0] is the max allocation: the teacher of the others when distilling
            apply_allocation(self.family.layers, ranks)
            loss, total, logits = self.sandwich_terms(self._encode(idx, x), y, teacher)
            if reported is None:
                reported = loss  # the max allocation's loss
                teacher = logits.detach() if self.distill else None
            if total.requires_grad:  # an all-zero random draw is the frozen model: nothing to learn from
                self.scaler.scale(total / len(draws)).backward()
            self.passes += 1
        apply_allocation(self.family.layers, self.sandwich.max)
        return self.apply_gradients(reported, t0)

    def sandwich_terms(
        self, feats: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, loss + regulariser, logits) of one sandwich member: the label loss (``Trainer.loss_terms``'
        operations), or with ``teacher`` (B, C) the soft cross-entropy to the teacher's predictions."""
        import torch.nn.functional as F

        from ranksearch.errors import TrialError
        from ranksearch.training.loop import clip_loss

        with self.autocast():
            img = F.normalize(feats, dim=-1)  # (B, D)
            txt = self.text_features()  # (C, D): recomputed per member when the text tower is adapted
            logits = self.logit_scale * img.float() @ txt.float().t()  # (B, C)
            if teacher is None:
                loss = clip_loss(logits, y, self.loss_kind, self.prior_classes)
            else:
                soft = torch.softmax(teacher.float(), dim=-1)
                loss = -(soft * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
            reg = self.family.regularizer()
            total = loss if reg is None else loss + reg
        if not torch.isfinite(total):
            raise TrialError(f"diverged: non-finite loss ({total.item()}) at step {self.step + 1}")
        return loss, total, logits

    def state_dict(self, adapter_state: dict[str, torch.Tensor]) -> dict:
        state = super().state_dict(adapter_state)
        state["sandwich_rng"] = self.sandwich.generator.get_state()
        state["supernet_passes"] = self.passes
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sandwich.generator.set_state(state["sandwich_rng"])
        self.passes = int(state.get("supernet_passes", 0))


class SupernetSession(TrialSession):
    """A ``TrialSession`` with nested-rank layers at rank ``max(search.ranks)`` and a sandwich-rule trainer."""

    def __init__(self, config: Any, total_steps: int, oneshot: OneShotSpec, model: Any = None):
        self.oneshot = oneshot
        super().__init__(config, total_steps, model=model)
        self.nested = nested_layers(self.layers)

    def family_class(self, registered: type) -> type:
        return nested_family(registered.name)

    def trainer_type(self, default: type) -> type:
        return SupernetTrainer

    def trainer_for(self, task: Any, total_steps: int, prior_classes: int = 0) -> SupernetTrainer:
        trainer = super().trainer_for(task, total_steps, prior_classes)
        o = self.oneshot
        trainer.sandwich = SandwichSampler(len(self.nested), o.ranks, o.sandwich_random, o.seed)
        trainer.distill = o.distill
        return trainer

    def site_keys(self) -> list[str]:
        return [layer.site.key for layer in self.nested]

    def params_per_rank(self) -> list[int]:
        return [layer.params_per_rank() for layer in self.nested]

    def set_allocation(self, ranks: list[int] | dict[str, int]) -> None:
        apply_allocation(self.layers, ranks)


def supernet_config(space: Any, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The supernet's ``TrialConfig``: the space's base with ``adapter.r`` = the largest candidate rank."""
    return space.trial_config(None, overrides=[f"adapter.r={space.spec.search.max_rank}", *overrides])


def run_supernet(
    config: Any,
    oneshot: OneShotSpec,
    *,
    output_dir: Path,
    tracker: Any = None,
    on_eval: Any = None,
    resume: dict | None = None,
    progress: bool = False,
) -> Any:
    """Train the supernet as a trial (``run_trial``'s steps with a ``SupernetSession``); returns its ``TrialResult``.

    Its metrics add ``supernet/passes`` (forward/backward passes: steps × sandwich size), the compute one-shot
    search is charged for. ``output_dir`` holds the usual trial artifacts; ``adapter.safetensors`` is the supernet.
    """
    from ranksearch.errors import TrialError
    from ranksearch.trial import TrialRun, failed_result, seed_everything
    from ranksearch.trial_record import progress_bar

    run = None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / ONESHOT_FILE).write_text(oneshot.model_dump_json(indent=2))
    try:
        total = config.train.total_steps(config.data.shots)
        seed_everything(config.seed)  # before the model is built, as run_trial does (random-init models)
        session = SupernetSession(config, total, oneshot)
        run = TrialRun(config, output_dir, tracker=tracker, on_eval=on_eval, resume=resume, session=session)
        with progress_bar(progress, run.total_steps, run.trainer.step, "supernet") as bar:
            for stats in run.trainer.steps():
                bar(stats)
                run.after_step(stats)
        run.static["supernet/passes"] = float(run.trainer.passes)
        run.final["supernet/passes"] = float(run.trainer.passes)
        return run.finish()
    except TrialError as e:
        return failed_result(tracker, e, run, Path(output_dir))
