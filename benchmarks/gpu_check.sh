#!/usr/bin/env bash
# The GPU check: what the training engine holds for each full recipe on this machine (precision, attention), and
# every stage's speed (tokens/s, MFU) and peak memory at the 1B shape, in one table and one JSON
# (benchmarks/gpu_check.py). About 3 minutes on one H100-class GPU, at most 6 with its time boxes.
#
#   bash run.sh gpu-check                          # on your GPU machine, in the project's environment
#   bash benchmarks/gpu_check.sh --dry_run         # the same steps with tiny shapes on a CPU, in a minute or two
#
# Results: $GPU_CHECK_DIR (default gpu_check/): gpu_check.json and gpu_check.txt.
#
# On a GPU machine that cannot reach PyPI and whose Python has torch, Triton, accelerate and transformers but not trl,
# datasets or liger-kernel, bring along (about 25 MiB in all):
#   1. the repository;
#   2. .whl/, made on a machine with PyPI access by `bash benchmarks/gpu_wheels.sh`: the pure-Python wheels the check
#      needs, and .whl/memory_estimate.json, the fake-tensor memory estimate computed there on the CPU;
#   3. the tokenizer files in models/Qwen2.5-0.5B-Instruct/ (`bash run.sh setup` or `bash prepare.sh --stage model`
#      writes them; they are not in git).
# Then run this script there with that machine's python3 (PYTHON=...): it installs .whl/ into a folder inside the
# results folder and puts it first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${GPU_CHECK_DIR:-gpu_check}
py=${PYTHON:-python3}
mkdir -p "$out"
extra=()
if [ -d .whl ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$out/site" .whl/*.whl
  export PYTHONPATH=$out/site${PYTHONPATH:+:$PYTHONPATH}
  [ -f .whl/memory_estimate.json ] && extra+=(--memory_estimate .whl/memory_estimate.json)
fi
if [ ! -f models/Qwen2.5-0.5B-Instruct/tokenizer.json ]; then
  echo "gpu_check: no tokenizer in models/Qwen2.5-0.5B-Instruct/: bring its files along (see the header)" >&2
  exit 2
fi
# Fail in seconds, not after the first step, if the packages do not import together.
"$py" -c "import torch, transformers, trl, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
export PYTHONUNBUFFERED=1
"$py" -m benchmarks.gpu_check --output_dir "$out" "${extra[@]}" "$@"
