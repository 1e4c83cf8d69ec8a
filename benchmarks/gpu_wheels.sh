#!/usr/bin/env bash
# Download, on a machine with PyPI access, the pure-Python wheels benchmarks/gpu_check.sh needs on a GPU machine that
# cannot reach PyPI and whose Python has torch, Triton, accelerate and transformers but not trl, datasets or liger-kernel.
# They land in .whl/ (git-ignored); copy that folder with the repository. gpu_check.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  transformers==5.24.0 trl==1.16.0 datasets==5.2.0 liger-kernel==0.8.5 dill==0.4.1 multiprocess==0.70.19
