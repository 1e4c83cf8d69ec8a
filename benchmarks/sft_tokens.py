"""SFT compute layout: how much of what the GPU computes is real, supervised text. No model is run.

    python -m benchmarks.sft_tokens --data_dir mini_data/sft
    python -m benchmarks.sft_tokens --data_dir data/sft/7M        # after prepare.sh --stage sft

Upstream's layout: one human/gpt pair per conversation (its code kept the last one), rows of at most
``max_length`` tokens, batches of ``batch_size`` padded to the longest row. Ours: every turn of every
conversation, packed whole into rows of at most ``max_length`` (best-fit decreasing); under flash-attention-2 the
micro-batch is one row with no padding at all, under the other kernels the rows are padded to the longest
(``utils/data/collate.py`` says why).
"""

from __future__ import annotations

import argparse
import logging
import tempfile

from trl import pack_dataset

from utils.data.chat import SkipRow, conversation_to_messages, encode_chat
from utils.data.collate import IGNORE_INDEX, PackedCollator
from utils.data.parquet import find_parquet_files, read_rows
from utils.data.sft import load_sft_dataset
from utils.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer


def measure(rows: list[dict], collator: PackedCollator, batch_size: int) -> dict:
    supervised = sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in rows)
    for i in range(0, len(rows), batch_size):
        collator(rows[i : i + batch_size])
    computed = collator.computed_tokens
    return {"real": collator.real_tokens / computed, "supervised": supervised / computed, "computed": computed}


def upstream_rows(data_dir: str, tokenizer, max_length: int) -> list[dict]:
    """One row per conversation: its last human/gpt pair only, cut to max_length."""
    rows = []
    for _, _, record in read_rows(find_parquet_files(data_dir), ["conversations"]):
        try:
            if record is None:
                continue
            messages = conversation_to_messages(record["conversations"])
        except SkipRow:
            continue
        pair = [m for m in messages if m["role"] != "system"][-2:]
        encoded = encode_chat(tokenizer, pair, None)
        rows.append({"input_ids": encoded.input_ids[:max_length], "labels": encoded.labels[:max_length]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="mini_data/sft", help="Infinity-Instruct style parquet files.")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER_DIR, help="Tokenizer folder (Qwen2.5 by default).")
    parser.add_argument("--max_length", type=int, default=1024, help="Row length (upstream: 1024).")
    parser.add_argument("--batch_size", type=int, default=12, help="Rows per device batch (upstream: 12).")
    parser.add_argument("--grad_accum", type=int, default=16, help="Batches per optimizer step (upstream: 16).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tokenizer = load_tokenizer(args.tokenizer)

    upstream = upstream_rows(args.data_dir, tokenizer, args.max_length)
    with tempfile.TemporaryDirectory() as tmp:
        dataset, _, summary = load_sft_dataset(args.data_dir, args.tokenizer, args.max_length, cache_dir=tmp)
        packed = pack_dataset(dataset.shuffle(seed=0), args.max_length, "bfd").to_list()
    results = {
        "upstream: last pair, padded": measure(upstream, PackedCollator(0, isolate=False), args.batch_size),
        "ours, flash-attention-2": measure(packed, PackedCollator(0, single_row=True), args.batch_size),
        "ours, sdpa/eager/flex": measure(packed, PackedCollator(0), args.batch_size),
    }
    per_step = args.batch_size * args.grad_accum
    print(f"\n{args.data_dir}: {len(upstream)} conversations; rows of {args.max_length}, batch {args.batch_size}")
    print(f"{'layout':<32}{'real share':>11}{'supervised':>11}{'computed tokens':>17}{'real tok/step':>15}")
    for name, r in results.items():
        n_rows = len(upstream) if name.startswith("upstream") else len(packed)
        real_per_step = r["real"] * r["computed"] / max(1, n_rows) * per_step
        print(f"{name:<32}{r['real']:>11.1%}{r['supervised']:>11.1%}{r['computed']:>17,}{real_per_step:>15,.0f}")
    print(f"ours skipped (counted, logged): {summary['skipped']}; upstream cut such rows mid-reply instead")


if __name__ == "__main__":
    main()
