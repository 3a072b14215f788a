#!/usr/bin/env bash
# Write containers/requirements-gpu.lock: every Python package of the GPU image, pinned, resolved for the
# image's platform (linux x86_64, glibc >= 2.28, Python 3.11) without installing anything here.
#
# Inputs: ptdpo's dependencies and its `gpu` extra (vllm==0.32.*) from pyproject.toml, constrained by
# constraints.txt, so every package the CPU environment pins gets the same version in the image
# (tests/test_container.py checks that). torch==2.13.0 resolves to the CUDA build here because uv reads
# only the package index, not this machine's local CPU wheels.
#
# Run after changing pyproject.toml's dependencies, the gpu extra or constraints.txt:
#   bash scripts/lock_image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# One uv release for the lock and the image (containers/Dockerfile copies uv from the same version), so a
# rerun with unchanged inputs writes the same file.
UV_VERSION=0.13.9
LOCK=containers/requirements-gpu.lock

uv_bin=""
if command -v uv >/dev/null 2>&1 && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
  uv_bin=$(command -v uv)
else
  # A scratch virtualenv, removed on exit: nothing is installed into the project's environments.
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  "${PYTHON:-python3}" -m venv "$scratch/venv"
  "$scratch/venv/bin/python" -m pip install --quiet "uv==$UV_VERSION"
  uv_bin="$scratch/venv/bin/uv"
fi

# --no-config: a uv.toml or UV_* settings of this machine do not change the lock.
"$uv_bin" pip compile --no-config --quiet \
  pyproject.toml --extra gpu \
  --constraint constraints.txt \
  --python-platform x86_64-manylinux_2_28 --python-version 3.11 \
  --custom-compile-command "bash scripts/lock_image.sh" \
  --output-file "$LOCK"
echo "wrote $LOCK ($(grep -c '^[A-Za-z0-9]' "$LOCK") packages)"
