#!/usr/bin/env bash
# Build .venv-trl: TRL 1.16 beside ptdpo's own pins, for bench/vs_trl.py (the side-by-side step benchmark
# against TRL's GRPOTrainer). TRL gets its own environment so that nothing of it reaches .venv or the test
# suite; it shares .venv's torch, transformers, accelerate and datasets releases (constraints.txt), so both
# sides of the benchmark run the same model code. A second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TRL_VERSION=1.16.0

stamp=.venv-trl/.trl-installed
if [ -x .venv-trl/bin/python ] && [ -f "$stamp" ] && [ "$stamp" -nt constraints.txt ] && [ "$stamp" -nt "$0" ]; then
  exit 0
fi
[ -x .venv-trl/bin/python ] || "$PY" -m venv .venv-trl
.venv-trl/bin/python -m pip install --quiet --upgrade pip
.venv-trl/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
.venv-trl/bin/python -m pip install --quiet -c constraints.txt "trl==$TRL_VERSION" pillow
.venv-trl/bin/python -c "import trl, torch, transformers; print('trl', trl.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
touch "$stamp"
echo "TRL $TRL_VERSION installed in .venv-trl"
