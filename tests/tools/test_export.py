"""GGUF export through llama.cpp's own converter, checked by loading the files back with transformers; and what
an export refuses before it writes anything.

The conversions need the pinned converter (``python -m tools.export --install_converter``, which ``bash run.sh
test`` runs) and ``requirements/export.txt``. The models are tiny Qwen2s saved the way the stages save
(``utils.train.portable``), with ``initializer_range=0.5`` so that their logits are not flat and greedy ids mean
something.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch
from tokenizers import Regex, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

from tools import export, gguf_converter
from tools.gguf_converter import SCRIPT, ConverterChanged, converter_dir, verify_converter
from utils.generation import default_generation_config
from utils.modeling import ModelShapeArguments, build_model
from utils.train.portable import make_portable

needs_converter = pytest.mark.skipif(
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


@needs_converter
def test_qwen_tokenizer_checkpoint_round_trip(tmp_path, qwen_tokenizer, caplog):
    """Qwen2.5's tokenizer is one the converter knows by its own hash list (no fallback): the GGUF tokenizer gives
    the same ids. Its model is not loaded back here: gguf-py parses the 151,936-entry vocabulary of the file once
    per read (~6 s of CPU each), and a model load reads it twice; the demo-vocabulary test checks the weights."""
    folder = save_tiny(tmp_path / "qwen", qwen_tokenizer, vocab_size=151936)
    plan = export.plan_export(folder, ["f16"])
    with caplog.at_level(logging.INFO):
        export.export_gguf(plan)
    files = plan.ggufs
    assert files == {"f16": folder / "gguf" / "mini_qwen-qwen-f16.gguf"} and "Qwen2's pipeline" not in caplog.text
    assert sorted(p.name for p in (folder / "gguf").iterdir()) == ["Modelfile", "mini_qwen-qwen-f16.gguf"]
    original, back = read(folder, with_model=False), read(folder / "gguf", files["f16"].name, with_model=False)
    assert back == original
    assert original["ids"][2] == [151644, 872, 198, 108386, 151645, 198, 151644, 77091, 198]


@needs_converter
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


@needs_converter
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
        export.export_gguf(export.plan_export(folder, ["f16"]))
    assert not (folder / "gguf").exists()  # the folder it made is gone with the partial file


# ---- refused before anything is written ----


@pytest.fixture
def demo_model(tmp_path, small_tokenizer_dir):
    return save_tiny(tmp_path / "demo", AutoTokenizer.from_pretrained(small_tokenizer_dir), vocab_size=1024)


def edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def refused(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as err:
        export.main(argv)
    assert isinstance(err.value.code, str) and err.value.code.startswith("error: ")
    return err.value.code


def test_a_config_that_does_not_fit_the_weights_is_refused(demo_model):
    edit_json(demo_model / "config.json", vocab_size=5000)
    assert refused(["--gguf", str(demo_model)]) == (
        f"error: {demo_model / 'config.json'} does not fit model.safetensors: model.embed_tokens.weight is "
        "[1024, 32], the config makes it [5000, 32]"
    )
    assert not (demo_model / "gguf").exists()


def test_a_tokenizer_with_ids_past_the_embedding_is_refused(demo_model, tmp_path):
    tokenizer = json.loads((demo_model / "tokenizer.json").read_text())
    tokenizer["added_tokens"].append({**tokenizer["added_tokens"][-1], "id": 1024, "content": "<|extra|>"})
    (demo_model / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert refused(["--gguf", str(demo_model)]) == (
        f"error: {demo_model / 'tokenizer.json'} has token ids up to 1024, past {demo_model / 'config.json'} "
        "vocab_size 1024 (the embedding has no row for them)"
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda m: edit_json(m / "generation_config.json", eos_token_id=1000), "eos_token_id 1000 is not one of"),
        (lambda m: (m / "generation_config.json").write_text('{"eos_token_id": [2, '), "not valid JSON"),
        (lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:-1]), "cut short"),
    ],
    ids=["eos not special", "generation_config cut short", "weights cut short"],
)
def test_a_broken_file_is_named_and_nothing_is_written(demo_model, damage, message):
    damage(demo_model)
    error = refused(["--gguf", str(demo_model)])
    assert error.startswith(f"error: {demo_model}") and message in error and "\n" not in error, error
    assert not (demo_model / "gguf").exists()


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "", "x y"])
def test_a_name_is_a_file_name_only(demo_model, name):
    assert refused(["--gguf", str(demo_model), "--name", name]).startswith("error: --name must be a file name")


def test_existing_files_are_kept_without_overwrite(demo_model):
    out = demo_model / "gguf"
    out.mkdir()
    (out / "Modelfile").write_text("FROM ./mine.gguf  # edited by hand\n")
    (out / "mini_qwen-demo-f16.gguf").write_bytes(b"earlier export")
    assert refused(["--gguf", str(demo_model)]) == (
        f"error: {out / 'mini_qwen-demo-f16.gguf'}, {out / 'Modelfile'} exist: pass --overwrite to replace"
    )
    assert (out / "Modelfile").read_text() == "FROM ./mine.gguf  # edited by hand\n"
    assert (out / "mini_qwen-demo-f16.gguf").read_bytes() == b"earlier export"


@needs_converter
def test_overwrite_replaces_them(demo_model):
    out = demo_model / "gguf"
    out.mkdir()
    (out / "Modelfile").write_text("FROM ./mine.gguf\n")
    export.main(["--gguf", str(demo_model), "--outtypes", "f16", "--overwrite"])
    assert (out / "Modelfile").read_text().startswith("FROM ./mini_qwen-demo-f16.gguf\n")
    assert (out / "mini_qwen-demo-f16.gguf").read_bytes()[:4] == b"GGUF"


@needs_converter
def test_a_failure_after_the_first_file_leaves_nothing(demo_model, monkeypatch):
    """f16 converts, then q8_0 fails (or the user presses Ctrl-C): the f16 file is not left behind either."""
    real = export.converter_command

    def failing_second(model_dir, outtype, outfile, name):
        if outtype == "q8_0":
            return [sys.executable, "-c", "import sys; print('no space left', file=sys.stderr); sys.exit(3)"]
        return real(model_dir, outtype, outfile, name)

    monkeypatch.setattr(export, "converter_command", failing_second)
    with pytest.raises(export.ConversionError, match="to q8_0 \\(exit 3\\)"):
        export.export_gguf(export.plan_export(demo_model))
    assert not (demo_model / "gguf").exists()
    (demo_model / "gguf").mkdir()
    (demo_model / "gguf" / "notes.txt").write_text("mine")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_gguf(export.plan_export(demo_model))
    assert [p.name for p in (demo_model / "gguf").iterdir()] == ["notes.txt"]


# ---- the converter is checked before every run ----


@pytest.fixture
def converter_copy(tmp_path, monkeypatch):
    """A copy of the installed converter that tools.gguf_converter uses instead of the real one."""
    if not (converter_dir() / SCRIPT).is_file():
        pytest.skip(f"llama.cpp's converter is missing from {converter_dir()}: run `bash run.sh test`")
    copy = shutil.copytree(converter_dir(), tmp_path / "converter", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(gguf_converter, "converter_dir", lambda: copy)
    return copy


def test_the_pinned_converter_passes(converter_copy):
    assert verify_converter() == converter_copy


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c: (c / "conversion" / "qwen.py").write_text("import os  # edited\n"), "changed: conversion/qwen.py"),
        (
            lambda c: (c / "numpy.py").write_text("raise SystemExit('not numpy')\n"),
            "not in the pinned sdist: numpy.py",
        ),
        (lambda c: (c / "LICENSE").unlink(), "missing: LICENSE"),
    ],
    ids=["edited", "added", "removed"],
)
def test_a_changed_converter_is_named_and_not_run(converter_copy, demo_model, edit, words):
    if not (converter_copy / gguf_converter.MANIFEST).is_file():  # an install from before the manifest existed
        digests = gguf_converter.file_digests(converter_copy)
        (converter_copy / gguf_converter.MANIFEST).write_text("".join(f"{d}  {p}\n" for p, d in digests.items()))
    edit(converter_copy)
    with pytest.raises(ConverterChanged, match="not the pinned one") as err:
        verify_converter()
    assert words in str(err.value) and "--reinstall_converter" in str(err.value)
    assert words in refused(["--gguf", str(demo_model)])
    assert not (demo_model / "gguf").exists()


def test_an_export_on_a_fresh_clone_installs_the_converter_first(demo_model, tmp_path, monkeypatch):
    """``bash run.sh export --gguf DIR`` without the converter: it is fetched (sha256-checked) on first use."""
    missing = tmp_path / "venv" / "compat" / "converter"
    monkeypatch.setattr(export, "converter_dir", lambda: missing)
    installed, exported = [], []
    monkeypatch.setattr(export, "install_converter", lambda reinstall=False: installed.append(reinstall))
    monkeypatch.setattr(export, "export_gguf", exported.append)
    monkeypatch.setattr(export, "how_to_run", lambda plan: "")
    export.main(["--gguf", str(demo_model)])
    assert installed == [False] and [plan.files.path for plan in exported] == [demo_model.resolve()]


def test_the_converter_runs_from_its_own_checked_copy_without_bytecode(tmp_path):
    """The converter process checks the tree itself (also when run directly) and reads no .pyc from it."""
    if not (converter_dir() / SCRIPT).is_file():
        pytest.skip("the converter is not installed")
    code = (
        "import sys, tools.gguf_converter as g; sys.argv = ['x', '--help']; "
        "import runpy; runpy.run_path = lambda *a, **k: print(sys.dont_write_bytecode, sys.pycache_prefix); g.main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    dont_write, prefix = result.stdout.split()
    assert dont_write == "True" and "converter-pycache-" in prefix and str(converter_dir()) not in prefix
