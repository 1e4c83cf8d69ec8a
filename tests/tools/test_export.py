"""GGUF export through llama.cpp's own converter, checked by loading the files back with transformers.

Needs the pinned converter (``python -m tools.export --install_converter``, which ``bash run.sh test`` runs) and
``requirements/export.txt``. The models are tiny Qwen2s saved the way the stages save (``utils.train.portable``), with
``initializer_range=0.5`` so that their logits are not flat and greedy ids mean something.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tokenizers import Regex, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

from tools import export
from tools.gguf_converter import SCRIPT, converter_dir
from utils.generation import default_generation_config
from utils.modeling import ModelShapeArguments, build_model
from utils.train.portable import make_portable

pytestmark = pytest.mark.skipif(
    not (converter_dir() / SCRIPT).is_file(),
    reason=f"llama.cpp's converter is missing from {converter_dir()}: run `bash run.sh test` "
    "(or `python -m tools.export --install_converter`)",
)
TEXTS = [
    "李白是唐代伟大的浪漫主义诗人，被后人誉为“诗仙”。",
    "Hello world 12345, it's 3.14159!  Don't   stop.\n\n\ttabs",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
]
CHAT = [{"role": "user", "content": "李白是谁？Who was Li Bai?"}]
# cl100k's split: digits in threes, where Qwen2's split takes them one by one
CL100K_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def save_tiny(folder, tokenizer, vocab_size: int):
    """A tiny Qwen2 saved as the stages save it: sampling defaults, use_cache false, then made portable."""
    torch.manual_seed(0)
    shape = ModelShapeArguments(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=vocab_size,
    )
    model = build_model(
        shape,
        initializer_range=0.5,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.config.use_cache = False
    model.generation_config = default_generation_config(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    make_portable(folder)
    return folder


def read(folder, gguf_file: str | None = None, with_model: bool = True) -> dict:
    """Token ids of TEXTS and of the chat prompt; ``with_model``, the prompt's logits and 8 greedy ids too."""
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    seen = {"ids": [tokenizer(text)["input_ids"] for text in TEXTS], "prompt": prompt["input_ids"][0].tolist()}
    if with_model:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
        with torch.no_grad():
            seen["logits"] = model(**prompt).logits[0]
            out = model.generate(**prompt, do_sample=False, max_new_tokens=8, min_new_tokens=8)
        seen["greedy"] = out[0, prompt["input_ids"].shape[1] :].tolist()
    return seen


def test_qwen_tokenizer_checkpoint_round_trip(tmp_path, qwen_tokenizer, caplog):
    """Qwen2.5's tokenizer is one the converter knows by its own hash list (no fallback): the GGUF tokenizer gives
    the same ids. Its model is not loaded back here: gguf-py parses the 151,936-entry vocabulary of the file once
    per read (~6 s of CPU each), and a model load reads it twice; the demo-vocabulary test checks the weights."""
    folder = save_tiny(tmp_path / "qwen", qwen_tokenizer, vocab_size=151936)
    with caplog.at_level(logging.INFO):
        files = export.convert_to_gguf(folder, ["f16"])
    assert files == {"f16": folder / "gguf" / "mini_qwen-qwen-f16.gguf"} and "Qwen2's pipeline" not in caplog.text
    original, back = read(folder, with_model=False), read(folder / "gguf", files["f16"].name, with_model=False)
    assert back == original
    assert original["ids"][2] == [151644, 872, 198, 108386, 151645, 198, 151644, 77091, 198]


def test_demo_tokenizer_checkpoint_through_the_cli(tmp_path, small_tokenizer_dir, capsys, caplog):
    """The demo tokenizer has Qwen2's pipeline but a vocabulary the converter cannot know: named qwen2 (checked),
    converted with the default command, and read back with the same ids; f16 keeps the greedy ids."""
    from gguf import GGUFReader

    folder = save_tiny(tmp_path / "demo", AutoTokenizer.from_pretrained(small_tokenizer_dir), vocab_size=1024)
    with caplog.at_level(logging.INFO):
        export.main(["--gguf", str(folder)])
    assert "exactly Qwen2's pipeline: tokenizer.ggml.pre = qwen2" in caplog.text
    out = folder / "gguf"
    names = ["Modelfile", "mini_qwen-demo-f16.gguf", "mini_qwen-demo-q8_0.gguf"]
    assert sorted(path.name for path in out.iterdir()) == names
    printed = capsys.readouterr().out
    assert f"llama-cli -m {out / 'mini_qwen-demo-q8_0.gguf'} -cnv" in printed
    assert f"ollama create mini_qwen-demo -f {out / 'Modelfile'}" in printed
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./mini_qwen-demo-q8_0.gguf\nTEMPLATE")
    assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"' in modelfile and "top_k 20" in modelfile
    fields = GGUFReader(out / "mini_qwen-demo-f16.gguf").fields
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2" and fields["qwen2.rope.freq_base"].contents() == 1e6
    original, f16, q8_0 = read(folder), read(out, "mini_qwen-demo-f16.gguf"), read(out, "mini_qwen-demo-q8_0.gguf")
    assert f16["ids"] == q8_0["ids"] == original["ids"] and f16["prompt"] == q8_0["prompt"] == original["prompt"]
    assert (f16["logits"] - original["logits"]).abs().max() < 0.01 * original["logits"].abs().max()
    assert f16["greedy"] == original["greedy"]
    # 8-bit blocks on deliberately unnormalised random weights (std 0.5): lossy here (trained: see tools.export)
    assert torch.nn.functional.cosine_similarity(q8_0["logits"], original["logits"], dim=-1).min() > 0.95


def test_unknown_tokenizer_is_refused_with_the_reason(tmp_path, small_tokenizer_dir):
    """A vocabulary the converter does not know, with a split that llama.cpp's qwen2 type would not reproduce."""
    tokenizer = AutoTokenizer.from_pretrained(small_tokenizer_dir)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CL100K_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    folder = save_tiny(tmp_path / "other", tokenizer, vocab_size=1024)
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    with pytest.raises(export.ConversionError, match=r"not Qwen2's pipeline either \(.*split regex\).*not converted"):
        export.convert_to_gguf(folder, ["f16"])
    assert list((folder / "gguf").iterdir()) == []
