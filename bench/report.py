"""What every benchmark script writes beside its numbers: the machine, the load, and its own section of
docs/benchmarks.md (replaced in place on a re-run, other sections kept)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def load_average() -> str:
    """The 1/5/15-minute load average, e.g. ``1.20/0.85/0.60``."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - platforms without it
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_line() -> str:
    """CPU model, visible cores, memory, OS and Python, in one line."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = memory_gib()
    parts = [cpu_model(), f"{cores} CPU cores visible"]
    if mem is not None:
        parts.append(f"{mem:.0f} GiB RAM")
    parts += [f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}"]
    return ", ".join(parts)


def write_section(path: Path, section: str, text: str) -> None:
    """Put ``text`` (which starts with the ``section`` heading) into ``path``: in place of that section when
    it exists (up to the next ``## `` heading), else at the end."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    if section in doc:
        start = doc.index(section)
        nxt = doc.find("\n## ", start + len(section))
        doc = doc[:start] + text + ("\n" + doc[nxt + 1 :] if nxt != -1 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)
