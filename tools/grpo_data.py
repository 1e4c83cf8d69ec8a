"""GRPO data for ``prepare.sh --stage grpo`` (``python -m tools.download --stage grpo``): math word problems with
a checkable final number, in English and Chinese, from the Hugging Face Hub, pinned to a revision::

    grpo/gsm8k/main/train-00000-of-00001.parquet        openai/gsm8k (config main; the test split is not fetched)
    grpo/gsm8k_zh/train-00000-of-00001.parquet          meta-math/GSM8K_zh (MIT; its train rows, converted)

Both land in GSM8K's layout (``question``, ``answer`` ending in ``#### <number>``), the one ``utils.data.problems``
reads. GSM8K_zh ships one JSON file holding its 7,473 translated training problems and the 1,319 test questions,
told apart by a ``split`` field; only the training rows are written, with the Chinese question and worked solution
(``question_zh``, ``answer_zh``) and the reference number (``answer_only``). The test questions of both datasets
stay out of ``data/grpo``: they are GSM8K's benchmark (``bash run.sh bench --tasks gsm8k``).

Converting a copy fetched some other way::

    python -m tools.grpo_data data/grpo/gsm8k_zh
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tools.bench_data import BenchSource

logger = logging.getLogger(__name__)

SHARD = "train-00000-of-00001.parquet"
GSM8K_ZH_FILE = "GSM8K_zh.json"
# folder under <data_dir>/grpo -> where it comes from. The evidence for each revision and the files it holds is
# hub_listings/<folder>.json (openai/gsm8k's is the benchmark's own listing: the same commit, its train file only).
GRPO_SOURCES: dict[str, BenchSource] = {
    "gsm8k": BenchSource("openai/gsm8k", "740312add88f781978c0658806c59bc2815b9866", ("main/train-*.parquet",)),
    "gsm8k_zh": BenchSource("meta-math/GSM8K_zh", "4a5009abc37cbb2d3fd1a745f80e5ea1405ba9aa", (GSM8K_ZH_FILE,)),
}
TRAIN = "train"


def read_json_records(path: Path) -> list[dict]:
    """A JSON array of objects, or JSON lines (one object per line): the two ways hubs store records."""
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a list of JSON objects")
    return records


def gsm8k_zh_rows(records: list[dict]) -> tuple[list[dict], int]:
    """GSM8K_zh records -> GSM8K-layout rows of the training split (Chinese text, reference number appended when
    the worked solution lacks its ``####`` line), and how many records were left out (test split or no text)."""
    rows, left_out = [], 0
    for record in records:
        question, solution = record.get("question_zh"), record.get("answer_zh")
        reference = str(record.get("answer_only", "")).strip()
        if record.get("split", TRAIN) != TRAIN or not question or not solution or not reference:
            left_out += 1
            continue
        answer = solution.strip() if "####" in solution else f"{solution.strip()}\n#### {reference}"
        rows.append({"question": question.strip(), "answer": answer})
    return rows, left_out


def normalize_grpo_folder(folder: str | Path) -> list[Path]:
    """Write ``GSM8K_zh.json`` found in ``folder`` as ``train-00000-of-00001.parquet`` next to it (training rows
    only) and remove the JSON, so that the folder holds exactly what the GRPO stage reads. Other folders (GSM8K
    is parquet already) are left as they are; returns the files written."""
    folder = Path(folder)
    written = []
    for source in sorted(folder.rglob(GSM8K_ZH_FILE)):
        rows, left_out = gsm8k_zh_rows(read_json_records(source))
        if not rows:
            raise ValueError(f"{source}: no training row with question_zh, answer_zh and answer_only")
        target = source.parent / SHARD
        pq.write_table(
            pa.Table.from_pylist(rows, schema=pa.schema([("question", pa.string()), ("answer", pa.string())])), target
        )
        source.unlink()
        logger.info("%s: %d training problems written, %d test or empty records left out", target, len(rows), left_out)
        written.append(target)
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for argument in sys.argv[1:] or ["data/grpo"]:
        normalize_grpo_folder(argument)
