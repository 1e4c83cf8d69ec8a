#!/usr/bin/env bash
# mini_qwen: one entry point for people.
#
#   bash run.sh demo                 # whole demo on the bundled data: PT -> SFT -> DPO -> answers (CPU is fine)
#   bash run.sh demo --recipes cpu   # the tiny recipes even on a GPU (default: t4, the 1B shape at seq 128, on a
#                                    # CUDA GPU with 14 GiB free and bitsandbytes; cpu elsewhere)
#   bash run.sh demo --with_grpo     # the tiny chain, its SFT with worked solutions, then GRPO with a thinking model
#   bash run.sh test                 # the test suite (what CI runs)
#   bash run.sh plan [pt|sft|dpo|grpo|all] [--num_gpus N] [--gpu h100|h800|a100|4090|t4|...] [recipe flags]
#                                    # what a run needs before it starts: data, steps, disk, GPU memory, time
#   bash run.sh gpu-check            # the first thing on a new GPU machine: precision, attention, tokens/s, MFU,
#                                    # peak memory per stage, measured (benchmarks/gpu_check.sh)
#   bash run.sh pt  [flags...]       # full-recipe pretraining   (configs/pt_full.yaml  + your flags)
#   bash run.sh sft [flags...]       # full-recipe SFT            (configs/sft_full.yaml + your flags)
#   bash run.sh dpo [flags...]       # full-recipe DPO            (configs/dpo_full.yaml + your flags)
#   bash run.sh grpo [flags...]      # full-recipe GRPO on math problems (configs/grpo_full.yaml + your flags)
#   bash run.sh eval [flags...]      # chat with / compare checkpoints (mini_qwen_eval.py flags)
#   bash run.sh curate [flags...]    # clean, dedup, decontaminate PT data (configs/curate_pt.yaml; CONFIG= sft/dpo)
#   bash run.sh bench [flags...]     # C-Eval, CMMLU, MMLU, ARC, HellaSwag (+ --tasks gsm8k) via lm-evaluation-harness
#   bash run.sh experiment NAME      # one of upstream's studies: packing, bilingual, scaling, sft_epochs, dpo_lr
#   bash run.sh serve [flags...]     # an OpenAI-compatible server for a checkpoint (--model_name_or_path results/dpo)
#   bash run.sh web [flags...]       # that server plus a chat page in the browser
#   bash run.sh export --gguf DIR    # GGUF files (f16, q8_0) and an Ollama Modelfile, for llama.cpp / Ollama
#   bash run.sh merge ADAPTER_DIR    # LoRA adapters (e.g. a checkpoint of a --use_peft run) merged into a full model
#   bash run.sh plot RUN... [--x tokens] [--reference upstream_pt]   # training curves (tools/plot.py)
#   bash run.sh setup                # only create .venv and install what is missing
#   bash run.sh -h                   # this help
#
# Variables (all optional):
#   NUM_GPUS=6          >1: pt/sft/dpo/grpo run under `accelerate launch` with DeepSpeed (ACCELERATE_CONFIG)
#   ACCELERATE_CONFIG=accelerate_config.yaml   (see configs/accelerate/ for ZeRO-3, offload, multi-node)
#   NUM_MACHINES=1 MACHINE_RANK=0 MAIN_PROCESS_IP=... MAIN_PROCESS_PORT=29500   multi-node settings
#   BACKGROUND=1        run pt/sft/dpo/grpo with nohup, logging to $LOG_DIR/<stage>.log (LOG_DIR=logs)
#   CONFIG=path.yaml    a different recipe for pt/sft/dpo/grpo/curate
#   VENV=.venv          the virtual environment to create/use; PYTHON=python3 the interpreter that makes it
#   TORCH_SPEC="torch==2.13.0"   how torch is installed if missing (e.g. a CUDA build on GPU machines)
#
# Examples:
#   NUM_GPUS=6 bash run.sh pt
#   NUM_GPUS=8 BACKGROUND=1 bash run.sh sft --model_name_or_path results/pt
#   bash run.sh eval --model_name_or_path results/sft
#   bash run.sh bench --model_name_or_path results/demo/pt results/demo/sft results/demo/dpo --data_dir mini_data/bench
#   bash run.sh web --model_name_or_path results/demo/dpo
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
NUM_GPUS=${NUM_GPUS:-1}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-accelerate_config.yaml}
LOG_DIR=${LOG_DIR:-logs}

install() {  # install <requirements file>: once per version of the file; the stamp only after pip succeeded
  local file=$1 stamp="$VENV/.mini_qwen_$(basename "$1" .txt)"
  if [ ! -f "$stamp" ] || ! cmp -s "$file" "$stamp"; then
    echo "[run.sh] installing $file"
    "$VENV/bin/python" -m pip install -q -r "$file"
    cp "$file" "$stamp"
  fi
}

setup() {  # silent and instant when everything is there; each step is checked on its own, so a stopped setup heals
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[run.sh] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local py="$VENV/bin/python"
  if [ ! -f "$VENV/.mini_qwen_torch" ]; then
    if ! "$py" -c "import torch" 2>/dev/null; then
      echo "[run.sh] installing $TORCH_SPEC"
      "$py" -m pip install -q "$TORCH_SPEC"
    fi
    touch "$VENV/.mini_qwen_torch"
  fi
  install requirements.txt
  # The Qwen BPE ranks (one file of dashscope's wheel, checked by sha256) and, from them, the exact Qwen2.5
  # tokenizer, offline, unless prepare.sh already downloaded its files.
  [ -f "$VENV/share/mini_qwen/qwen.tiktoken" ] || "$py" -m tools.make_tokenizer --fetch_ranks
  [ -f models/Qwen2.5-0.5B-Instruct/tokenizer.json ] || "$py" -m tools.make_tokenizer --output_dir models/Qwen2.5-0.5B-Instruct
  # On a machine with an NVIDIA GPU: the levers that install as wheels (8-bit Adam, which the small-GPU recipes
  # need, and Liger's kernels). flash-attn compiles for long and is left to the user (requirements/flash_attn.txt).
  if nvidia-smi -L >/dev/null 2>&1; then install requirements/gpu.txt; fi
}

setup_tests() {  # everything the tests exercise: serving, export (with the transformers 4.x check), benchmarks, trackers
  setup && install requirements/serve.txt && install requirements/export.txt && install requirements/bench.txt
  install requirements/tracking.txt && install requirements/curate.txt
  "$VENV/bin/python" -m tools.compat --install_transformers4
  "$VENV/bin/python" -m tools.export --install_converter
}

launch() {  # launch <script> <recipe> [flags...]
  local script=$1 recipe=$2
  shift 2
  local cmd=("$VENV/bin/python" "$script")
  if [ "$NUM_GPUS" -gt 1 ] || [ "${NUM_MACHINES:-1}" -gt 1 ]; then
    cmd=("$VENV/bin/accelerate" launch --config_file "$ACCELERATE_CONFIG"
      --num_processes "$((NUM_GPUS * ${NUM_MACHINES:-1}))" --num_machines "${NUM_MACHINES:-1}"
      --machine_rank "${MACHINE_RANK:-0}")
    [ -n "${MAIN_PROCESS_IP:-}" ] && cmd+=(--main_process_ip "$MAIN_PROCESS_IP")
    cmd+=(--main_process_port "${MAIN_PROCESS_PORT:-29500}" "$script")
  fi
  cmd+=(--config "${CONFIG:-$recipe}" "$@")
  if [ "${BACKGROUND:-0}" = 1 ]; then
    mkdir -p "$LOG_DIR"
    local log="$LOG_DIR/$(basename "$script" .py | sed 's/mini_qwen_//').log"
    nohup "${cmd[@]}" >"$log" 2>&1 &
    echo "[run.sh] started in the background (pid $!). Follow it with: tail -f $log"
  else
    "${cmd[@]}"
  fi
}

# Evaluation, serving and export read local files only: no hub is asked for anything.
offline() { HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_UPDATE_CHECK=1 "$@"; }

mode=${1:-}
[ $# -gt 0 ] && shift
case "$mode" in
  -h | --help | help | "") usage ;;
  setup) setup ;;
  demo) setup && "$VENV/bin/python" -m demo.run_all "$@" ;;
  test) setup_tests && "$VENV/bin/python" -m pytest -q --durations=10 tests "$@" ;;
  pt) setup && launch mini_qwen_pt.py configs/pt_full.yaml "$@" ;;
  sft) setup && launch mini_qwen_sft.py configs/sft_full.yaml "$@" ;;
  dpo) setup && launch mini_qwen_dpo.py configs/dpo_full.yaml "$@" ;;
  grpo) setup && launch mini_qwen_grpo.py configs/grpo_full.yaml "$@" ;;
  eval) setup && "$VENV/bin/python" mini_qwen_eval.py "$@" ;;
  curate) setup && install requirements/curate.txt &&
    "$VENV/bin/python" -m tools.curate --config "${CONFIG:-configs/curate_pt.yaml}" "$@" ;;
  bench) setup && install requirements/bench.txt && offline "$VENV/bin/python" -m tools.bench "$@" ;;
  experiment) setup && "$VENV/bin/python" -m experiments "$@" ;;
  serve) setup && install requirements/serve.txt && offline "$VENV/bin/python" -m tools.serve "$@" ;;
  web) setup && install requirements/serve.txt && offline "$VENV/bin/python" -m tools.chat_launcher "$@" ;;
  export) setup && install requirements/export.txt && "$VENV/bin/python" -m tools.export "$@" ;;
  merge) setup && "$VENV/bin/python" -m tools.merge "$@" ;;
  plot) setup && "$VENV/bin/python" -m tools.plot "$@" ;;
  plan) setup && "$VENV/bin/python" -m tools.plan "$@" ;;
  gpu-check) setup && PYTHON="$VENV/bin/python" bash benchmarks/gpu_check.sh "$@" ;;
  *)
    echo "unknown mode: $mode" >&2
    usage >&2
    exit 2
    ;;
esac
