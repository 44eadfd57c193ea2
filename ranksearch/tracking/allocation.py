"""Per-layer rank allocation telemetry as one pyarrow table, and its export as a PEFT-style rank pattern.

Schema (one row per adapter layer per snapshot):

| column | type | meaning |
|---|---|---|
| step | int64 | optimizer step of the snapshot |
| tower | string | "vision" or "text" |
| layer | int32 | block index |
| module | string | q, k, v, o, fc, proj (or a family-specific name, e.g. RLRR's ln_1/ln_2) |
| rank | int32 | current (allocated) rank |
| max_rank | int32 | rank the layer was built with (0: not a low-rank update, e.g. SSF) |
| trainable_params | int64 | trainable parameters of the layer |
| importance_mean/min/max | float64 | statistics of per-component importance (null if the family has none) |
| effective_rank | int32 | rank as the update acts now (e.g. nonzero gates); equals rank for most families |
| importance_std | float64 | population standard deviation of per-component importance (null if none) |
| active_params | int64 | parameters of the active components (effective_rank × params per rank; else trainable) |

Columns after ``importance_max`` were appended later; readers select columns by name.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from ranksearch.adapters.base import AdapterLayer

ALLOCATION_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("tower", pa.string()),
        ("layer", pa.int32()),
        ("module", pa.string()),
        ("rank", pa.int32()),
        ("max_rank", pa.int32()),
        ("trainable_params", pa.int64()),
        ("importance_mean", pa.float64()),
        ("importance_min", pa.float64()),
        ("importance_max", pa.float64()),
        ("effective_rank", pa.int32()),
        ("importance_std", pa.float64()),
        ("active_params", pa.int64()),
    ]
)

# open_clip module path of each site matrix inside a ResidualAttentionBlock (the unfused attention names).
MODULE_PATHS = {
    "q": "attn.q_proj",
    "k": "attn.k_proj",
    "v": "attn.v_proj",
    "o": "attn.out_proj",
    "fc": "mlp.c_fc",
    "proj": "mlp.c_proj",
    "ln_1": "ln_1",
    "ln_2": "ln_2",
}
TOWER_PATHS = {"vision": "visual.transformer.resblocks", "text": "transformer.resblocks"}


def module_path(tower: str, layer: int, module: str) -> str:
    """open_clip path of a site, e.g. ``visual.transformer.resblocks.3.attn.q_proj``."""
    return f"{TOWER_PATHS[tower]}.{layer}.{MODULE_PATHS.get(module, module)}"


def allocation_rows(layers: Iterable[AdapterLayer], step: int) -> list[dict]:
    """One snapshot of every layer's allocation."""
    rows = []
    for layer in layers:
        imp = layer.importance()
        has_imp = imp is not None and imp.numel() > 0
        imp_f = imp.detach().float() if has_imp else None
        eff = layer.effective_rank()
        per_rank = layer.params_per_rank()
        trainable = layer.num_trainable()
        rows.append(
            {
                "step": int(step),
                "tower": layer.site.tower,
                "layer": layer.site.layer,
                "module": layer.site.module,
                "rank": layer.rank(),
                "max_rank": layer.max_rank(),
                "trainable_params": trainable,
                "importance_mean": float(imp_f.mean()) if has_imp else None,
                "importance_min": float(imp_f.min()) if has_imp else None,
                "importance_max": float(imp_f.max()) if has_imp else None,
                "effective_rank": eff,
                "importance_std": float(imp_f.std(unbiased=False)) if has_imp else None,
                "active_params": eff * per_rank if per_rank > 0 else trainable,
            }
        )
    return rows


def allocation_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ALLOCATION_SCHEMA)


def final_rows(rows: list[dict]) -> list[dict]:
    """The rows of the last snapshot (highest step)."""
    if not rows:
        return []
    last = max(r["step"] for r in rows)
    return [r for r in rows if r["step"] == last]


def rank_pattern(rows: list[dict], effective: bool = False) -> dict[str, int]:
    """The final allocation as a PEFT-style ``rank_pattern``: open_clip module path -> rank.

    Layers that are not low-rank updates (``max_rank == 0``, e.g. RLRR's SSF) are left out.

    Args:
        rows: telemetry rows (``allocation_rows`` snapshots); only the last step is used.
        effective: export ``effective_rank`` instead of the allocated ``rank``.
    """
    key = "effective_rank" if effective else "rank"
    return {
        module_path(r["tower"], r["layer"], r["module"]): int(r[key])
        for r in sorted(final_rows(rows), key=lambda r: (r["tower"] != "vision", r["layer"], r["module"]))
        if r["max_rank"] > 0
    }
