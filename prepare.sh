#!/usr/bin/env bash
# Download what the full recipe needs from ModelScope (re-runnable: finished parts are skipped).
#
#   bash prepare.sh                         # everything: model files, PT, SFT, DPO data
#   bash prepare.sh --stage pt --domains "news_media tourism_geography"
#   bash prepare.sh --stage model           # only the Qwen2.5-0.5B-Instruct config + tokenizer
#   bash prepare.sh --mini                  # also cut 100-row samples (like upstream's save_mini_data)
#
# Options:
#   --stage model|pt|sft|dpo|all   what to fetch (default all; repeatable)
#   --domains "a b ..."            IndustryCorpus2 domains for PT (default: the ten below)
#   --data_dir DIR                 where data goes (default data/)
#   --mini                         after downloading, write 100-row samples of every file to --mini_dir
#   --mini_dir DIR                 where --mini writes (default mini_data_local/)
#   -h                             this help
# Variables: MODELSCOPE (the CLI, default `modelscope`), PYTHON (default .venv/bin/python or python3),
#   PREPARE_CHECK_ONLINE=0 to skip the network check (tests stub the download command).
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

MODELSCOPE=${MODELSCOPE:-modelscope}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DATA_DIR=data
STAGES=()
MINI=0
MINI_DIR=mini_data_local
# The ten IndustryCorpus2 domains of the full recipe (Chinese and English, quality "high").
DOMAINS="accommodation_catering_hotel artificial_intelligence_machine_learning computer_communication
computer_programming_code film_entertainment literature_emotion news_media tourism_geography
current_affairs_government_administration mathematics_statistics"
# The five largest English sets: only their first three files, as upstream did, to balance the languages.
LARGE_ENGLISH="computer_communication film_entertainment literature_emotion news_media
current_affairs_government_administration"
FIRST_FILES="rank_00000.parquet rank_00001.parquet rank_00002.parquet"

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) STAGES+=("$2"); shift 2 ;;
    --domains) DOMAINS="$2"; shift 2 ;;
    --data_dir) DATA_DIR="$2"; shift 2 ;;
    --mini) MINI=1; shift ;;
    --mini_dir) MINI_DIR="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(all)
wants() { [[ " ${STAGES[*]} " == *" $1 "* || " ${STAGES[*]} " == *" all "* ]]; }

if [ "${PREPARE_CHECK_ONLINE:-1}" = 1 ] &&
  ! "$PYTHON" -c "import socket; socket.create_connection(('www.modelscope.cn', 443), timeout=10)" 2>/dev/null; then
  echo "prepare.sh: cannot reach www.modelscope.cn. Downloads need the internet; the demo and tests do not" >&2
  echo "            (bash run.sh demo / bash run.sh test use the bundled mini_data)." >&2
  exit 1
fi
command -v "$MODELSCOPE" >/dev/null || { echo "prepare.sh: '$MODELSCOPE' not found: pip install modelscope" >&2; exit 1; }

fetch() {  # fetch <marker dir> <modelscope args...>: skip when the marker says it finished before
  local dest=$1
  shift
  if [ -f "$dest/.complete" ]; then
    echo "[prepare] $dest already complete, skipping"
    return
  fi
  mkdir -p "$dest"
  echo "[prepare] $MODELSCOPE download $*"
  "$MODELSCOPE" download "$@"
  touch "$dest/.complete"
}

if wants model; then
  fetch models/Qwen2.5-0.5B-Instruct --model Qwen/Qwen2.5-0.5B-Instruct \
    --include 'config.json' 'generation_config.json' 'tokenizer*' 'vocab.json' 'merges.txt' \
    --local_dir models/Qwen2.5-0.5B-Instruct
fi
if wants pt; then
  for domain in $DOMAINS; do
    for lang in chinese english; do
      include=("$domain/$lang/high/*")
      if [ "$lang" = english ] && [[ " $(echo $LARGE_ENGLISH) " == *" $domain "* ]]; then
        include=()
        for f in $FIRST_FILES; do include+=("$domain/$lang/high/$f"); done
      fi
      fetch "$DATA_DIR/pt/$domain/$lang" --dataset BAAI/IndustryCorpus2 --include "${include[@]}" \
        --local_dir "$DATA_DIR/pt"
    done
  done
fi
if wants sft; then
  for subset in 7M Gen; do
    fetch "$DATA_DIR/sft/$subset" --dataset BAAI/Infinity-Instruct --include "$subset/*" --local_dir "$DATA_DIR/sft"
  done
fi
if wants dpo; then
  fetch "$DATA_DIR/dpo" --dataset BAAI/Infinity-Preference --include '*.parquet' 'data/*' --local_dir "$DATA_DIR/dpo"
fi

if [ "$MINI" = 1 ]; then
  "$PYTHON" - "$DATA_DIR" "$MINI_DIR" <<'PY'
import sys
from pathlib import Path

import pyarrow.parquet as pq

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for path in sorted(src.rglob("*.parquet")):
    out = dst / path.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pq.ParquetFile(path).read_row_group(0)
    pq.write_table(table.slice(0, 100), out)
    print(f"[prepare] {out}: {min(100, table.num_rows)} rows")
PY
fi
echo "[prepare] done"
