#!/usr/bin/env bash
# One prepared GPU measurement for issue #8 (1B shape, seq 1024, bf16 on one H100/H200): every stage,
# upstream's path vs ours and each lever alone, side by side, written as JSON and logs to $OUT (or
# ./gpu_check/ outside the device tool); then the T4 demo shape's peak memory, estimated and measured.
#   here:       bash benchmarks/gpu_wheels.sh && python -m utils.tokenizer
#   device run: carry [".whl", "models/Qwen2.5-0.5B-Instruct"], command: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
# Fail in seconds, not after the first stage, if the carried wheels do not import against the image.
python3 -c "import torch, transformers, trl, datasets; print(torch.__version__, transformers.__version__, trl.__version__)" \
  | tee -a "$out/gpu.txt"
export PYTHONUNBUFFERED=1
speed() {
  local stage=$1; shift
  python3 -m benchmarks.train_speed --stage "$stage" --shape 1b --seq_len 1024 --batch_size 8 --steps 10 --warmup 3 \
    --configs "$@" --json "$out/speed_$stage.json" 2>&1 | tee "$out/speed_$stage.log"
}
speed pt baseline ours ours-fused_head ours+flex ours+compile
speed sft baseline ours ours+flex
speed dpo baseline ours
# The T4 demo recipe's shape and settings at seq 128 (adamw_torch: bitsandbytes is not carried; its 8-bit
# state is 4.7 GiB smaller, by the estimate's accounting), estimate vs torch's measured peak.
python3 -m benchmarks.memory --shape 1b --seq_len 128 --batch_size 4 --precision fp16 --activation_checkpointing \
  --optim adamw_torch --measure 2>&1 | tee "$out/memory_t4.log"
