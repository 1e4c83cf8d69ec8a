"""GRPO data for ``prepare.sh --stage grpo`` (``python -m tools.download --stage grpo``): math word problems with
a checkable final number, in English and Chinese, from the Hugging Face Hub, pinned to a revision::

    grpo/gsm8k/main/train-00000-of-00001.parquet        openai/gsm8k (config main; the test split is not fetched)
    grpo/gsm8k_zh/train-00000-of-00001.parquet          meta-math/GSM8K_zh (MIT; its train rows, converted)

Both land in GSM8K's layout (``question``, ``answer`` ending in ``#### <number>``), the one ``utils.data.problems``
reads. GSM8K_zh ships one JSON file holding its 7,473 translated training problems and the 1,319 test questions,
told apart by a ``split`` field; only the training rows are written here, with the Chinese question and worked
solution (``question_zh``, ``answer_zh``) and the reference number (``answer_only``). The test questions of both
datasets stay out of ``data/grpo``: they are the benchmarks (``bash run.sh bench --tasks gsm8k gsm8k_zh``).

Converting a copy fetched some other way::

    python -m tools.grpo_data data/grpo/gsm8k_zh
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tools.bench_data import GSM8K_ZH_FILE, BenchSource, convert_gsm8k_zh

logger = logging.getLogger(__name__)

# folder under <data_dir>/grpo -> where it comes from. The evidence for each revision and the files it holds is
# hub_listings/<folder>.json (openai/gsm8k's is the benchmark's own listing: the same commit, its train file only).
GRPO_SOURCES: dict[str, BenchSource] = {
    "gsm8k": BenchSource("openai/gsm8k", "740312add88f781978c0658806c59bc2815b9866", ("main/train-*.parquet",)),
    "gsm8k_zh": BenchSource("meta-math/GSM8K_zh", "4a5009abc37cbb2d3fd1a745f80e5ea1405ba9aa", (GSM8K_ZH_FILE,)),
}


def normalize_grpo_folder(folder: str | Path) -> list[Path]:
    """GSM8K_zh's JSON in ``folder`` -> ``train-00000-of-00001.parquet`` (training rows only; the JSON goes, so
    that the folder holds exactly what the GRPO stage reads). GSM8K is parquet already. Returns the files written."""
    return convert_gsm8k_zh(folder, ("train",))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for argument in sys.argv[1:] or ["data/grpo"]:
        normalize_grpo_folder(argument)
