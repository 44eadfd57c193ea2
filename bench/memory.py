"""Item 5: peak memory of a training step vs the frozen model's inference + activations; optimizer state.

Each measurement runs in a fresh subprocess (``python -m bench.memory MODE ...``) so that memory freed by other
benchmarks cannot hide or inflate a peak. On CPU the peak is the process's resident-set high-water mark
(VmHWM, reset before the measured steps: it sees every allocation, torch's included, which ``tracemalloc``
does not); on CUDA it is ``torch.cuda.max_memory_allocated``. Reference ("floor"): the frozen stock model's
forward keeping the activations a LoRA on every block needs, plus that backward (no adapter, no optimizer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from bench.report import Context, Row

MiB = 2**20


def _child(mode: str, model_name: str, device_spec: str, batch: int) -> dict:
    """Runs inside the subprocess: build, warm up one step, measure the peak of two more."""
    from bench.common import FloorLoop, Workload, build, lora_sites, lowest_adapted, make_trainer
    from bench.timing import measure_peak, rss_bytes
    from ranksearch.adapters.lora import LoraConfig

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    device = torch.device(device_spec)
    if device.type == "cuda":
        torch.cuda.init()
    before_model = rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
    model, size = build(model_name, device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    work = Workload.make(model_name, size, 32, 10)
    sites = lora_sites(model)
    out: dict = {"mode": mode, "weights_bytes": weights}
    if mode == "inference":
        x = torch.randn(batch, 3, size, size, device=device)
        tokens = work.tokens.to(device)

        def fn():
            with torch.no_grad():
                model.encode_image(x), model.encode_text(tokens)

    elif mode == "floor":
        fn = FloorLoop(model, work, device, batch, lowest_adapted(sites)).step
    else:
        trainer, family = make_trainer(
            model, "lora", LoraConfig(r=2, dropout=0.0), sites, work, device, batch
        )
        fn = trainer.train_step
    fn()  # warm-up: optimizer state, allocator pools, oneDNN caches
    before, peak = measure_peak(lambda: (fn(), fn()), device)
    out.update(before=before, peak=peak, process_before_model=before_model)
    if mode == "trial":
        adapter = {id(p) for p in family.trainable_parameters()}
        opt = trainer.optimizer
        state_params = [p for g in opt.param_groups for p in g["params"] if p in opt.state]
        n = sum(p.numel() for p in family.trainable_parameters())
        trainer.train_step()  # leaves gradients set to None; recompute them for the byte count
        state_bytes = sum(
            v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)
        )
        param_bytes = sum(p.numel() * p.element_size() for p in family.trainable_parameters())
        out.update(
            adapter_params=n,
            state_only_adapters=all(id(p) in adapter for p in state_params)
            and len(state_params) == len(adapter),
            optimizer_state_bytes=state_bytes,
            # a gradient per adapter parameter exists during the step (same dtype as the parameter)
            bytes_per_adapter_param=(state_bytes + 2 * param_bytes) / n,
        )
    return out


def _measure(modes: list[str], model_name: str, ctx: Context, batch: int) -> dict[str, dict]:
    """Run ``modes`` in one child process (quick mode: peaks are not clean, but every path runs) -> results."""
    env = dict(os.environ, BENCH_THREADS=str(torch.get_num_threads()))
    cmd = [sys.executable, "-m", "bench.memory", ",".join(modes), model_name, str(ctx.device), str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {modes} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(ctx: Context) -> list[Row]:
    model_name, batch = ("rs-tiny-clip", 32) if ctx.quick else ("ViT-B-32", 8)
    label = "ViT-B-32" if model_name == "ViT-B-32" else "tiny"
    modes = ["inference", "floor", "trial"]
    if ctx.quick:
        res = _measure(modes, model_name, ctx, batch)
    else:  # a fresh process per measurement, so no freed memory of another hides or inflates a peak
        res = {mode: _measure([mode], model_name, ctx, batch)[mode] for mode in modes}
    kind = "CUDA max_memory_allocated" if ctx.device.type == "cuda" else "process VmHWM"

    def total(mode: str) -> float:
        """Peak memory the workload added to the process: from before the model was built to the peak."""
        return (res[mode]["peak"] - res[mode]["process_before_model"]) / MiB

    trial = res["trial"]
    return [
        Row(
            "memory",
            "trial step peak / floor (frozen forward + activations + backward) peak",
            "report",
            f"{total('trial') / total('floor'):.3f}",
            None,
            f"{label}, batch {batch}, {kind}: trial {total('trial'):.0f} MiB, floor {total('floor'):.0f} MiB, "
            f"inference only {total('inference'):.0f} MiB, weights {trial['weights_bytes'] / MiB:.0f} MiB "
            "(peaks counted from the process before the model was built)",
        ),
        Row(
            "memory",
            "optimizer state only for adapter parameters",
            "yes",
            "yes" if trial["state_only_adapters"] else "no",
            bool(trial["state_only_adapters"]),
            f"{trial['adapter_params']:,} adapter parameters, AdamW state {trial['optimizer_state_bytes'] / 1024:.0f} KiB",
        ),
        Row(
            "memory",
            "bytes per adapter parameter (param + grad + AdamW moments)",
            "report",
            f"{trial['bytes_per_adapter_param']:.1f}",
            None,
            "fp32: 4 + 4 + 8 = 16 expected; the fused AdamW step counters add a few bytes per tensor",
        ),
    ]


if __name__ == "__main__":
    modes, name, dev, b = sys.argv[1:5]
    print(json.dumps({mode: _child(mode, name, dev, int(b)) for mode in modes.split(",")}))
