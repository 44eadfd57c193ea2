"""Score allocations on a trained supernet: set the nested ranks, evaluate the validation split, no training.

``SupernetScorer`` is what a Ray evaluation actor holds (``ranksearch.oneshot.pipeline``): the supernet and the
task are built once, then each allocation costs one validation pass (text features are recomputed when the
text tower is adapted, since its ranks change them). ``images`` scores on a fixed class-stratified sample of the
validation split (``search.score_images``), the same images for every allocation, so estimates stay comparable.
Every score holds ``val/loglik`` besides the accuracy metrics: what ``search.score: likelihood`` ranks by.
"""

from __future__ import annotations

import time
from pathlib import Path


class SupernetScorer:
    """Scores allocations (rank lists in the supernet's site order) of the supernet in ``supernet_dir``."""

    def __init__(
        self,
        supernet_dir: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        images: int | None = None,
    ):
        import dataclasses

        import torch

        from ranksearch.data import build_task
        from ranksearch.oneshot.supernet import rebuild_supernet

        if threads is not None:
            torch.set_num_threads(threads)
        self.session = rebuild_supernet(Path(supernet_dir), device=device)
        self.task = build_task(self.session.config.data, self.session.image_size)
        if images is not None:
            self.task = dataclasses.replace(self.task, val=self.task.val.stratified_sample(images))
        self.sites = self.session.site_keys()

    def score(self, allocs: list[list[int]]) -> list[dict[str, float]]:
        """Validation metrics of each allocation, plus ``eval_seconds`` (the wall time of that evaluation)."""
        out = []
        for ranks in allocs:
            t0 = time.perf_counter()
            self.session.set_allocation(list(ranks))
            metrics = self.session.evaluate(self.task, "val", likelihood=True)  # + val/loglik (search.score)
            out.append({**metrics, "eval_seconds": time.perf_counter() - t0})
        return out
