"""How many torch threads a trial computes with: chosen from the model's size, not one fixed rule.

A model as small as ``rs-tiny-clip`` (3.7 M parameters, 32 px) is dominated by per-operator dispatch: a second
intra-op thread adds synchronisation and buys no arithmetic, and two concurrent 1-thread trials beat two
sequential 2-thread ones by far (``docs/benchmarks.md``: search_overhead, threads rows). A ViT-B-32 step is
arithmetic and uses every core it is given. ``model.threads: auto`` therefore gives small models one thread and
larger ones every CPU the trial owns; a number sets it explicitly.
"""

from __future__ import annotations

import os

import torch
from torch import nn

# Below this many parameters a model runs on one thread under ``auto`` (measured: rs-tiny-clip, 3.7 M, is faster
# on 1 thread than on 2; ViT-B-32, 151 M, is ~1.8x faster on 2).
SMALL_MODEL_PARAMS = 20_000_000


def available_cpus() -> int:
    """CPUs this process may use: Ray's per-worker ``OMP_NUM_THREADS`` (set from the trial's CPU resources),
    else the CPU affinity of the process."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_for(model: nn.Module, setting: int | str = "auto", cpus: int | None = None) -> int:
    """Torch intra-op threads for training ``model``: ``setting`` when a number, else by model size."""
    if setting != "auto":
        return int(setting)
    cpus = cpus if cpus is not None else available_cpus()
    params = sum(p.numel() for p in model.parameters())
    return 1 if params < SMALL_MODEL_PARAMS else max(1, cpus)


def apply_threads(model: nn.Module, setting: int | str = "auto", device: torch.device | None = None) -> int:
    """Set torch's intra-op thread count for ``model`` (CPU only; a GPU trial keeps the default). Returns it."""
    if device is not None and device.type != "cpu":
        return torch.get_num_threads()
    n = threads_for(model, setting)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n
