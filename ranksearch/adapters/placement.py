"""Resolve a placement (towers × layers × matrices) into concrete adapter sites.

Named layer positions follow CLIP-LoRA (``loralib/utils.py``), generalised from 12 blocks to any depth L:
bottom/mid/up are the thirds, half-bottom/half-up the halves, topK the last K blocks. For L = 12 this gives
exactly CLIP-LoRA's index tables (bottom = 0-3, mid = 4-7, up = 8-11, half-up = 6-11, top3 = 9-11).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ATTENTION_MATRICES = ("q", "k", "v", "o")
MLP_MATRICES = ("fc", "proj")


@dataclass(frozen=True, order=True)
class Site:
    """Where an adapter sits: tower ("vision"/"text"), block index and matrix ("q","k","v","o","fc","proj")."""

    tower: str
    layer: int
    module: str

    @property
    def key(self) -> str:
        """Stable string id, e.g. ``vision.3.q``; used in tables, rank patterns and state-dict names."""
        return f"{self.tower}.{self.layer}.{self.module}"


def layer_indices(selection: str | list[int], depth: int) -> list[int]:
    """Block indices for a layer selection in a tower of ``depth`` blocks. Raises ValueError if out of range."""
    if isinstance(selection, list):
        idx = sorted(set(selection))
    elif selection == "all":
        idx = list(range(depth))
    elif selection == "bottom":
        idx = list(range(0, depth // 3))
    elif selection == "mid":
        idx = list(range(depth // 3, 2 * depth // 3))
    elif selection == "up":
        idx = list(range(2 * depth // 3, depth))
    elif selection == "half-bottom":
        idx = list(range(0, depth // 2))
    elif selection == "half-up":
        idx = list(range(depth // 2, depth))
    elif m := re.fullmatch(r"top(\d+)", selection):
        idx = list(range(max(0, depth - int(m.group(1))), depth))
    elif m := re.fullmatch(r"(\d+)-(\d+)", selection):
        idx = list(range(int(m.group(1)), int(m.group(2)) + 1))
    else:
        raise ValueError(f"unknown layer selection {selection!r}")
    bad = [i for i in idx if i >= depth]
    if bad:
        raise ValueError(f"layer indices {bad} out of range for a tower of {depth} blocks")
    if not idx:
        raise ValueError(f"layer selection {selection!r} selects no block of a {depth}-block tower")
    return idx


def resolve_sites(
    towers: str, layers: str | list[int], matrices: list[str], depths: dict[str, int]
) -> list[Site]:
    """All sites of a placement, in a stable order (tower, layer, matrix order as given).

    Args:
        towers: "vision", "text" or "both".
        layers: a layer selection (see ``layer_indices``).
        matrices: subset of q, k, v, o, fc, proj.
        depths: number of blocks per available tower, from ``tower_blocks``.
    """
    wanted = ["vision", "text"] if towers == "both" else [towers]
    sites = []
    for tower in wanted:
        if tower not in depths:
            raise ValueError(f"this model has no adaptable {tower} tower (open_clip ResidualAttentionBlocks)")
        for layer in layer_indices(layers, depths[tower]):
            sites.extend(Site(tower, layer, m) for m in matrices)
    return sites
