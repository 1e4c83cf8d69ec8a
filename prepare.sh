#!/usr/bin/env bash
# Download what the full recipe needs from ModelScope (re-runnable: finished folders are skipped).
#
#   bash prepare.sh                         # everything: model files, PT, SFT, DPO data
#   bash prepare.sh --stage pt --domains "news_media tourism_geography"
#   bash prepare.sh --stage model           # only the Qwen2.5-0.5B-Instruct config + tokenizer
#   bash prepare.sh --stage bench           # benchmark task data for `bash run.sh bench`
#   bash prepare.sh --mini                  # also cut 100-row samples of every file (like upstream's save_mini_data)
#
# Options:
#   --stage model|pt|sft|dpo|bench|all   what to fetch (default all = model pt sft dpo; repeatable); bench comes
#                                  from the Hugging Face Hub at pinned commits (tools/bench_data.py;
#                                  HF_ENDPOINT=https://hf-mirror.com for a mirror)
#   --domains "a b ..."            IndustryCorpus2 domains for PT (default: the ten of configs/data/industrycorpus2.yaml)
#   --data_dir DIR                 where data goes (default data/)
#   --mini                         after downloading, write 100-row samples of every file to --mini_dir
#   --mini_dir DIR                 where --mini writes (default mini_data_local/)
#   -h                             this help
# The PT subset (which folders, which capped to their first files) is data: configs/data/industrycorpus2.yaml.
# Each downloaded folder gets a MANIFEST.json (files and bytes); a folder that stays empty is an error. A failed
# folder does not stop the others: the run ends with what arrived and what did not, and exits 1 if anything is missing.
# Variables: MODELSCOPE (the CLI, default `modelscope`), HF (the Hugging Face CLI, default .venv/bin/hf or hf),
#   PYTHON (default .venv/bin/python or python3), PREPARE_CHECK_ONLINE=0 to skip the network checks.
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

MODELSCOPE=${MODELSCOPE:-modelscope}
HF=${HF:-$([ -x .venv/bin/hf ] && echo .venv/bin/hf || echo hf)}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DATA_DIR=data
STAGES=()
DOMAINS=()
MINI_DIR=""

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) STAGES+=("$2"); shift 2 ;;
    --domains) read -r -a DOMAINS <<<"$2"; shift 2 ;;
    --data_dir) DATA_DIR="$2"; shift 2 ;;
    --mini) MINI_DIR=${MINI_DIR:-mini_data_local}; shift ;;
    --mini_dir) MINI_DIR="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(all)
DOWNLOADS=()
for stage in "${STAGES[@]}"; do
  case "$stage" in
    all) DOWNLOADS+=(model pt sft dpo) ;;
    model | pt | sft | dpo | bench) DOWNLOADS+=("$stage") ;;
    *) echo "unknown stage: $stage" >&2; usage >&2; exit 2 ;;
  esac
done

reachable() {  # reachable <host>: fail fast, with the reason, when a download host cannot be reached
  [ "${PREPARE_CHECK_ONLINE:-1}" = 1 ] || return 0
  "$PYTHON" -c "import socket, sys; socket.create_connection((sys.argv[1], 443), timeout=10)" "$1" 2>/dev/null && return 0
  echo "prepare.sh: cannot reach $1. Downloads need the internet; the demo and tests do not" >&2
  echo "            (bash run.sh demo / bash run.sh test use the bundled mini_data)." >&2
  exit 1
}
needs_modelscope=0 needs_hf=0
for stage in "${DOWNLOADS[@]}"; do
  if [ "$stage" = bench ]; then needs_hf=1; else needs_modelscope=1; fi
done
if [ "$needs_modelscope" = 1 ]; then
  reachable www.modelscope.cn
  command -v "$MODELSCOPE" >/dev/null || { echo "prepare.sh: '$MODELSCOPE' not found: pip install modelscope" >&2; exit 1; }
fi
if [ "$needs_hf" = 1 ]; then
  reachable "$("$PYTHON" -c "import os, urllib.parse as u; print(u.urlparse(os.environ.get('HF_ENDPOINT', 'https://huggingface.co')).hostname)")"
  command -v "$HF" >/dev/null || { echo "prepare.sh: '$HF' not found: pip install huggingface_hub" >&2; exit 1; }
fi

args=(--data_dir "$DATA_DIR" --modelscope "$MODELSCOPE" --hf "$HF")
[ ${#DOMAINS[@]} -gt 0 ] && args+=(--domains "${DOMAINS[@]}")
[ -n "$MINI_DIR" ] && args+=(--mini_dir "$MINI_DIR")
"$PYTHON" -m tools.download --stage "${DOWNLOADS[@]}" "${args[@]}"
echo "[prepare] done"
