#!/usr/bin/env bash
# Prepare, on a machine with PyPI access, what benchmarks/gpu_check.sh needs on a GPU machine that cannot reach PyPI
# and whose Python (3.12 here; PYTHON_VERSION=3.11 for another) has torch, Triton, accelerate and transformers but not
# trl, datasets or liger-kernel:
#   .whl/*.whl                  the pure-Python wheels (git-ignored; copy the folder with the repository);
#   .whl/memory_estimate.json   the T4 demo recipe's fake-tensor memory estimate, computed here on the CPU, so that
#                               the GPU machine spends its time measuring.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  transformers==5.24.0 trl==1.16.0 datasets==5.2.0 liger-kernel==0.8.5 dill==0.4.1 multiprocess==0.70.19
PY=${VENV:-.venv}/bin/python
[ -x "$PY" ] || PY=python3
"$PY" - <<'PYEOF'
import json
from benchmarks.memory import estimate, recipe_setup

setup = recipe_setup("pt", "configs/pt_t4_demo.yaml", "1b")
setup.optim = "adamw_torch"  # as gpu_check measures it (bitsandbytes may be missing there)
json.dump(estimate(setup), open(".whl/memory_estimate.json", "w"), indent=2)
PYEOF
