"""Talk to a checkpoint, compare checkpoints side by side, and measure them.

Interactive chat (streams tokens; multi-turn for SFT/DPO models, raw continuation for PT ones)::

    python mini_qwen_eval.py --model_name_or_path results/sft

    commands: /reset  /system <text>  /set <key>=<value>  /show  /quit   (\\n typed -> newline; Ctrl-C stops an answer)

Batch mode: every prompt through every checkpoint, plus perplexity / bits-per-byte on held-out text::

    python mini_qwen_eval.py --model_name_or_path results/pt results/sft results/dpo \\
        --prompts mini_data/eval_prompts.jsonl --eval_data mini_data/pt --output_dir results/eval

writes ``generations.jsonl``, ``metrics.json`` and ``report.md`` (outputs side by side, repetition metrics,
perplexity); ``--decoding greedy sample`` adds one column per checkpoint and decoding; ``--bench bench.json`` adds the
benchmark table of ``bash run.sh bench``. ``--enable_thinking true`` turns on the chat template's thinking switch
(replies reason in a think block first, as a GRPO model learned to); the answer and its reasoning are kept apart.
Sampling defaults come from each checkpoint's generation_config.json (``utils.generation.SAMPLING_DEFAULTS``
for checkpoints trained here); ``--do_sample false`` is greedy. Answers stop at ``--max_new_tokens``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils.data.chat import SkipRow, conversation_to_messages, encode_chat, prompt_ids, reply_message
from utils.data.parquet import DataError, find_parquet_files, heldout_fraction, read_rows
from utils.data.sft import conversation_text
from utils.devices import inference_dtype, resolve_device
from utils.evaluation import (
    bench_table_markdown,
    distinct_n,
    labelled_nll,
    perplexity_and_bpb,
    repeated_ngram_share,
    text_nll,
)
from utils.generation import (
    SAMPLING_KEYS,
    CollectingStreamer,
    build_generation_config,
    generate,
    is_chat_checkpoint,
    unescape,
)
from utils.modeling import load_causal_lm
from utils.run_info import trained_length
from utils.tokenizer import load_tokenizer
from utils.train.args import parse_args
from utils.train.hardware import (
    ATTENTION_CHOICES,
    detect_hardware,
    select_attn_implementation,
)

logger = logging.getLogger(__name__)


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
    eval_chat_data: str | None = field(
        default=None,
        metadata={
            "help": "Held-out conversations (Infinity-Instruct parquet): chat checkpoints are scored per assistant "
            "token through their own chat template."
        },
    )
    eval_holdout: float = field(
        default=0.0,
        metadata={
            "help": "Score only what this share holds out of eval_data and eval_chat_data: the holdout of the "
            "training recipes (chosen by the same hash of each document or conversation). 0: the files are held out "
            "already."
        },
    )
    eval_max_tokens: int = field(default=20000, metadata={"help": "Tokens scored per checkpoint and data set."})
    block_size: int = field(default=512, metadata={"help": "Context length for perplexity."})
    output_dir: str = field(default="results/eval", metadata={"help": "Where batch results are written."})
    system_prompt: str | None = field(default=None, metadata={"help": "System prompt for chat mode."})
    enable_thinking: bool = field(
        default=False,
        metadata={
            "help": "Chat mode: the chat template's thinking switch (replies open a think block, as after GRPO); the "
            "reasoning is kept apart from the answer (the 'reasoning' field of generations.jsonl)."
        },
    )
    do_sample: bool | None = field(default=None, metadata={"help": "False = greedy. Default: the checkpoint's."})
    temperature: float | None = field(default=None, metadata={"help": "Default: the checkpoint's."})
    top_p: float | None = field(default=None, metadata={"help": "Default: the checkpoint's."})
    top_k: int | None = field(default=None, metadata={"help": "Default: the checkpoint's."})
    repetition_penalty: float | None = field(default=None, metadata={"help": "Default: the checkpoint's."})
    max_new_tokens: int = field(default=512, metadata={"help": "Longest answer in tokens."})
    decoding: list[str] = field(
        default_factory=lambda: ["default"],
        metadata={
            "help": "Batch mode: one or more of default (the checkpoint's generation_config + flags), greedy, "
            "sample; each checkpoint x decoding becomes a column of the report.",
            "choices": ["default", "greedy", "sample"],
        },
    )
    seed: int = field(default=42, metadata={"help": "Sampling seed (batch mode is reproducible)."})
    bench: str | None = field(
        default=None, metadata={"help": "Batch mode: a bench.json (bash run.sh bench) whose table report.md includes."}
    )
    attn_implementation: str = field(
        default="auto", metadata={"help": "Attention kernel.", "choices": list(ATTENTION_CHOICES)}
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda."})

    def sampling(self) -> dict:
        return {key: getattr(self, key) for key in SAMPLING_KEYS}


def load(path: str, args: EvalArguments):
    device = resolve_device(args.device)
    attn, _ = select_attn_implementation(args.attn_implementation, detect_hardware(use_cpu=device == "cpu"))
    model = load_causal_lm(path, attn, inference_dtype(device)).to(device).eval()
    chat = {"chat": True, "raw": False}.get(args.mode, is_chat_checkpoint(path))
    return model, load_tokenizer(path), chat


def _lines(file: Path) -> list[tuple[int, str]]:
    """Numbered lines of a UTF-8 text file; invalid UTF-8 fails naming the file and line."""
    lines = []
    for n, raw in enumerate(file.read_bytes().splitlines(), start=1):
        try:
            lines.append((n, raw.decode("utf-8")))
        except UnicodeDecodeError as err:
            raise DataError(f"{file}, line {n}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    return lines


def _jsonl_strings(file: Path, key: str) -> list[str]:
    """The ``key`` string of every non-empty line of a JSONL file, each checked and named when wrong."""
    values = []
    for n, line in _lines(file):
        if not line.strip():
            continue
        try:
            value = json.loads(line)[key]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(
                f"{file}, line {n}: expected a JSON object with a string {key!r} ({type(err).__name__}: {err})"
            ) from err
        if not isinstance(value, str):
            raise DataError(f"{file}, line {n}: {key!r} is {type(value).__name__}, not a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataError(f"{file}, line {n}: {key!r} holds an unpaired surrogate ({err.reason})") from err
        values.append(value)
    return values


def read_prompts(path: str) -> list[str]:
    """``.jsonl`` rows with a ``prompt`` field, or a text file with one prompt per line (``\\n`` escapes)."""
    file = Path(path)
    if file.is_dir():
        raise DataError(f"--prompts {file} is a folder: give a .jsonl file (a 'prompt' per line) or a .txt file")
    if not file.is_file():
        raise DataError(f"prompts file not found: {file}")
    if file.suffix == ".jsonl":
        prompts = _jsonl_strings(file, "prompt")
    else:
        prompts = [unescape(line) for _, line in _lines(file) if line.strip()]
    if not prompts:
        raise DataError(f"{file}: no prompts in it")
    return prompts


def read_eval_texts(path: str, holdout: float = 0.0) -> list[str]:
    """Held-out documents: a .txt file (one document), a .jsonl file with ``text``, or parquet with ``text``; with a
    ``holdout`` share, only the documents training left out under it (``heldout_fraction``)."""
    file = Path(path)
    if file.suffix == ".txt":
        texts = ["\n".join(line for _, line in _lines(file))]
    elif file.suffix == ".jsonl":
        texts = _jsonl_strings(file, "text")
    else:
        texts = [
            r["text"]
            for _, _, r in read_rows(find_parquet_files(path), ["text"])
            if r is not None and isinstance(r["text"], str)
        ]
    texts = [t for t in texts if t.strip() and (not holdout or heldout_fraction(t) < holdout)]
    if not texts:
        raise DataError(f"{path}: no text to score" + (f" among the {holdout:.0%} held out" if holdout else ""))
    return texts


def read_heldout_conversations(path: str, holdout: float = 0.0) -> list[list[dict]]:
    """Conversations of Infinity-Instruct parquet files as chat messages, only the held-out ones with a share (the
    rule SFT's ``holdout`` leaves them out by); rows SFT would skip are skipped here too."""
    conversations = []
    for _, _, record in read_rows(find_parquet_files(path), ["conversations"]):
        if record is None or not isinstance(record.get("conversations"), list):
            continue
        if holdout and heldout_fraction(conversation_text(record["conversations"])) >= holdout:
            continue
        try:
            conversations.append(conversation_to_messages(record["conversations"]))
        except SkipRow:
            continue
    if not conversations:
        raise DataError(
            f"{path}: no conversation to score" + (f" among the {holdout:.0%} held out" if holdout else "")
        )
    return conversations


def perplexity(model, tokenizer, texts: list[str], max_tokens: int, block_size: int) -> dict:
    """Perplexity and bits per byte over documents, up to ``max_tokens`` tokens in all.

    Each document is tokenized as pretraining does (special-token text as text, then EOS) and scored on its own
    from its first token, in blocks of ``block_size``: no document lends context to another."""
    nll, count, n_bytes, used = 0.0, 0, 0, 0
    for text in texts:
        if used >= max_tokens:
            break
        doc = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        doc = [*doc, tokenizer.eos_token_id][: max_tokens - used]
        n_bytes += len(tokenizer.decode(doc, skip_special_tokens=True).encode("utf-8"))
        doc_nll, doc_count = text_nll(model, doc, block_size)
        nll, count, used = nll + doc_nll, count + doc_count, used + len(doc)
    ppl, bpb = perplexity_and_bpb(nll, count, n_bytes)
    # JSON has no NaN: a text too short to score gets null.
    return {"perplexity": ppl if count else None, "bits_per_byte": bpb if count else None, "scored_tokens": count}


def chat_perplexity(model, tokenizer, conversations: list[list[dict]], max_tokens: int, block_size: int) -> dict:
    """Perplexity per assistant token (the tokens SFT supervises: each reply and its end of turn) of conversations
    rendered by the checkpoint's own chat template, each cut at a turn boundary to ``block_size``."""
    nll, count, used = 0.0, 0, 0
    for messages in conversations:
        if used >= max_tokens:
            break
        try:
            encoded = encode_chat(tokenizer, messages, block_size)
        except SkipRow:
            continue
        chat_nll, chat_count = labelled_nll(model, encoded.input_ids, encoded.labels)
        nll, count, used = nll + chat_nll, count + chat_count, used + len(encoded.input_ids)
    return {"chat_perplexity": math.exp(nll / count) if count else None, "chat_scored_tokens": count}


def metric_definitions(args: EvalArguments, documents: int, conversations: int) -> dict[str, str]:
    """What each metric of metrics.json and report.md was measured on, and which way is better."""
    held = f"held out by the training recipes' {args.eval_holdout:.0%} share" if args.eval_holdout else "as given"
    raw = f"{documents} documents of {args.eval_data} ({held}), raw text"
    chat = f"{conversations} conversations of {args.eval_chat_data} ({held}), chat checkpoints only"
    answers = f"the answers to the {args.prompts} prompts (at most {args.max_new_tokens} new tokens)"
    return {
        "perplexity": f"per token on {raw}; lower is better",
        "bits_per_byte": f"on {raw}, comparable across tokenizers; lower is better",
        "scored_tokens": f"tokens scored for perplexity ({raw})",
        "chat_perplexity": f"per assistant token (replies and their end of turn) on {chat}, in the checkpoint's own "
        "chat template; lower is better",
        "chat_scored_tokens": f"assistant tokens scored ({chat})",
        "ended_with_eos": f"share of {answers} that ended at the end-of-turn token; higher is better for chat models",
        "mean_new_tokens": f"mean length in tokens of {answers}",
        "repeated_4gram_share": f"share of 4-grams in each of {answers} seen earlier in it; lower is better",
        "distinct_2": f"distinct 2-grams / all 2-grams in each of {answers}; higher is better",
        "decoding": "greedy, or sampling with the settings of the column",
    }


def batch(args: EvalArguments) -> list[dict]:
    """Every prompt through every checkpoint and decoding -> generations.jsonl, report.md, metrics.json."""
    prompts = read_prompts(args.prompts)
    texts = read_eval_texts(args.eval_data, args.eval_holdout) if args.eval_data else None
    conversations = read_heldout_conversations(args.eval_chat_data, args.eval_holdout) if args.eval_chat_data else None
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--output_dir {out} is a file: give a folder for generations.jsonl, report.md, metrics.json")
    out.mkdir(parents=True, exist_ok=True)
    rows, metrics, columns = [], {}, []
    for path in args.model_name_or_path:
        model, tokenizer, chat = load(path, args)
        scores = perplexity(model, tokenizer, texts, args.eval_max_tokens, args.block_size) if texts else {}
        if conversations and chat:
            scores.update(chat_perplexity(model, tokenizer, conversations, args.eval_max_tokens, args.block_size))
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
            trained = trained_length(path)
            mine = [
                _answer(model, tokenizer, chat, prompt, config, args.system_prompt, trained, args.enable_thinking)
                for prompt in prompts
            ]
            for row in mine:
                row.update(model=path, decoding=decoding, column=label)
            rows += mine
            metrics[label] = {
                "decoding": "sample" if config.do_sample else "greedy",
                "ended_with_eos": sum(r["ended_with_eos"] for r in mine) / len(mine),
                "mean_new_tokens": sum(r["new_tokens"] for r in mine) / len(mine),
                "repeated_4gram_share": sum(r["repeated_4gram_share"] for r in mine) / len(mine),
                "distinct_2": sum(r["distinct_2"] for r in mine) / len(mine),
                **scores,
            }
    with open(out / "generations.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    about = metric_definitions(args, len(texts or []), len(conversations or []))
    report = render_report(prompts, rows, metrics, columns, about)
    if args.bench:
        report += "\n# Benchmarks\n\n" + bench_table_markdown(args.bench)
    (out / "report.md").write_text(report, encoding="utf-8")
    # One entry per column, and "_about": what each metric was measured on and which way is better.
    (out / "metrics.json").write_text(json.dumps({**metrics, "_about": about}, indent=2, allow_nan=False))
    return rows


def warn_if_longer_than_trained(tokenizer, query, trained: tuple[int | None, str]) -> None:
    """A prompt longer than anything the checkpoint was trained on is answered, but from positions it never learned:
    say so rather than let a poor answer pass for the model's quality."""
    limit, source = trained
    if limit is None:
        return
    ids = prompt_ids(tokenizer, query) if isinstance(query, list) else tokenizer(query)["input_ids"]
    if len(ids) > limit:
        logger.warning(
            "The prompt has %d tokens, more than the %d this checkpoint was trained on (%s): the answer "
            "comes from positions it never learned",
            len(ids),
            limit,
            source,
        )


def _answer(
    model, tokenizer, chat: bool, prompt: str, config, system_prompt: str | None, trained=(None, ""), thinking=False
) -> dict:
    query = [{"role": "user", "content": prompt}] if chat else prompt
    if chat and system_prompt:
        query.insert(0, {"role": "system", "content": system_prompt})
    warn_if_longer_than_trained(tokenizer, query, trained)
    result = generate(model, tokenizer, query, config, thinking=thinking and chat)
    reply = reply_message(result.text, thinking and chat)
    return {
        "mode": "chat" if chat else "raw",
        "prompt": prompt,
        "output": reply["content"],
        **({"reasoning": reply["reasoning_content"]} if "reasoning_content" in reply else {}),
        "new_tokens": len(result.token_ids),
        "ended_with_eos": result.ended_with_eos,
        "repeated_4gram_share": round(repeated_ngram_share(result.token_ids, 4), 4),
        "distinct_2": round(distinct_n(result.token_ids, 2), 4),
    }


def _cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_report(prompts: list[str], rows: list[dict], metrics: dict, columns: list[str], about: dict) -> str:
    lines = ["# Side-by-side generations", "", "| prompt | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for prompt in prompts:
        cells = [_cell(next(r["output"] for r in rows if r["column"] == c and r["prompt"] == prompt)) for c in columns]
        lines.append(f"| {_cell(prompt, 80)} | " + " | ".join(cells) + " |")
    keys = [key for key in about if any(key in m for m in metrics.values())]
    lines += ["", "# Metrics", "", "| metric | " + " | ".join(columns) + " | measured on, and which way is better |"]
    lines.append("|---" * (len(columns) + 2) + "|")
    for key in keys:
        values = [metrics[c].get(key) for c in columns]
        shown = ["—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
        lines.append(f"| {key} | " + " | ".join(shown) + f" | {about[key]} |")
    return "\n".join(lines) + "\n"


HELP = "/reset  /system <text>  /set <key>=<value>  /show  /quit   (\\n -> newline, Ctrl-C stops an answer)"


def chat_loop(args: EvalArguments, stdin=None) -> None:
    """Interactive session on one checkpoint, reading lines from ``stdin``."""
    stdin = stdin or sys.stdin
    model, tokenizer, chat = load(args.model_name_or_path[0], args)
    trained = trained_length(args.model_name_or_path[0])
    sampling = args.sampling()
    system, history = args.system_prompt, []
    print(f"mini_qwen {'chat' if chat else 'raw continuation'} with {args.model_name_or_path[0]}. {HELP}", flush=True)
    while True:
        print(">>> ", end="", flush=True)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the session quietly
            print("\n[bye]", flush=True)
            break
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
        warn_if_longer_than_trained(tokenizer, messages if chat else text, trained)
        thinking = args.enable_thinking and chat
        try:
            generate(model, tokenizer, messages if chat else text, config, streamer=streamer, thinking=thinking)
        except KeyboardInterrupt:
            print("\n[stopped]", flush=True)
        if chat:
            history += [
                {"role": "user", "content": text},
                {"role": "assistant", **reply_message(streamer.text, thinking)},
            ]


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


# Each sampling setting: how to read it, and the values generation accepts.
SETTINGS = {
    "do_sample": (_bool, lambda v: True, "true or false"),
    "temperature": (float, lambda v: v > 0, "a number > 0"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (int, lambda v: v >= 0, "an integer >= 0"),
    "repetition_penalty": (float, lambda v: v > 0, "a number > 0"),
    "max_new_tokens": (int, lambda v: v >= 1, "an integer >= 1"),
}


def _set_sampling(sampling: dict, assignment: str) -> str:
    """Apply ``key=value`` to the session's sampling settings if the value is valid; say what happened."""
    key, _, value = assignment.partition("=")
    key = key.strip()
    if key not in SETTINGS:
        return f"[unknown key {key!r}; one of {', '.join(SETTINGS)}]"
    parse, valid, expected = SETTINGS[key]
    try:
        parsed = parse(value.strip())
    except ValueError:
        return f"[bad value {value.strip()!r} for {key}: expected {expected}]"
    if parsed != parsed or not valid(parsed):  # parsed != parsed: NaN
        return f"[bad value {value.strip()!r} for {key}: expected {expected}]"
    sampling[key] = parsed
    return f"[{key} = {parsed}]"


def main(args: EvalArguments) -> list[dict] | None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.prompts:
            return batch(args)
        chat_loop(args)
    except (DataError, FileNotFoundError) as err:  # bad input, named: one line, not a traceback
        raise SystemExit(f"error: {err}") from None
    return None


if __name__ == "__main__":
    main(*parse_args((EvalArguments,)))
