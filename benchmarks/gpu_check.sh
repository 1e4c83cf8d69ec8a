#!/usr/bin/env bash
# One GPU measurement, about 10 minutes on one H100/H200-class GPU, written as JSON and logs to a results folder
# (GPU_CHECK_DIR, default ./gpu_check/):
#   1. the precision the training engine really uses for each full recipe on this GPU (benchmarks/engine_probe.py);
#   2. the speed of every stage at the 1B shape, seq 1024, bf16: upstream's path vs ours and each lever alone,
#      side by side (benchmarks/train_speed.py);
#   3. the T4 demo shape's peak memory, estimated and measured (benchmarks/memory.py --measure).
#
#   On a GPU machine with requirements.txt installed:    bash benchmarks/gpu_check.sh
#   On an offline GPU machine whose Python has torch and transformers but not trl, datasets or liger-kernel:
#   on a machine with PyPI access run `bash benchmarks/gpu_wheels.sh` (wheels into .whl/) and
#   `python -m tools.make_tokenizer`, copy the repository with .whl/ and models/Qwen2.5-0.5B-Instruct, then run this
#   script there; it installs .whl/ into a folder inside the results folder first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${GPU_CHECK_DIR:-gpu_check}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$out/site" .whl/*.whl
  export PYTHONPATH=$out/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
# Fail in seconds, not after the first stage, if the packages do not import together.
python3 -c "import torch, transformers, trl, datasets; print(torch.__version__, transformers.__version__, trl.__version__)" \
  | tee -a "$out/gpu.txt"
export PYTHONUNBUFFERED=1
for stage in pt sft dpo; do
  python3 benchmarks/engine_probe.py "$stage" "configs/${stage}_full.yaml" real "$out/engine_$stage.json" 2>&1 \
    | tail -n 3 > "$out/engine_$stage.log"
  echo "engine, ${stage}_full.yaml: $(cat "$out/engine_$stage.json")" | tee -a "$out/gpu.txt"
done
speed() {
  local stage=$1; shift
  python3 -m benchmarks.train_speed --stage "$stage" --shape 1b --seq_len 1024 --batch_size 8 --steps 10 --warmup 3 \
    --configs "$@" --json "$out/speed_$stage.json" 2>&1 | tee "$out/speed_$stage.log"
}
speed pt baseline ours ours-fused_head ours+flex ours+compile
speed sft baseline ours ours+flex
speed dpo baseline ours
# The T4 demo recipe's shape and settings at seq 128 (adamw_torch: bitsandbytes may be missing; its 8-bit
# state is 4.7 GiB smaller, by the estimate's accounting), estimate vs torch's measured peak.
python3 -m benchmarks.memory --shape 1b --seq_len 128 --batch_size 4 --precision fp16 --activation_checkpointing \
  --optim adamw_torch --measure 2>&1 | tee "$out/memory_t4.log"
