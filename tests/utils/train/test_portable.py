"""What every stage saves reads the same in transformers 4.x as in transformers 5 (``utils.train.portable``).

The folders come from the real stage mains on a tiny shape: PT (with a ``checkpoint-*``), SFT from it, DPO from
that. transformers 5.24 reads them here; transformers 4.57.6 reads them in a subprocess from its side folder
(``python -m tools.compat --install_transformers4``, which ``bash run.sh test`` runs): same token ids, chat text,
decoded text, logits and greedy ids. A raw 5.24 save of the same weights is the control: 4.x refuses its
tokenizer and reads its RoPE base as 10000, so the comparison does catch an unfixed folder.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainingArguments
from trl import DPOConfig, SFTConfig

import mini_qwen_dpo
import mini_qwen_pt
import mini_qwen_sft
from tests.helpers import MINI_DATA, TINY_SHAPE
from tools.compat import transformers4_dir
from utils.train.args import parse_args
from utils.train.portable import make_portable

TRANSFORMERS4 = transformers4_dir()
needs_transformers4 = pytest.mark.skipif(
    not (TRANSFORMERS4 / "transformers").is_dir(),
    reason=f"transformers 4.x side folder {TRANSFORMERS4} is missing: run `bash run.sh test` "
    "(or `python -m tools.compat --install_transformers4`)",
)
TEXTS = [
    "李白是唐代伟大的浪漫主义诗人，被后人誉为“诗仙”。床前明月光，疑是地上霜。",
    "Hello world 12345, it's 3.14159!  Don't   stop.\n\n\ttabs\u00a0and café",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
    '<tool_call>{"name": "f"}</tool_call><|endoftext|> 🙂👍🏽 日本語',
]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "李白是谁？"},
    {"role": "assistant", "content": "A poet of the Tang dynasty."},
    {"role": "user", "content": "Who are you?"},
]
# Max logit difference that counts as the same (measured: 0.0). The barely trained test models have flat logits,
# so a wrong RoPE base moves them by only ~2e-3 here (2.6-7 on trained models, with other greedy ids).
SAME = 1e-5
COMMON = ["--report_to", "none", "--logging_steps", "1", "--seed", "7", "--save_strategy", "no"]


def read_folder(folder: str, texts: list, chat: list, prompt: list | None, slow: bool = False) -> dict:
    """What a reader gets from ``folder``: tokenizer class, ids, chat text, decoded text; with a prompt (ids), the
    model's logits and 8 greedy ids. Runs here under 5.x and, as source, in the 4.x subprocess: no globals."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen: dict = {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=not slow)
    except (ValueError, OSError) as err:  # an unfixed folder: 4.x does not know the class
        seen["tokenizer_error"] = f"{type(err).__name__}: {err}"
    else:
        ids = [tokenizer(text)["input_ids"] for text in texts]
        chat_text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        seen.update(
            tokenizer_class=type(tokenizer).__name__,
            ids=ids,
            chat_text=chat_text,
            chat_ids=tokenizer(chat_text)["input_ids"],
            decoded=[tokenizer.decode(i, skip_special_tokens=True) for i in ids],
        )
    if prompt:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        x = torch.tensor([prompt])
        with torch.no_grad():
            logits = model(x).logits[0]
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=8)
        seen.update(logits=logits.tolist(), greedy=out[0, x.shape[1] :].tolist())
    return seen


def read_with_transformers4(jobs: list[dict]) -> list[dict]:
    """``read_folder(**job)`` for each job, in one Python process that imports transformers from the side folder."""
    source = f"import json, sys\n{inspect.getsource(read_folder)}\n"
    source += "import transformers\nassert transformers.__version__.startswith('4.'), transformers.__version__\n"
    source += "print(json.dumps([read_folder(**job) for job in json.load(sys.stdin)]))"
    env = {**os.environ, "PYTHONPATH": str(TRANSFORMERS4), "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(
        [sys.executable, "-c", source], input=json.dumps(jobs), env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory, small_tokenizer_dir) -> dict[str, Path]:
    """pt (saving checkpoint-2 and -4 on the way), sft from pt, dpo from sft: a few steps each, real mains."""
    tmp = tmp_path_factory.mktemp("portable")
    pt = [
        "--data_dir",
        str(MINI_DATA / "pt"),
        "--tokenizer_name_or_path",
        str(small_tokenizer_dir),
        *TINY_SHAPE,
        "--vocab_size",
        "1024",
        "--block_size",
        "64",
        "--cache_dir",
        str(tmp / "cache"),
        "--output_dir",
        str(tmp / "pt"),
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "5e-3",
        "--num_proc",
        "1",
        *COMMON,
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    ]
    mini_qwen_pt.main(*parse_args((mini_qwen_pt.PTArguments, TrainingArguments), pt))
    sft = [
        "--model_name_or_path",
        str(tmp / "pt"),
        "--data_dir",
        str(MINI_DATA / "sft"),
        "--output_dir",
        str(tmp / "sft"),
        "--cache_dir",
        str(tmp / "cache_sft"),
        "--max_length",
        "128",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "3e-3",
        "--activation_checkpointing",
        "false",
        *COMMON,
    ]
    mini_qwen_sft.main(*parse_args((mini_qwen_sft.SFTArguments, SFTConfig), sft))
    dpo = [
        "--model_name_or_path",
        str(tmp / "sft"),
        "--data_dir",
        str(MINI_DATA / "dpo"),
        "--output_dir",
        str(tmp / "dpo"),
        "--max_length",
        "128",
        "--max_prompt_length",
        "64",
        "--holdout",
        "0",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "1e-3",
        "--activation_checkpointing",
        "false",
        *COMMON,
    ]
    mini_qwen_dpo.main(*parse_args((mini_qwen_dpo.DPOArguments, DPOConfig), dpo))
    # The control: the same PT weights saved by 5.24 as any 5.x tool saves them, with the tokenizer as trained.
    raw = tmp / "raw"
    AutoModelForCausalLM.from_pretrained(tmp / "pt").save_pretrained(raw)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(small_tokenizer_dir / name, raw / name)
    return {
        "pt": tmp / "pt",
        "checkpoint": tmp / "pt" / "checkpoint-2",
        "sft": tmp / "sft",
        "dpo": tmp / "dpo",
        "raw": raw,
    }


def portable_files(folder: Path) -> dict[str, bytes]:
    names = ("config.json", "generation_config.json", "tokenizer_config.json", "vocab.json", "merges.txt")
    return {name: (folder / name).read_bytes() for name in names}


@pytest.mark.parametrize("stage", ["pt", "checkpoint", "sft", "dpo"])
def test_saved_folders_are_portable_and_stay_so(saved, stage):
    folder = saved[stage]
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 1e6 and config["use_cache"] is True
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "Qwen2Tokenizer"
    added = tokenizer_config["added_tokens_decoder"]
    assert added["1"] == {
        "content": "<|im_start|>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    assert "<|im_start|>" in tokenizer_config["additional_special_tokens"]
    bpe = json.loads((folder / "tokenizer.json").read_text())["model"]
    assert json.loads((folder / "vocab.json").read_text()) == bpe["vocab"] and len(bpe["vocab"]) == 1000
    merges = (folder / "merges.txt").read_text().splitlines()
    assert merges == ["#version: 0.2"] + [" ".join(pair) for pair in bpe["merges"]]
    generation = json.loads((folder / "generation_config.json").read_text())
    assert not set(generation) & {"max_new_tokens", "max_length"} and generation["do_sample"]
    before = portable_files(folder)
    make_portable(folder)
    assert portable_files(folder) == before


def test_tokenizer_class_follows_the_pipeline(tmp_path, small_tokenizer_dir):
    """Qwen2Tokenizer only for Qwen2's exact pipeline, which 5.x's class rebuilds; anything else reads as is."""
    classes = {}
    for normalizer in ("NFC", "NFKC"):
        folder = shutil.copytree(small_tokenizer_dir, tmp_path / normalizer)
        tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
        tokenizer_json["normalizer"] = {"type": normalizer}
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
        make_portable(folder)
        classes[normalizer] = json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert classes == {"NFC": "Qwen2Tokenizer", "NFKC": "PreTrainedTokenizerFast"}


def max_diff(a: list, b: list) -> float:
    return (torch.tensor(a) - torch.tensor(b)).abs().max().item()


@needs_transformers4
def test_transformers4_reads_every_stage_and_the_qwen_tokenizer_like_transformers5(
    saved, qwen_tokenizer_dir, small_tokenizer_dir, tmp_path
):
    from transformers import AutoTokenizer

    qwen = shutil.copytree(qwen_tokenizer_dir, tmp_path / "qwen")
    make_portable(qwen)
    # A RoPE type other than the default goes to rope_scaling too, 4.x's name for the same settings.
    yarn = shutil.copytree(saved["pt"], tmp_path / "yarn", ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((yarn / "config.json").read_text())
    config["rope_parameters"] = {
        "rope_type": "yarn",
        "rope_theta": 1e6,
        "factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    (yarn / "config.json").write_text(json.dumps(config))
    make_portable(yarn)
    # ~440 tokens, so that a wrong RoPE base shows at positions far apart
    prompt = AutoTokenizer.from_pretrained(small_tokenizer_dir)(" ".join(TEXTS * 3))["input_ids"]
    folders = {**saved, "yarn": yarn}
    jobs = {
        stage: {"folder": str(path), "texts": TEXTS, "chat": CHAT, "prompt": prompt} for stage, path in folders.items()
    }
    jobs["pt_slow"] = {**jobs["pt"], "slow": True, "prompt": None}
    jobs["qwen"] = {"folder": str(qwen), "texts": TEXTS, "chat": CHAT, "prompt": None}
    v4 = dict(zip(jobs, read_with_transformers4(list(jobs.values()))))
    v5 = {stage: read_folder(**job) for stage, job in jobs.items() if stage != "pt_slow"}
    v5["pt_slow"], v5["qwen_as_built"] = v5["pt"], read_folder(str(qwen_tokenizer_dir), TEXTS, CHAT, None)
    assert v5["qwen"]["ids"] == v5["qwen_as_built"]["ids"]  # making it portable changed nothing for 5.x

    for stage in ("pt", "checkpoint", "sft", "dpo", "yarn", "pt_slow", "qwen"):
        assert v4[stage]["tokenizer_class"] == ("Qwen2Tokenizer" if stage == "pt_slow" else "Qwen2TokenizerFast")
        for key in ("ids", "chat_text", "chat_ids", "decoded"):
            assert v4[stage][key] == v5[stage][key], (stage, key)
        if stage in ("pt", "checkpoint", "sft", "dpo", "yarn"):
            assert max_diff(v4[stage]["logits"], v5[stage]["logits"]) < SAME, stage
            assert v4[stage]["greedy"] == v5[stage]["greedy"], stage
    assert v5["qwen"]["ids"][2] == [151644, 872, 198, 108386, 151645, 198, 151644, 77091, 198]
    assert json.loads((yarn / "config.json").read_text())["rope_scaling"]["rope_type"] == "yarn"
    assert max_diff(v5["yarn"]["logits"], v5["pt"]["logits"]) > 10 * SAME  # the scaling is in force

    # The control: 5.24 reads its raw save like the portable one; 4.x refuses the tokenizer and, silently,
    # reads the RoPE base as 10000.
    assert v5["raw"]["ids"] == v5["pt"]["ids"] and max_diff(v5["raw"]["logits"], v5["pt"]["logits"]) == 0
    assert "TokenizersBackend" in v4["raw"]["tokenizer_error"]
    assert max_diff(v4["raw"]["logits"], v5["raw"]["logits"]) > 10 * SAME
