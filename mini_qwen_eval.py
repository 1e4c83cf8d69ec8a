"""Talk to a checkpoint, compare checkpoints side by side, and measure them.

Interactive chat (streams tokens; multi-turn for SFT/DPO models, raw continuation for PT ones)::

    python mini_qwen_eval.py --model_name_or_path results/sft

    commands: /reset  /system <text>  /set <key>=<value>  /show  /quit   (\\n typed -> newline; Ctrl-C stops an answer)

Batch mode: every prompt through every checkpoint, plus perplexity / bits-per-byte on held-out text::

    python mini_qwen_eval.py --model_name_or_path results/pt results/sft results/dpo \\
        --prompts mini_data/eval_prompts.jsonl --eval_data mini_data/pt --output_dir results/eval

writes ``generations.jsonl``, ``metrics.json`` and ``report.md`` (outputs side by side, repetition metrics,
perplexity); ``--decoding greedy sample`` adds one column per checkpoint and decoding.
Sampling defaults come from each checkpoint's generation_config.json; ``--do_sample False`` is greedy.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils.args import parse_args
from utils.data import find_parquet_files, read_rows
from utils.evaluation import distinct_n, perplexity_and_bpb, repeated_ngram_share, text_nll
from utils.generation import (
    SAMPLING_KEYS,
    CollectingStreamer,
    build_generation_config,
    generate,
    is_chat_checkpoint,
    unescape,
)
from utils.modeling import load_causal_lm, select_attn_implementation
from utils.tokenizer import load_tokenizer

logger = logging.getLogger("mini_qwen")


@dataclass
class EvalArguments:
    model_name_or_path: list[str] = field(
        default_factory=lambda: ["results/sft"], metadata={"help": "One checkpoint (chat) or several (batch)."}
    )
    mode: str = field(
        default="auto",
        metadata={
            "help": "auto (PT checkpoints: raw continuation; others: chat), chat or raw.",
            "choices": ["auto", "chat", "raw"],
        },
    )
    prompts: str | None = field(default=None, metadata={"help": "Batch mode: a .txt (one per line) or .jsonl file."})
    eval_data: str | None = field(
        default=None, metadata={"help": "Held-out text (parquet dir/file with a text column, .jsonl or .txt)."}
    )
    eval_max_tokens: int = field(default=20000, metadata={"help": "Tokens of eval_data scored per checkpoint."})
    block_size: int = field(default=512, metadata={"help": "Context length for perplexity."})
    output_dir: str = field(default="results/eval", metadata={"help": "Where batch results are written."})
    system_prompt: str | None = field(default=None, metadata={"help": "System prompt for chat mode."})
    do_sample: bool | None = field(default=None, metadata={"help": "False = greedy (default: checkpoint's)."})
    temperature: float | None = field(default=None, metadata={"help": "Default: the checkpoint's (0.7)."})
    top_p: float | None = field(default=None, metadata={"help": "Default: the checkpoint's (0.8)."})
    top_k: int | None = field(default=None, metadata={"help": "Default: the checkpoint's (20)."})
    repetition_penalty: float | None = field(default=None, metadata={"help": "Default: the checkpoint's (1.1)."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Default: the checkpoint's (512)."})
    decoding: list[str] = field(
        default_factory=lambda: ["default"],
        metadata={
            "help": "Batch mode: one or more of default (the checkpoint's generation_config + flags), greedy, "
            "sample; each checkpoint x decoding becomes a column of the report.",
            "choices": ["default", "greedy", "sample"],
        },
    )
    seed: int = field(default=42, metadata={"help": "Sampling seed (batch mode is reproducible)."})
    attn_implementation: str = field(default="auto", metadata={"help": "auto, sdpa, eager, flash_attention_2."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda."})

    def sampling(self) -> dict:
        return {key: getattr(self, key) for key in SAMPLING_KEYS}


def load(path: str, args: EvalArguments):
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = load_causal_lm(path, select_attn_implementation(args.attn_implementation), dtype).to(device).eval()
    chat = {"chat": True, "raw": False}.get(args.mode, is_chat_checkpoint(path))
    return model, load_tokenizer(path), chat


def read_prompts(path: str) -> list[str]:
    """``.jsonl`` rows with a ``prompt`` field, or a text file with one prompt per line (``\\n`` escapes)."""
    file = Path(path)
    if file.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    prompts.append(json.loads(line)["prompt"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f"{file}, line {n}: expected a JSON object with a 'prompt' ({err})") from err
        return prompts
    return [unescape(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_eval_texts(path: str) -> list[str]:
    file = Path(path)
    if file.suffix == ".txt":
        return [file.read_text(encoding="utf-8")]
    if file.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for _, _, r in read_rows(find_parquet_files(path), ["text"]) if r["text"]]


def perplexity(model, tokenizer, texts: list[str], max_tokens: int, block_size: int) -> dict:
    """Perplexity and bits per byte over documents (each ends with EOS) up to ``max_tokens`` tokens."""
    ids, n_bytes = [], 0
    for text in texts:
        if len(ids) >= max_tokens:
            break
        doc = tokenizer(text, add_special_tokens=False)["input_ids"][: max_tokens - len(ids)]
        n_bytes += len(tokenizer.decode(doc).encode("utf-8"))
        ids += doc
    nll, count = text_nll(model, ids, block_size)
    ppl, bpb = perplexity_and_bpb(nll, count, n_bytes)
    return {"perplexity": ppl, "bits_per_byte": bpb, "scored_tokens": count}


def batch(args: EvalArguments) -> list[dict]:
    """Every prompt through every checkpoint and decoding -> generations.jsonl, report.md, metrics.json."""
    prompts = read_prompts(args.prompts)
    texts = read_eval_texts(args.eval_data) if args.eval_data else None
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, metrics, columns = [], {}, []
    for path in args.model_name_or_path:
        model, tokenizer, chat = load(path, args)
        scores = perplexity(model, tokenizer, texts, args.eval_max_tokens, args.block_size) if texts else {}
        for decoding in args.decoding:
            label = Path(path).name or path
            label = f"{label} ({decoding})" if len(args.decoding) > 1 else label
            label = label if label not in columns else f"{label} #{len(columns) + 1}"
            columns.append(label)
            overrides = args.sampling()
            if decoding != "default":
                overrides["do_sample"] = decoding == "sample"
            config = build_generation_config(model, **overrides)
            torch.manual_seed(args.seed)
            mine = [_answer(model, tokenizer, chat, prompt, config, args.system_prompt) for prompt in prompts]
            for row in mine:
                row.update(model=path, decoding=decoding, column=label)
            rows += mine
            metrics[label] = {
                "decoding": "sample" if config.do_sample else "greedy",
                "ended_with_eos": sum(r["ended_with_eos"] for r in mine) / len(mine),
                "repeated_4gram_share": sum(r["repeated_4gram_share"] for r in mine) / len(mine),
                "distinct_2": sum(r["distinct_2"] for r in mine) / len(mine),
                **scores,
            }
    with open(out / "generations.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(render_report(prompts, rows, metrics, columns), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return rows


def _answer(model, tokenizer, chat: bool, prompt: str, config, system_prompt: str | None) -> dict:
    query = [{"role": "user", "content": prompt}] if chat else prompt
    if chat and system_prompt:
        query.insert(0, {"role": "system", "content": system_prompt})
    result = generate(model, tokenizer, query, config)
    return {
        "mode": "chat" if chat else "raw",
        "prompt": prompt,
        "output": result.text,
        "new_tokens": len(result.token_ids),
        "ended_with_eos": result.ended_with_eos,
        "repeated_4gram_share": round(repeated_ngram_share(result.token_ids, 4), 4),
        "distinct_2": round(distinct_n(result.token_ids, 2), 4),
    }


def _cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_report(prompts: list[str], rows: list[dict], metrics: dict, columns: list[str]) -> str:
    lines = ["# Side-by-side generations", "", "| prompt | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for prompt in prompts:
        cells = [_cell(next(r["output"] for r in rows if r["column"] == c and r["prompt"] == prompt)) for c in columns]
        lines.append(f"| {_cell(prompt, 80)} | " + " | ".join(cells) + " |")
    keys = sorted({k for m in metrics.values() for k in m})
    lines += ["", "# Metrics", "", "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key in keys:
        values = [metrics[c].get(key, "") for c in columns]
        lines.append(f"| {key} | " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


HELP = "/reset  /system <text>  /set <key>=<value>  /show  /quit   (\\n -> newline, Ctrl-C stops an answer)"


def chat_loop(args: EvalArguments, stdin=None) -> None:
    """Interactive session on one checkpoint, reading lines from ``stdin``."""
    stdin = stdin or sys.stdin
    model, tokenizer, chat = load(args.model_name_or_path[0], args)
    sampling = args.sampling()
    system, history = args.system_prompt, []
    print(f"mini_qwen {'chat' if chat else 'raw continuation'} with {args.model_name_or_path[0]}. {HELP}", flush=True)
    while True:
        print(">>> ", end="", flush=True)
        line = stdin.readline()
        if not line:
            break
        text = unescape(line.rstrip("\n"))
        if not text.strip():
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                history = []
                print("[history cleared]", flush=True)
            elif command == "/system":
                system, history = rest or None, []
                print(f"[system prompt: {system!r}; history cleared]", flush=True)
            elif command == "/show":
                print(json.dumps(build_generation_config(model, **sampling).to_diff_dict(), ensure_ascii=False))
                print(f"[history: {len(history) // 2} turns]", flush=True)
            elif command == "/set":
                print(_set_sampling(sampling, rest), flush=True)
            else:
                print(HELP, flush=True)
            continue
        streamer = CollectingStreamer(tokenizer)
        config = build_generation_config(model, **sampling)
        messages = ([{"role": "system", "content": system}] if system else []) + history
        messages = messages + [{"role": "user", "content": text}]
        try:
            generate(model, tokenizer, messages if chat else text, config, streamer=streamer)
        except KeyboardInterrupt:
            print("\n[stopped]", flush=True)
        if chat:
            history += [{"role": "user", "content": text}, {"role": "assistant", "content": streamer.text}]


def _set_sampling(sampling: dict, assignment: str) -> str:
    key, _, value = assignment.partition("=")
    key = key.strip()
    if key not in sampling:
        return f"[unknown key {key!r}; one of {', '.join(SAMPLING_KEYS)}]"
    types = {"do_sample": lambda v: v.lower() in ("1", "true", "yes"), "top_k": int, "max_new_tokens": int}
    try:
        sampling[key] = types.get(key, float)(value.strip())
    except ValueError:
        return f"[bad value {value!r} for {key}]"
    return f"[{key} = {sampling[key]}]"


def main(args: EvalArguments) -> list[dict] | None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.prompts:
        return batch(args)
    chat_loop(args)
    return None


if __name__ == "__main__":
    main(*parse_args((EvalArguments,)))
