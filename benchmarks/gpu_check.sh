#!/usr/bin/env bash
# One prepared GPU measurement for issue #8 (1B shape, seq 1024, bf16 on one H100/H200): every stage,
# upstream's path vs ours, side by side, written as JSON to $OUT (or ./gpu_check/ outside the device tool).
# It needs only torch + transformers + tokenizers + pyarrow (no trl/datasets/deepspeed), and the Qwen
# tokenizer files (python -m utils.tokenizer) for the real SFT/DPO length distributions:
#   device run: carry ["models/Qwen2.5-0.5B-Instruct"], command: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
export PYTHONUNBUFFERED=1
for stage in pt sft dpo; do
  python3 -m benchmarks.train_speed --stage "$stage" --shape 1b --seq_len 1024 --batch_size 8 --steps 10 --warmup 3 \
    --configs baseline ours ours+compile --json "$out/speed_$stage.json" 2>&1 | tee "$out/speed_$stage.log"
done
# The T4-class demo recipe's shape at seq 128, for its peak memory (on the big GPU).
python3 -m benchmarks.train_speed --stage pt --shape 1b --seq_len 128 --batch_size 4 --steps 3 --warmup 1 \
  --configs ours+gc --json "$out/speed_pt_seq128.json" 2>&1 | tee "$out/speed_pt_seq128.log"
