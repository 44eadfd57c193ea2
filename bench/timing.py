"""Timing and memory helpers shared by every benchmark.

Benchmarks report *ratios* against a baseline measured in the same run: the candidates are run interleaved
(round-robin, rotating the start so none always runs first after a pause), after a warm-up, and each one's
median is taken. On a shared or throttled machine this keeps slow phases from favouring one candidate. On
CUDA each repeat is timed with CUDA events (the host does not wait for the device between launches), on CPU
with ``time.perf_counter``.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    """Per-candidate repeat times in seconds (after warm-up)."""

    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(
        default_factory=dict
    )  # process CPU seconds of the same repeats (CPU only)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, name: str, baseline: str) -> float:
        """Median over rounds of time(name) / time(baseline), each pair taken back to back in one round.

        Pairing cancels slow phases of a shared machine (another job's burst slows both members of a pair),
        which a ratio of the two medians does not; on a quiet machine the two agree.
        """
        pairs = [a / b for a, b in zip(self.times[name], self.times[baseline], strict=True)]
        return statistics.median(pairs)

    def ratio_of_medians(self, name: str, baseline: str) -> float:
        return self.median(name) / self.median(baseline)

    def cpu_ratio(self, name: str, baseline: str) -> float | None:
        """The same paired median ratio on this process's CPU time: a cross-check that other jobs' bursts
        barely move (they steal wall time, not this process's CPU time); None on CUDA."""
        if not self.cpu.get(name) or not self.cpu.get(baseline):
            return None
        return statistics.median(a / b for a, b in zip(self.cpu[name], self.cpu[baseline], strict=True))

    def spread(self, name: str) -> float:
        """Relative spread (max - min) / median, a rough noise indicator for the doc."""
        t = self.times[name]
        return (max(t) - min(t)) / statistics.median(t)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes; CUDA events on GPU so the host-side launch time is not what we measure."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(
    candidates: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int = 5,
    warmup: int = 1,
) -> Timing:
    """Time every candidate ``repeats`` times, round-robin, after ``warmup`` untimed calls of each.

    Args:
        candidates: name -> zero-argument callable doing one unit of work (one training step, one forward).
        device: where the work runs (picks CUDA events vs wall clock).
        repeats: timed calls per candidate; the median is what gets reported.
        warmup: untimed calls per candidate first (allocator, oneDNN primitive caches, torch.compile).
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    sync(device)
    out = Timing({name: [] for name in names}, {name: [] for name in names})
    for i in range(repeats):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            c0 = time.process_time()
            out.times[name].append(time_once(candidates[name], device))
            if device.type != "cuda":
                out.cpu[name].append(time.process_time() - c0)
    return out


# --- memory --------------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; psutil-free)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0: write 5 to /proc/self/clear_refs). True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_hwm_bytes() -> int:
    """VmHWM (peak RSS, resettable with ``reset_peak_rss``) from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return peak_rss_bytes()


def measure_peak(fn: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """(bytes in use before, peak bytes during) one call of ``fn``: CUDA allocator stats, else process RSS.

    On CPU the peak is the process's VmHWM after resetting it, so it covers everything torch allocated
    (``tracemalloc`` does not see torch's allocator).
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return before, torch.cuda.max_memory_allocated(device)
    before = rss_bytes()
    reset_peak_rss()
    fn()
    return before, peak_hwm_bytes()
