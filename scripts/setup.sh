#!/usr/bin/env bash
# Create .venv and install ptdpo with its dev tools on a CPU machine.
# Pinned by constraints.txt so pip resolves in seconds and keeps the CPU torch wheel.
# The GPU image (containers/) installs its own CUDA torch and vLLM instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
stamp=.venv/.ptdpo-installed
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints.txt ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
touch "$stamp"
echo "ptdpo installed in .venv"
