"""mini_qwen_eval: metrics on known answers, batch mode over two checkpoints, the interactive loop."""

from __future__ import annotations

import io
import json
import math
import shutil

import pytest
from transformers import AutoModelForCausalLM, TrainingArguments

import mini_qwen_eval
from mini_qwen_eval import EvalArguments, _cell
from tests.helpers import TINY_SHAPE
from utils.data.chat import prompt_ids, reply_message
from utils.evaluation import distinct_n, perplexity_and_bpb, repeated_ngram_share, text_nll
from utils.generation import CollectingStreamer, build_generation_config, generate, unescape


def test_repetition_metrics_on_known_text():
    looping = [1, 2, 3, 4] * 25
    # 97 4-grams, 4 distinct rotations: the other 93 repeat an earlier one.
    assert repeated_ngram_share(looping, 4) == pytest.approx(93 / 97)
    assert repeated_ngram_share(list(range(100)), 4) == 0.0
    assert distinct_n(list(range(50)), 2) == 1.0
    assert distinct_n([7] * 50, 2) == pytest.approx(1 / 49)


def test_perplexity_and_bpb_arithmetic():
    ppl, bpb = perplexity_and_bpb(nll_nats=10 * math.log(4), n_tokens=10, n_bytes=20)
    assert ppl == pytest.approx(4.0) and bpb == pytest.approx(1.0)


@pytest.fixture(scope="module")
def memorised(tmp_path_factory, small_tokenizer_dir):
    """A tiny model trained until it has memorised one sentence."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import mini_qwen_pt
    from utils.train.args import parse_args

    tmp = tmp_path_factory.mktemp("memorise")
    text = "The quick brown fox jumps over the lazy dog. " * 3
    (tmp / "data").mkdir()
    pq.write_table(pa.table({"text": [text] * 64}), tmp / "data" / "a.parquet")
    argv = [
        "--data_dir",
        str(tmp / "data"),
        "--tokenizer_name_or_path",
        str(small_tokenizer_dir),
        *TINY_SHAPE,
        "--vocab_size",
        "1024",
        "--block_size",
        "32",
        "--cache_dir",
        str(tmp / "cache"),
        "--output_dir",
        str(tmp / "pt"),
        "--max_steps",
        "60",
        "--learning_rate",
        "1e-2",
        "--per_device_train_batch_size",
        "8",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--num_proc",
        "1",
        "--logging_steps",
        "10",
    ]
    mini_qwen_pt.main(*parse_args((mini_qwen_pt.PTArguments, TrainingArguments), argv))
    return tmp, text


def test_perplexity_of_memorised_text_is_near_one(memorised):
    tmp, text = memorised
    model = AutoModelForCausalLM.from_pretrained(tmp / "pt").eval()
    from utils.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tmp / "pt")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    nll, count = text_nll(model, ids, block_size=32)
    assert math.exp(nll / count) < 1.5
    other = tokenizer("李白乘舟将欲行，忽闻岸上踏歌声。", add_special_tokens=False)["input_ids"]
    nll2, count2 = text_nll(model, other, block_size=32)
    assert math.exp(nll2 / count2) > 10


def test_batch_mode_two_checkpoints(tmp_path, memorised):
    ckpt = memorised[0] / "pt"
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The quick"}\n{"prompt": "李白是谁？"}\n', encoding="utf-8")
    (tmp_path / "held.txt").write_text(memorised[1], encoding="utf-8")
    args = EvalArguments(
        model_name_or_path=[str(ckpt), str(other)],
        prompts=str(prompts),
        eval_data=str(tmp_path / "held.txt"),
        output_dir=str(tmp_path / "out"),
        max_new_tokens=12,
        decoding=["greedy", "sample"],
        block_size=32,
    )
    rows = mini_qwen_eval.main(args)
    lines = [json.loads(x) for x in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert lines == rows and len(rows) == 8
    assert [r["column"] for r in rows[::2]] == ["pt (greedy)", "pt (sample)", "other (greedy)", "other (sample)"]
    first = rows[0]
    assert first["mode"] == "raw" and first["prompt"] == "The quick" and first["output"].startswith(" brown fox")
    assert first["new_tokens"] == 12 and not first["ended_with_eos"]
    assert rows[0]["output"] == rows[4]["output"]  # greedy: the same weights give the same text
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| prompt | pt (greedy) | pt (sample) | other (greedy) | other (sample) |" in report
    assert "| The quick | " + _cell(first["output"]) in report
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["pt (greedy)"]["decoding"] == "greedy" and metrics["other (sample)"]["decoding"] == "sample"
    assert metrics["pt (greedy)"]["perplexity"] < 1.5
    # The same weights: the same perplexity and greedy repetition figures in both columns.
    assert metrics["other (greedy)"] == metrics["pt (greedy)"]
    assert "| perplexity |" in report and "| repeated_4gram_share |" in report


def test_unescape_keeps_chinese():
    assert unescape(r"第一行\n第二行\t完\\n") == "第一行\n第二行\t完\\n"


def test_streaming_prints_before_generation_ends(memorised, capsys):
    model = AutoModelForCausalLM.from_pretrained(memorised[0] / "pt")
    from utils.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(memorised[0] / "pt")
    chunks = []

    class Recorder(CollectingStreamer):
        def on_finalized_text(self, text, stream_end=False):
            chunks.append(text)
            super().on_finalized_text(text, stream_end)

    config = build_generation_config(model, do_sample=False, max_new_tokens=10)
    result = generate(model, tokenizer, "The quick", config, streamer=Recorder(tokenizer))
    assert len([c for c in chunks if c]) > 1  # several pieces, printed as they came
    assert "".join(chunks) == result.text and result.text in capsys.readouterr().out


def test_interactive_history_reset_escapes_and_quit(memorised, monkeypatch, capsys):
    seen = []
    real_generate = mini_qwen_eval.generate

    def spy(model, tokenizer, prompt, config, streamer=None, thinking=False):
        seen.append((prompt, config.max_new_tokens))
        return real_generate(model, tokenizer, prompt, config, streamer, thinking)

    monkeypatch.setattr(mini_qwen_eval, "generate", spy)
    session = "Hello\\nthere\n/set max_new_tokens=3\nSecond\n/reset\nThird\n/quit\nnever read\n"
    args = EvalArguments(model_name_or_path=[str(memorised[0] / "pt")], mode="chat", max_new_tokens=5, do_sample=False)
    mini_qwen_eval.chat_loop(args, stdin=io.StringIO(session))
    (first, n1), (second, n2), (third, _) = seen
    assert first == [{"role": "user", "content": "Hello\nthere"}] and n1 == 5
    assert [m["role"] for m in second] == ["user", "assistant", "user"] and n2 == 3
    assert second[0]["content"] == "Hello\nthere" and second[2]["content"] == "Second"
    assert third == [{"role": "user", "content": "Third"}]
    out = capsys.readouterr().out
    assert "[history cleared]" in out and "[max_new_tokens = 3]" in out and len(seen) == 3


def test_ctrl_c_stops_the_answer_not_the_session(memorised, monkeypatch, capsys):
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return None

    monkeypatch.setattr(mini_qwen_eval, "generate", interrupted)
    args = EvalArguments(model_name_or_path=[str(memorised[0] / "pt")], mode="raw")
    mini_qwen_eval.chat_loop(args, stdin=io.StringIO("one\ntwo\n/quit\n"))
    assert len(calls) == 2 and "[stopped]" in capsys.readouterr().out


def test_thinking_switch_renders_the_think_block_and_keeps_the_reasoning_apart(tmp_path, memorised, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "2+2?"}\n', encoding="utf-8")
    rendered = []
    real_generate = mini_qwen_eval.generate

    def spy(model, tokenizer, prompt, config, streamer=None, thinking=False):
        rendered.append(tokenizer.decode(prompt_ids(tokenizer, prompt, thinking)))
        return real_generate(model, tokenizer, prompt, config, streamer, thinking)

    monkeypatch.setattr(mini_qwen_eval, "generate", spy)
    args = EvalArguments(
        model_name_or_path=[str(memorised[0] / "pt")],
        mode="chat",
        prompts=str(prompts),
        output_dir=str(tmp_path / "out"),
        max_new_tokens=6,
        enable_thinking=True,
    )
    (row,) = mini_qwen_eval.main(args)
    assert rendered == ["<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n"]
    assert set(row) >= {"output", "reasoning"}  # six tokens cannot close the block: all reasoning, no answer
    assert row["output"] == "" and row["reasoning"]
    parts = reply_message(" 2 + 2 = 4\n</think>\n\nThe answer is 4.", thinking=True)
    assert parts == {"content": "The answer is 4.", "reasoning_content": "2 + 2 = 4"}
    assert reply_message("Hello", thinking=False) == {"content": "Hello"}


def test_pt_checkpoint_is_raw_mode(memorised):
    from utils.generation import is_chat_checkpoint

    assert not is_chat_checkpoint(str(memorised[0] / "pt"))


def test_held_out_scoring_follows_the_training_hash_and_says_what_each_figure_is(tmp_path, memorised):
    """--eval_holdout keeps exactly the documents and conversations training held out (the same hash); chat
    checkpoints are scored per assistant token in their own template; every metric says what it was measured on and
    which way is better, in report.md and in metrics.json's _about."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from utils.data.chat import encode_chat
    from utils.data.parquet import heldout_fraction
    from utils.data.sft import conversation_text
    from utils.tokenizer import load_tokenizer

    docs = [f"Document number {i} about the quick brown fox." for i in range(40)]
    (tmp_path / "pt").mkdir()
    pq.write_table(pa.table({"text": docs}), tmp_path / "pt" / "a.parquet")
    held_docs = [d for d in docs if heldout_fraction(d) < 0.3]
    assert 0 < len(held_docs) < len(docs)
    assert mini_qwen_eval.read_eval_texts(str(tmp_path / "pt"), 0.3) == held_docs
    chats = [
        [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"Answer {i}."}] for i in range(30)
    ]
    (tmp_path / "sft").mkdir()
    pq.write_table(pa.table({"conversations": chats}), tmp_path / "sft" / "a.parquet")
    held_chats = [c for c in chats if heldout_fraction(conversation_text(c)) < 0.3]
    got = mini_qwen_eval.read_heldout_conversations(str(tmp_path / "sft"), 0.3)
    assert [m[0]["content"] for m in got] == [c[0]["value"] for c in held_chats]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The quick"}\n', encoding="utf-8")
    args = EvalArguments(
        model_name_or_path=[str(memorised[0] / "pt")],
        prompts=str(prompts),
        mode="chat",
        eval_data=str(tmp_path / "pt"),
        eval_chat_data=str(tmp_path / "sft"),
        eval_holdout=0.3,
        output_dir=str(tmp_path / "out"),
        max_new_tokens=4,
        block_size=64,
    )
    mini_qwen_eval.main(args)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    tokenizer = load_tokenizer(memorised[0] / "pt")
    supervised = sum(sum(label != -100 for label in encode_chat(tokenizer, m, 64).labels[1:]) for m in got)
    assert metrics["pt"]["chat_scored_tokens"] == supervised and metrics["pt"]["chat_perplexity"] > 1
    about = metrics["_about"]
    assert f"{len(held_docs)} documents of {tmp_path / 'pt'}" in about["perplexity"]
    assert about["perplexity"].endswith("lower is better") and "higher is better" in about["distinct_2"]
    assert f"{len(held_chats)} conversations" in about["chat_perplexity"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| measured on, and which way is better |" in report and about["chat_perplexity"] in report
