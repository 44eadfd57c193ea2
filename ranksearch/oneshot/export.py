"""A one-shot allocation as an ordinary trial: the supernet's first r components per site, as a plain adapter.

At active rank k a nested layer computes exactly what a LoRA (CoDyRA) layer of rank k with the first k
components computes (``ranksearch.oneshot.nested``), so an allocation of a trained supernet *is* an ordinary
adapter with ``adapter.rank_pattern`` = the allocation. ``allocation_trial`` writes it as a trial folder
(config.yaml, adapter.safetensors, rank_pattern.json); ``export_allocation`` then runs the usual
``ranksearch export`` on it: merged into the weights, a stock open_clip checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ranksearch.errors import ConfigError, RanksearchError
from ranksearch.oneshot.nested import NestedCodyraLinear, NestedLoraLinear


def _sliced(layer: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """The tensors of a rank-k plain layer: rows of A, columns of B, entries of gate and mask (contiguous).

    A nested layer's mask is ones on its prefix (``set_rank``), so the first k mask entries are the plain layer's
    all-ones mask."""
    if isinstance(layer, NestedLoraLinear):
        names = {"lora_A": "row", "lora_B": "col", "lora_mask": "row"}
    elif isinstance(layer, NestedCodyraLinear):
        names = {"codyra_A": "row", "codyra_B": "col", "codyra_gate": "row", "codyra_mask": "row"}
    else:
        raise RanksearchError(f"{type(layer).__name__} is not a nested-rank layer")
    state = layer.state_dict()
    out = {}
    for name, how in names.items():
        t = state[name]
        out[name] = (t[:k] if how == "row" else t[:, :k]).detach().clone().contiguous().cpu()
    return out


def truncated_state(model: nn.Module, allocation: dict[str, int]) -> dict[str, torch.Tensor]:
    """Adapter tensors (``adapter_state_dict`` names) of the plain adapter an allocation of ``model`` equals.

    Sites at rank 0 have no tensors (a rank pattern leaves them unadapted).
    """
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, NestedLoraLinear | NestedCodyraLinear):
            k = int(allocation[module.site.key])
            if k > 0:
                out.update({f"{name}.{key}": v for key, v in _sliced(module, k).items()})
    return out


def allocation_trial(
    supernet_dir: Path, allocation: dict[str, int], out_dir: Path, metrics: dict | None = None
) -> Path:
    """Write ``out_dir`` as a finished trial folder holding the supernet's ``allocation`` as a plain adapter.

    ``metrics`` (the one-shot estimate) go into metrics.json. Returns ``out_dir``.
    """
    from safetensors.torch import save_file

    from ranksearch.config import load_trial_config
    from ranksearch.config.load import dump_trial_config
    from ranksearch.oneshot.supernet import rebuild_supernet
    from ranksearch.tracking.allocation import module_path

    supernet_dir, out_dir = Path(supernet_dir), Path(out_dir)
    session = rebuild_supernet(supernet_dir)
    session.set_allocation(allocation)
    config = load_trial_config(supernet_dir / "config.yaml")
    data = config.model_dump(mode="json")
    data["adapter"]["rank_pattern"] = {k: int(v) for k, v in allocation.items()}
    from ranksearch.config.load import validate_trial_config

    plain = validate_trial_config(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_trial_config(plain))
    state = truncated_state(session.model, allocation)
    meta = {"config": plain.model_dump(mode="json"), "supernet": str(supernet_dir.resolve())}
    save_file(state, str(out_dir / "adapter.safetensors"), metadata={"ranksearch": json.dumps(meta)})
    pattern = {}
    for key, r in allocation.items():
        tower, layer, module = key.split(".")
        if r > 0:
            pattern[module_path(tower, int(layer), module)] = int(r)
    (out_dir / "rank_pattern.json").write_text(json.dumps(pattern, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps({"final": metrics or {}, "history": []}, indent=2))
    return out_dir


def export_allocation(supernet_dir: Path, allocation: dict[str, int], out_dir: Path) -> dict:
    """``ranksearch export`` of one allocation: a stock open_clip folder with the allocation merged in."""
    import tempfile

    from ranksearch.export import export_trial

    with tempfile.TemporaryDirectory(prefix="rs-alloc-") as tmp:
        trial = allocation_trial(supernet_dir, allocation, Path(tmp) / "trial")
        manifest = export_trial(trial, out_dir)
    manifest["source_trial"] = str(Path(supernet_dir).resolve())
    manifest["allocation"] = dict(allocation)
    (Path(out_dir) / "export.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def sweep_allocation(sweep_folder: Path, number: int) -> dict[str, int]:
    """The site -> rank allocation scored as evaluation ``number`` in a one-shot sweep folder."""
    import pyarrow.parquet as pq

    path = Path(sweep_folder) / "search" / "evaluations.parquet"
    if not path.is_file():
        msg = f"{sweep_folder} is not a finished one-shot sweep: search/evaluations.parquet is missing"
        raise ConfigError([("--allocation", msg)])
    rows = pq.read_table(path, columns=["number", "ranks"]).to_pylist()
    for row in rows:
        if row["number"] == number:
            return json.loads(row["ranks"])
    known = sorted(r["number"] for r in rows)
    msg = f"{number}: no such evaluation in {path} (numbers {known[0]}..{known[-1]}; the front is in search/allocation.parquet)"
    raise ConfigError([("--allocation", msg)])


def export_sweep_allocation(sweep_folder: Path, number: int, out_dir: Path) -> dict:
    """``ranksearch export SWEEP --allocation N``: evaluation N of a one-shot sweep, merged into open_clip."""
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise RanksearchError(f"--out {out_dir} exists and is not empty; choose a new folder")
    manifest = export_allocation(
        Path(sweep_folder) / "supernet", sweep_allocation(sweep_folder, number), out_dir
    )
    manifest["exported"] = f"allocation {number} of {Path(sweep_folder).name}"
    return manifest
