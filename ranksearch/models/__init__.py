"""open_clip model construction and the tower/block map adapters are placed on."""

from ranksearch.models.clip import build_model, tower_blocks

__all__ = ["build_model", "tower_blocks"]
