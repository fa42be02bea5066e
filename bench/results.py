"""Benchmark results: figures with their targets, the machine they were measured on, dated rows in RESULTS.md.

Each benchmark returns a `BenchResult`; `append_results` appends one dated section to `bench/RESULTS.md` (or the
`--results` path) with the machine, the versions, the settings and a table of figures, and `write_json` writes the
same as JSON (the smoke test reads that).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmark results

Appended by `python -m bench` (`./dev.sh bench`, `make bench`); newest last. Each section names the machine, the
versions and the settings it was measured with. Ratios are measured within one run, alternating the two sides, as
medians over repeats; absolute times mean something only on a dedicated machine.
"""


@dataclass
class Figure:
    """One measured number. `target` is the goal in words (e.g. "≤ 1.05"); `met` whether it was reached (None: no
    target, or not comparable)."""

    name: str
    value: float | None
    unit: str = ""
    target: str | None = None
    met: bool | None = None

    def formatted(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "n/a"
        value = self.value
        if self.unit == "×" and 0.1 <= abs(value) < 10:
            # Ratios are compared with targets such as ≤ 1.00: 1.003 must not print as a "1.00" that missed.
            return f"{value:.3f} ×"
        if abs(value) >= 1000:
            text = f"{value:,.0f}"
        elif abs(value) >= 100:
            text = f"{value:.0f}"
        elif abs(value) >= 10:
            text = f"{value:.1f}"
        else:
            text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
        return f"{text} {self.unit}".strip()


@dataclass
class BenchResult:
    """A benchmark's outcome. `skipped` says why it did not run (then `figures` may be empty)."""

    name: str
    title: str
    settings: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def add(
        self, name: str, value: float | None, unit: str = "", target: str | None = None, met: bool | None = None
    ) -> Figure:
        figure = Figure(name, None if value is None else float(value), unit, target, met)
        self.figures.append(figure)
        print(
            f"[bench {self.name}] {name}: {figure.formatted()}"
            + (f"   (target {target}: {'met' if met else 'MISSED'})" if target and met is not None else ""),
            flush=True,
        )
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"[bench {self.name}] note: {text}", flush=True)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return math.nan


def _server_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False).stdout
        return out.strip().splitlines()[0] if out.strip() else "-"
    except (OSError, subprocess.SubprocessError):
        return "-"


def machine_info() -> dict[str, str]:
    """The machine and the versions that matter for the figures."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    try:
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = "-"
    info = {
        "host": platform.node(),
        "cpu": f"{_cpu_model()} × {cores} cores",
        "memory": f"{_memory_gib():.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load average at start": load,
    }
    for package in (
        "torch",
        "diffusers",
        "transformers",
        "celery",
        "kombu",
        "fastapi",
        "uvicorn",
        "sqlalchemy",
        "psycopg",
        "redis",
        "moto",
    ):
        info[package] = _version(package)
    info["postgres"] = _server_version(["psql", "--version"])
    info["redis-server"] = _server_version(["redis-server", "--version"])
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def render_section(
    results: list[BenchResult], machine: dict[str, str], *, mode: str, command: str, preface: list[str] | None = None
) -> str:
    """One dated markdown section with every result."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {stamp} — {mode} — `{command}`", ""]
    lines += preface or []
    lines.append("Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()) + ".")
    lines.append("")
    for result in results:
        lines.append(f"### {result.title}")
        lines.append("")
        if result.skipped:
            lines.append(f"Not run: {result.skipped}")
            lines.append("")
            continue
        if result.settings:
            lines.append("Settings: " + "; ".join(f"{k} = {v}" for k, v in result.settings.items()) + ".")
            lines.append("")
        if result.figures:
            lines.append(_row(["figure", "value", "target", "met"]))
            lines.append(_row(["---", "---:", "---", "---"]))
            for figure in result.figures:
                met = "" if figure.met is None else ("yes" if figure.met else "**no**")
                lines.append(_row([figure.name, figure.formatted(), figure.target or "", met]))
            lines.append("")
        for note in result.notes:
            lines.append(f"- {note}")
        if result.notes:
            lines.append("")
    return "\n".join(lines) + "\n"


def append_results(path: Path, section: str) -> None:
    """Append `section` to the results file (created with its header when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text(encoding="utf-8") if path.exists() else HEADER
    if not existing.endswith("\n"):
        existing += "\n"
    path.write_text(existing + "\n" + section, encoding="utf-8")


def write_json(path: Path, results: list[BenchResult], machine: dict[str, str], mode: str) -> None:
    """The same results as JSON: {mode, machine, results: [{name, figures: [{name, value, ...}], ...}]}."""
    data = {"mode": mode, "machine": machine, "results": [asdict(result) for result in results]}

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(data), indent=2, default=str), encoding="utf-8")
