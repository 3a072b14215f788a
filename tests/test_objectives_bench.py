"""Smoke test of the Top-K JSD benchmark script (tiny sizes, in-process, a few seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_writes_table(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Top-K JSD\n\nold numbers\n\n## Someone else's section\n\nkeep me\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "topk_jsd.py"), "--quick", "--output", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.count("## Top-K JSD") == 1 and "old numbers" not in text
    assert "## Someone else's section\n\nkeep me" in text  # other sections survive a re-run
    rows = [line for line in text.splitlines() if line.startswith("| ") and "MiB" not in line]
    assert {row.split("|")[2].strip() for row in rows} == {"naive", "topk", "chunked"}
    assert len(rows) == 6
    assert "Command: `python bench/topk_jsd.py --quick" in text
