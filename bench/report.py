"""Result rows and the writer that rewrites ``docs/benchmarks.md``."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Row:
    """One line of the results table.

    ``met`` is True/False against ``target``, or None for a reported-only figure (no target) or a benchmark
    that could not run (then ``measured`` says why).
    """

    bench: str
    name: str
    target: str
    measured: str
    met: bool | None = None
    note: str = ""


@dataclass
class Context:
    """What every benchmark gets: the device, quick mode (CI: checks that everything executes) and a logger."""

    device: torch.device
    quick: bool
    notes: list[str] = field(default_factory=list)

    def log(self, msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


def at_most(value: float, limit: float, fmt: str = "{:.2f}") -> tuple[str, bool]:
    return fmt.format(value), value <= limit


def at_least(value: float, limit: float, fmt: str = "{:.2f}") -> tuple[str, bool]:
    return fmt.format(value), value >= limit


def ratio_note(t, name: str, baseline: str) -> str:
    """'CPU-time ratio x.xx' for a row's notes (empty on CUDA)."""
    r = t.cpu_ratio(name, baseline)
    return "" if r is None else f"CPU-time ratio {r:.2f}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "open_clip_torch", "peft", "ray", "optuna", "mlflow", "ranksearch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_lines(device: torch.device) -> list[str]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines = [
        f"- CPU: {_cpu_model()}, {os.cpu_count()} logical cores, torch threads: {torch.get_num_threads()}",
        f"- device: {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else " (no GPU used)"),
        f"- OS: {platform.platform()}",
    ]
    if load is not None:
        lines.append(f"- load average when the run ended: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(
    path: Path,
    rows: list[Row],
    ctx: Context,
    command: str,
    seconds: float,
    preamble: str,
    misses: dict[str, str],
    date: str | None = None,
) -> str:
    """Rewrite ``path``: machine, versions, command, date, the table and notes on every missed target.

    Args:
        misses: row name -> why it was missed and what would fix it (written under "Missed targets").
    """
    when = date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    out = ["# Benchmarks", "", preamble.strip(), "", "## Run", ""]
    out += [
        f"- command: `{command}`",
        f"- date: {when}; wall time of the suite: {seconds / 60:.1f} min"
        + (" (quick mode)" if ctx.quick else ""),
        f"- code: git {_git_rev()}",
        f"- versions: {versions}",
        *machine_lines(ctx.device),
        "",
        "## Results",
        "",
        "| benchmark | what | target | measured | met? | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "–"}[r.met]
        out.append(
            f"| {r.bench} | {_cell(r.name)} | {_cell(r.target)} | {_cell(r.measured)} | {met} | {_cell(r.note)} |"
        )
    missed = [r for r in rows if r.met is False]
    out += ["", "## Missed targets", ""]
    if not missed:
        out.append("None in this run.")
    for r in missed:
        why = misses.get(r.name) or misses.get(r.bench) or "no explanation recorded"
        out.append(f"- **{r.name}** ({r.measured} vs {r.target}): {why}")
    if ctx.notes:
        out += ["", "## Notes from this run", ""] + [f"- {n}" for n in ctx.notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return when
