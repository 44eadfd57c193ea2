"""Data sources. ``build_task`` turns a ``DataConfig`` into a materialised ``Task``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ranksearch.data.task import Split, Task

if TYPE_CHECKING:
    from ranksearch.config.schema import DataConfig

__all__ = ["MTIL_SEQUENCE", "Split", "Task", "build_task", "known_tasks"]

FASHION_MNIST = "fashion-mnist"
IMAGEFOLDER = "imagefolder"
WORLD = "world"
CIFAR100 = "cifar100"
MNIST = "mnist"
# the MTIL task order (ZSCL; CoDyRA's 5-shot MTIL table): 11 domains
MTIL_SEQUENCE = (
    "fgvc_aircraft", "caltech101", "cifar100", "dtd", "eurosat", "oxford_flowers",
    "food101", "mnist", "oxford_pets", "stanford_cars", "sun397",
)  # fmt: skip


def known_tasks() -> list[str]:
    """Every task name ranksearch knows. ImageNet variants are test-only: use them in ``data.eval_tasks``."""
    from ranksearch.data.coop import COOP_TASKS

    return ["shapeworld", WORLD, FASHION_MNIST, IMAGEFOLDER, CIFAR100, MNIST, *COOP_TASKS]


def build_task(cfg: DataConfig, image_size: int) -> Task:
    """Materialise the task named by ``cfg.task`` at the model's input resolution.

    Raises:
        DataError: unknown task, or data missing on disk.
    """
    from ranksearch.errors import DataError

    if cfg.task == "shapeworld":
        from ranksearch.data.shapeworld import build_shapeworld_task

        task = build_shapeworld_task(cfg, image_size)
    elif cfg.task == WORLD:
        from ranksearch.data.world import build_world_task

        task = build_world_task(cfg, image_size)
    elif cfg.task == FASHION_MNIST:
        from ranksearch.data.fashion_mnist import build_fashion_mnist_task

        task = build_fashion_mnist_task(cfg, image_size)
    elif cfg.task == CIFAR100:
        from ranksearch.data.cifar import build_cifar100_task

        task = build_cifar100_task(cfg, image_size)
    elif cfg.task == MNIST:
        from ranksearch.data.mnist import build_mnist_task

        task = build_mnist_task(cfg, image_size)
    elif cfg.task == IMAGEFOLDER:
        from ranksearch.data.imagefolder import build_imagefolder_task

        task = build_imagefolder_task(cfg, image_size)
    elif cfg.task in known_tasks():
        from ranksearch.data.coop import build_coop_task

        task = build_coop_task(cfg, image_size)
    else:
        raise DataError(f"data.task: unknown task {cfg.task!r}; known: {', '.join(known_tasks())}")
    if cfg.protocol == "base2new":  # one validation rule for every data source (docs/data.md)
        from ranksearch.data.fewshot import base2new_validation

        task = base2new_validation(task, cfg.val_new_fraction, cfg.split_seed)
    # Domain-shift / cross-dataset test sets (test split only), whatever the training task.
    for name in getattr(cfg, "eval_tasks", None) or []:
        from ranksearch.data.coop import COOP_TASKS, load_eval_set

        if name not in COOP_TASKS:
            raise DataError(
                f"data.eval_tasks: {name!r} is not a CoOp dataset; known: {', '.join(COOP_TASKS)}"
            )
        task.extra_tests[name] = load_eval_set(name, cfg, image_size)
    return task
