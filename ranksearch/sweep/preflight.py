"""Check once, in the driver and before Ray starts, that a sweep's model and data load.

Without it a sweep whose model cannot load (an offline ``pretrained: openai``, a missing checkpoint) or whose data
is not where ``data.root`` says starts Ray, creates its study and MLflow runs, and then every trial errors with
the same message. Here the same error comes in seconds, as one line (exit 2), before anything is created.

The check uses the space's default configuration (each parameter at its default): the model is built with its
weights exactly as a trial builds it, and the task is materialised with one shot, one validation and one test
image per class (reading a few images of every split), so a large dataset costs seconds, not a full load.
"""

from __future__ import annotations

import gc
import logging
import time

from ranksearch.space import SearchSpace

log = logging.getLogger(__name__)


def preflight(space: SearchSpace) -> float:
    """Build the default trial's model (and the built-in checkpoint, once) and a minimal sample of its data.

    Returns the seconds it took.

    Raises:
        ModelLoadError: the model or its weights cannot be built or loaded (the message has the offline hint).
        DataError: the dataset (each task of a continual sequence) is missing, malformed or not in the expected
            layout.
    """
    from ranksearch.data import build_task
    from ranksearch.models.clip import BUILTIN_PRETRAINED, build_model
    from ranksearch.pretrain import ensure_checkpoint

    t0 = time.perf_counter()
    config = space.trial_config(None)
    m = config.model
    if m.pretrained == BUILTIN_PRETRAINED:
        # built here, with its progress bar: otherwise the first trial would pretrain silently in a Ray worker
        ensure_checkpoint(m.name)
    model, image_size = build_model(m.name, m.pretrained)
    del model  # only whether it loads matters here; the trials build their own
    gc.collect()
    sample = {"shots": 1, "val_shots": 1, "max_test_per_class": 1, "test_per_class": 1}
    if config.data.protocol == "continual":
        from ranksearch.continual_run import task_configs

        tasks = task_configs(config)
    else:
        tasks = [config.data]
    for data in tasks:
        build_task(data.model_copy(update=sample), image_size)
    seconds = time.perf_counter() - t0
    log.debug(
        "preflight: model %s (%s) and data %s load (%.1f s)", m.name, m.pretrained, config.data.task, seconds
    )
    return seconds
