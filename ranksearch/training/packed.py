"""Packed trials: several adapter configurations trained in one process on one shared frozen model.

A sweep's trials differ only in their adapters; each unpacked trial holds its own copy of the frozen base
weights and runs the frozen matmuls for its own small batch. A pack holds **one** copy of the base model and
trains K members together: every step stacks the members' batches (each drawn and augmented by the member's
own sampler and generators), runs the frozen layers once on the stack, and adds each member's update to its
own rows. Every member keeps its own adapter, optimizer, scheduler, rank schedule, evaluation schedule and
result, so it trains exactly as it would alone (``tests/test_packed.py``: same seeds, same metrics).

How the model is shared:

* ``PackedSite`` takes the place of an adapted module. It holds the frozen base and every member's adapter
  layer there; on a stacked batch it computes ``base(x)`` once and adds each member's ``adapter_forward`` on
  that member's rows (``PackContext.segments`` says which rows are whose). LoRA members of the same shape use one
  batched matmul (``torch.bmm``) for all their low-rank products.
* ``PackedModel.view(member)`` temporarily puts that member's own layers (or the bare base) back in place of
  every ``PackedSite``: the model then *is* the member's unpacked model, so attaching, evaluation, checkpoints
  and artifacts run the ordinary single-trial code (``ranksearch.trial.TrialRun``) unchanged.
* Members join and leave between steps (early stopping removes one, a new trial takes the free slot); each is
  at its own step of its own schedule.

What can be packed (``pack_key``): members sharing model name, weights, device and precision, with a mergeable
family (its update is a function of each token alone, so stacking cannot change it; DRA-style adapters look at
the whole sequence and run alone), on a single-task protocol. ``group`` bounds how many members share one
forward/backward pass (memory grows with the stacked batch; one copy of the weights either way).

Not identical to a lone trial: adapter dropout draws its masks from the process's global generator, so with
dropout > 0 members draw different (equally distributed) masks than they would alone; ``train.max_seconds``
counts the pack's wall time since the member joined; ``train.max_memory_mb`` is checked against the pack's
process; ``train.cache_frozen_prefix`` is not used (the frozen prefix differs per member).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ranksearch.adapters.base import AdapterLayer
from ranksearch.config.schema import TrialConfig
from ranksearch.errors import TrialError
from ranksearch.training.phases import PhaseHook, no_phase

log = logging.getLogger(__name__)


def pack_key(config: TrialConfig) -> tuple | None:
    """What members of one pack must share, or None when this configuration cannot be packed.

    A random-init model (``pretrained: null``) is built from the trial seed, so the seed is part of its key.
    """
    from ranksearch.adapters import get_family
    from ranksearch.session import resolve_device

    m = config.model
    if config.data.protocol == "continual" or m.compile or not get_family(config.adapter.family).mergeable:
        return None
    device = str(resolve_device(m.device))
    return (m.name, m.pretrained, device, m.precision, config.seed if m.pretrained is None else None)


@dataclass
class PackContext:
    """Who owns which rows of the stacked batch now: ``(member id, rows)`` in stacking order."""

    segments: list[tuple[int, int]] | None = None


class PackedSite(nn.Module):
    """One adapted position of the shared model: the frozen ``base`` plus every member's layer there.

    ``batch_dim``: the dimension the members' rows are stacked along at this position (0 inside attention,
    which works batch-first; the tower's layout for MLP linears and LayerNorms).
    """

    def __init__(self, base: nn.Module, ctx: PackContext, batch_dim: int):
        super().__init__()
        self.base, self.ctx, self.batch_dim = base, ctx, batch_dim
        self.members = nn.ModuleDict()  # str(member id) -> AdapterLayer

    def layer(self, member: int) -> AdapterLayer | None:
        """``member``'s layer here, or None (its rows see the frozen base only)."""
        key = str(member)  # nn.ModuleDict has no .get
        return self.members[key] if key in self.members else None  # noqa: SIM401

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (open_clip reads ``c_fc.weight.dtype`` to pick its cast dtype)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        segments = self.ctx.segments
        if segments is None:
            raise RuntimeError("a packed model runs only inside a pack step or a member's view")
        layers = [self.layer(m) for m, _ in segments]
        if all(lay is not None and type(lay).forward is not AdapterLayer.forward for lay in layers):
            # every member has its own forward (e.g. RLRR's effective weight): the shared base(x) would go unused
            sizes = [n for _, n in segments]
            pieces = [lay(xc) for lay, xc in zip(layers, x.split(sizes, self.batch_dim), strict=True)]
            return pieces[0] if len(pieces) == 1 else torch.cat(pieces, self.batch_dim)
        out = self.base(x)
        fast = _batched_lora(x, out, layers, segments, self.batch_dim)
        if fast is not None:
            return fast
        sizes = [n for _, n in segments]
        pieces = []
        for layer, xc, oc in zip(
            layers, x.split(sizes, self.batch_dim), out.split(sizes, self.batch_dim), strict=True
        ):
            if layer is None:
                pieces.append(oc)
            elif type(layer).forward is AdapterLayer.forward:  # base(x) + update(x): reuse the shared base(x)
                pieces.append(oc + layer.adapter_forward(xc).to(oc.dtype))
            else:  # a layer with its own forward (e.g. SSF after a LayerNorm): recompute on its rows
                pieces.append(layer(xc))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, self.batch_dim)


def _batched_lora(
    x: torch.Tensor, out: torch.Tensor, layers: list, segments: list[tuple[int, int]], dim: int
) -> torch.Tensor | None:
    """Every member's LoRA product at once, ``out + bmm(bmm(x, Aᵀ) ⊙ mask·s, Bᵀ)``, or None when the members
    here are not all dropout-free CLIP-LoRA layers of one rank with equal row counts (then the loop runs).

    Shapes: x (K·n, ..., d_in) stacked along ``dim``; A (K, r, d_in); B (K, d_out, r).
    """
    from ranksearch.adapters.lora import LoraLinear

    if len(layers) < 2 or any(type(lay) is not LoraLinear for lay in layers):
        return None
    r, n = layers[0].r, segments[0][1]
    if any(lay.r != r or not isinstance(lay.lora_dropout, nn.Identity) for lay in layers) or any(
        rows != n for _, rows in segments
    ):
        return None
    k = len(layers)
    xs = x.movedim(dim, 0) if dim else x  # (K·n, ..., d_in)
    xk = xs.reshape(k, -1, xs.shape[-1]).to(layers[0].lora_A.dtype)  # (K, n·tokens, d_in)
    a = torch.stack([lay.lora_A for lay in layers])  # (K, r, d_in)
    b = torch.stack([lay.lora_B for lay in layers])  # (K, d_out, r)
    gain = torch.stack([lay.lora_mask * lay.scale for lay in layers]).unsqueeze(1)  # (K, 1, r)
    delta = torch.bmm(torch.bmm(xk, a.transpose(1, 2)) * gain, b.transpose(1, 2))  # (K, n·tokens, d_out)
    delta = delta.reshape(*xs.shape[:-1], delta.shape[-1])
    return out + (delta.movedim(0, dim) if dim else delta).to(out.dtype)


class PackedModel:
    """A frozen open_clip model whose adapted positions are ``PackedSite``s shared by the members."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.ctx = PackContext()
        # (id(parent), attribute) -> (parent, attribute, site)
        self.sites: dict[tuple[int, str], tuple[nn.Module, str, PackedSite]] = {}

    def _batch_dim(self, parent: nn.Module, layer: AdapterLayer) -> int:
        from ranksearch.models.attention import UnfusedAttention

        if isinstance(parent, UnfusedAttention):
            return 0  # UnfusedAttention projects batch-first whatever the tower's layout
        tower = self.model.visual.transformer if layer.site.tower == "vision" else self.model.transformer
        return 0 if getattr(tower, "batch_first", True) else 1

    def _show(self, member: int | None) -> None:
        """Put ``member``'s layer (or the bare base) in place of every shared site."""
        for parent, attr, site in self.sites.values():
            layer = site.layer(member)
            setattr(parent, attr, site.base if layer is None else layer)

    def _pack(self) -> None:
        """Put every shared site back (the stacked, all-members form)."""
        for parent, attr, site in self.sites.values():
            setattr(parent, attr, site)

    @contextlib.contextmanager
    def view(self, member: int) -> Iterator[nn.Module]:
        """The model exactly as ``member`` alone would see it; adapters attached inside become ``member``'s."""
        self._show(member)
        try:
            yield self.model
        finally:
            self._adopt(member)
            self._pack()

    def _adopt(self, member: int) -> None:
        """Every adapter layer in the viewed model is ``member``'s: record it at its shared site."""
        found = [
            (parent, name, child)
            for parent in self.model.modules()
            if not isinstance(parent, AdapterLayer | PackedSite)
            for name, child in parent.named_children()
            if isinstance(child, AdapterLayer)
        ]
        for parent, name, layer in found:
            key = (id(parent), name)
            if key not in self.sites:
                site = PackedSite(layer.base, self.ctx, self._batch_dim(parent, layer))
                site.train(layer.training)
                self.sites[key] = (parent, name, site)
            self.sites[key][2].members[str(member)] = layer

    def remove(self, member: int) -> None:
        """Take ``member``'s layers out; a site nobody adapts any more becomes its plain base again."""
        for key, (parent, attr, site) in list(self.sites.items()):
            if str(member) in site.members:
                del site.members[str(member)]
            if not len(site.members):
                setattr(parent, attr, site.base)
                del self.sites[key]

    @contextlib.contextmanager
    def stacked(self, segments: list[tuple[int, int]]) -> Iterator[None]:
        """Run the shared model on a stacked batch: rows belong to members as ``segments`` says."""
        self.ctx.segments = segments
        try:
            yield
        finally:
            self.ctx.segments = None


@dataclass
class Member:
    """One trial of a pack: its run (``TrialRun``: trainer, evaluation, artifacts) and its outcome."""

    id: int
    config: TrialConfig
    run: Any  # ranksearch.trial.TrialRun
    result: Any = None  # ranksearch.trial.TrialResult once finished or failed
    tracker: Any = None
    output_dir: Path | None = None

    @property
    def active(self) -> bool:
        return self.result is None


@dataclass
class Pack:
    """Trains members that share one frozen model. ``add`` members, then ``run()`` (or ``step()`` repeatedly).

    Args:
        key_config: any member's config; the shared model is built from its ``model`` section (and its seed,
            for random-init models).
        group: at most this many members per stacked forward/backward (None: all active members at once).
    """

    key_config: TrialConfig
    group: int | None = None
    members: dict[int, Member] = field(default_factory=dict)
    steps: int = 0
    phase: PhaseHook = field(default=no_phase, repr=False)  # a profiler's timer around each phase of a step

    def __post_init__(self) -> None:
        import open_clip

        from ranksearch.models.clip import build_model
        from ranksearch.session import resolve_device
        from ranksearch.training.threads import apply_threads
        from ranksearch.trial import seed_everything

        self.key = pack_key(self.key_config)
        if self.key is None:
            raise ValueError("this configuration cannot be packed (see ranksearch.training.packed.pack_key)")
        m = self.key_config.model
        self.device = resolve_device(m.device)
        seed_everything(self.key_config.seed)  # a random-init model is built from the seed, as run_trial does
        model, self.image_size = build_model(m.name, m.pretrained, device=str(self.device))
        self.packed = PackedModel(model)
        apply_threads(model, m.threads, self.device)
        self.tokenizer = open_clip.get_tokenizer(m.name)
        self._tasks: dict[str, Any] = {}
        self._next_id = 0

    @property
    def model(self) -> nn.Module:
        return self.packed.model

    def active(self) -> list[Member]:
        return [m for m in self.members.values() if m.active]

    def _task(self, config: TrialConfig) -> Any:
        """Members with the same data section share one task (images are read once)."""
        from ranksearch.data import build_task

        key = config.data.model_dump_json()
        if key not in self._tasks:
            self._tasks[key] = build_task(config.data, self.image_size)
        return self._tasks[key]

    def add(
        self,
        config: TrialConfig,
        output_dir: Path,
        *,
        tracker: Any = None,
        on_eval: Any = None,
        resume: dict | None = None,
    ) -> Member:
        """Attach a new member (between steps). Its set-up runs the single-trial code in its view of the model.

        Raises:
            ValueError: the configuration does not fit this pack (``pack_key`` differs).
            ConfigError: as ``run_trial`` would (e.g. a placement the model does not have); nothing is attached.
        """
        from ranksearch.session import TrialSession
        from ranksearch.trial import TrialRun, failed_result

        if pack_key(config) != self.key:
            raise ValueError(f"configuration does not fit this pack: {pack_key(config)} != {self.key}")
        mid = self._next_id
        self._next_id += 1
        total = config.train.total_steps(config.data.shots)
        member = Member(mid, config, None, tracker=tracker, output_dir=Path(output_dir))
        try:
            with self.packed.view(mid):
                session = TrialSession(config, total, model=(self.model, self.image_size, self.tokenizer))
                run = TrialRun(
                    config, Path(output_dir), tracker=tracker, on_eval=on_eval, resume=resume, session=session,
                    task=self._task(config),
                )  # fmt: skip
                run.trainer.prefix_cache = None  # the frozen prefix is not frozen for the other members
                run.trainer._text_length()  # the prompt cut is decided in the member's own view
                if not run.trainer.text_adapted:
                    run.trainer.text_features()  # computed once in the member's view, cached by the trainer
                member.run = run
        except TrialError as e:
            self.packed.remove(mid)
            member.result = failed_result(tracker, e, None, Path(output_dir))
        except BaseException:
            self.packed.remove(mid)
            raise
        self.members[mid] = member
        return member

    def remove(self, member: Member) -> None:
        """Drop a member (early-stopped or abandoned) between steps; its adapters leave the shared model."""
        self.packed.remove(member.id)
        self.members.pop(member.id, None)

    def run(self) -> dict[int, Any]:
        """Step until every member has finished; returns each member's ``TrialResult`` by member id."""
        while self.active():
            self.step()
        return {mid: m.result for mid, m in self.members.items()}

    def step(self) -> list[Member]:
        """One optimiser step of every active member; returns the members that finished or failed in it."""
        active = self.active()
        size = self.group or max(1, len(active))
        ended: list[Member] = []
        for i in range(0, len(active), size):
            ended += self._step_group(active[i : i + size])
        self.steps += 1
        return ended

    def _step_group(self, group: list[Member]) -> list[Member]:
        """One step of ``group``'s members together; each phase in ``self.phase`` (a profiler's hook)."""
        from ranksearch.trial import failed_result

        t0 = time.perf_counter()
        model = self.model
        if not model.training:
            model.train()
        trainers = [m.run.trainer for m in group]
        with self.phase("augment"):  # each member's own sampler and generators
            idx = [t.sampler.next() for t in trainers]
            ys = [t.targets[i].to(self.device) for t, i in zip(trainers, idx, strict=True)]
            xs = [t.batch_inputs(i) for t, i in zip(trainers, idx, strict=True)]
        autocast = trainers[0].autocast
        with (
            self.phase("image forward"),
            self.packed.stacked([(m.id, len(x)) for m, x in zip(group, xs, strict=True)]),
            autocast(),
        ):
            feats = model.encode_image(torch.cat(xs)).split([len(x) for x in xs])  # (B_m, D) each
        ended, losses, scaled = [], [], []
        with self.phase("text forward + loss"):
            texts = self._text_features(group)
            for m, f, y, txt in zip(group, feats, ys, texts, strict=True):
                try:
                    loss, total = m.run.trainer.loss_terms(f, y, txt)
                except TrialError as e:  # this member diverged; the others go on
                    self._end(m, failed_result(m.tracker, e, m.run, m.output_dir), ended)
                    continue
                losses.append((m, loss))
                scaled.append(m.run.trainer.scaler.scale(total))
        if scaled:
            with self.phase("backward"):
                # members' parameters are disjoint: the sum's gradient for each is that member's own gradient
                torch.stack([s.float() for s in scaled]).sum().backward()
        with self.phase("optimizer + after-step"):
            for m, loss in losses:
                self._after_step(m, loss, t0, ended)
        return ended

    def _after_step(self, m: Member, loss: torch.Tensor, t0: float, ended: list[Member]) -> None:
        """The member's optimizer step, then its evaluation, checkpoint and finish as in a lone trial."""
        from ranksearch.trial import failed_result

        stats = m.run.trainer.apply_gradients(loss, t0)
        needs_model = stats.step in m.run.checkpoints or m.run.done
        result = None
        try:
            with self.packed.view(m.id) if needs_model else contextlib.nullcontext():
                m.run.after_step(stats)
                if m.run.done:
                    result = m.run.finish()
        except TrialError as e:  # over its time or memory budget
            result = failed_result(m.tracker, e, m.run, m.output_dir)
        if result is not None:  # outside the view: its layers leave the shared sites
            self._end(m, result, ended)

    def _end(self, member: Member, result: Any, ended: list[Member]) -> None:
        member.result = result
        self.packed.remove(member.id)
        ended.append(member)

    def _text_features(self, group: list[Member]) -> list[torch.Tensor]:
        """(C_m, D) class features per member: one stacked text pass for the members that adapt the text tower,
        the cached frozen features for the others."""
        from ranksearch.training.loop import encode_text_prefix

        trainers = [m.run.trainer for m in group]
        adapted = [(m, t) for m, t in zip(group, trainers, strict=True) if t.text_adapted]
        out = {m.id: t.text_features() for m, t in zip(group, trainers, strict=True) if not t.text_adapted}
        if adapted:
            tokens = [t.tokens for _, t in adapted]
            lengths = [t._text_length() if t.cut_prompts else None for _, t in adapted]
            context = tokens[0].shape[1]
            length = None if any(n is None for n in lengths) else max(lengths)
            stack = torch.cat(tokens)  # (Σ C_m·T_m, context)
            segments = [(m.id, len(tok)) for (m, _), tok in zip(adapted, tokens, strict=True)]
            with self.packed.stacked(segments), trainers[0].autocast():
                if length is None or length >= context:
                    enc = self.model.encode_text(stack)
                else:  # exact: causal tower, pooled at EOT (every member's cut was checked in its view)
                    enc = encode_text_prefix(self.model, stack, length)
            for (m, t), e in zip(adapted, enc.split([len(tok) for tok in tokens]), strict=True):
                f = F.normalize(e, dim=-1)  # (C·T, D)
                f = f.view(-1, t.num_templates, f.shape[-1]).mean(dim=1)  # (C, D)
                out[m.id] = F.normalize(f, dim=-1)
        return [out[m.id] for m in group]
