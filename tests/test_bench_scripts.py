"""The benchmark scripts of bench/ run in their quick modes and write their own section of a benchmarks file,
so they do not rot between the (long, manual) measurements. The other side of each comparison lives in
its own environment (TRL in ``.venv-trl``, vLLM in ``.venv-vllm``) and is left out here (``--no-trl``,
``--no-vllm``); the drivers, ptdpo's workers, the protocol and the tables all run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OTHER = "## Someone else's section\n\nkeep me\n"


def _run(tmp_path: Path, script: str, *args: str, section: str) -> str:
    out = tmp_path / "benchmarks.md"
    out.write_text(f"# Benchmarks\n\n{section}\n\nold numbers\n\n{OTHER}")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick", *args, "--markdown", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert text.count(section) == 1 and "old numbers" not in text
    assert OTHER in text  # other sections survive a re-run
    return text


def _rows(text: str, section: str) -> list[list[str]]:
    """The body rows of every table in ``section`` (header and separator rows dropped)."""
    lines = text[text.index(section):].split("\n## ")[0].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for i, line in enumerate(lines)
            if line.startswith("| ") and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))]


def test_vs_trl_quick_runs_ptdpo_arms_and_reports_the_work(tmp_path):
    section = "## Train step: ptdpo vs TRL GRPOTrainer"
    text = _run(tmp_path, "vs_trl.py", "--no-trl", section=section)
    assert "Command: `python bench/vs_trl.py --quick --no-trl --markdown" in text
    rows = _rows(text, section)
    timing, work = rows[:2], rows[2:]
    assert [r[0] for r in timing] == ["ptdpo GRPO", "ptdpo GRPO+PTD (half fail)"]
    assert all(r[2] == "not run" and float(r[1].split(" / ")[0]) > 0 for r in timing)
    # 2 prompts x 4 rollouts; both arms sample the same rollouts from the same prompts
    assert [r[1] for r in work] == ["8", "8"] and work[0][2:4] == work[1][2:4]
    ref_calls = [int(r[5].split(" / ")[0]) for r in work]
    assert ref_calls[1] > ref_calls[0] > 0  # GRPO+PTD adds the teacher's forwards on the reference
    assert "Targets: not evaluated (TRL was not run)." in text


def test_rollout_throughput_quick_runs_the_transformers_engine(tmp_path):
    section = "## Rollout throughput: transformers engine vs vLLM engine"
    text = _run(tmp_path, "rollout_throughput.py", "--no-vllm", section=section)
    (row,) = _rows(text, section)
    assert row[0] == "transformers engine" and float(row[1].split(" / ")[1].strip("*")) > 0
    assert int(row[3]) > 0  # completion tokens of 2 prompts x 4 samples, at most 8 each
    assert int(row[3]) <= 64


def test_train_step_quick_writes_its_table(tmp_path):
    section = "## Train step: GRPO vs GRPO+PTD"
    text = _run(tmp_path, "train_step.py", section=section)
    rows = _rows(text, section)
    assert [(r[0], r[1]) for r in rows] == [(b, a) for b in ("all fail", "half fail", "no fail")
                                            for a in ("GRPO", "GRPO+PTD")]
    assert [float(r[2]) for r in rows if r[1] == "GRPO+PTD"] == [1.0, 0.5, 0.0]  # the share PTD distills
