"""llama.cpp's own GGUF converter: a pinned copy, fetched once, run unchanged but for one checked fallback.

The converter is ``convert_hf_to_gguf.py`` with its ``conversion/`` package (the model classes) and ``gguf-py``
(the GGUF writer), exactly as llama.cpp ships them. PyPI carries them inside the llama-cpp-python source
distribution, which vendors llama.cpp; ``install_converter`` downloads that sdist with pip, checks its sha256, and
extracts only those files (2 MiB of the 73 MiB) into ``converter_dir()``, inside the venv, so it lives and goes
with it. ``tools.export`` runs this module as a subprocess::

    python -m tools.export --install_converter                  # once (bash run.sh test or export): fetch and extract
    python -m tools.gguf_converter MODEL_DIR --outtype f16 --outfile out.gguf   # convert_hf_to_gguf.py's flags

The sdist is checked once, when it is downloaded; the extracted files are checked before every run
(``verify_converter``): their names and sha256 digests must give ``CONVERTER_TREE_SHA256``, so an edited converter,
or a file put next to it (it runs with its folder first on ``sys.path``: a stray ``numpy.py`` there would be
imported), is refused with the files named instead of being run. Bytecode is neither read nor written in that
folder (a temporary ``sys.pycache_prefix``), so an edited ``.pyc`` cannot stand in for a checked ``.py`` either.

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
# sha256 of the extracted tree (``tree_digest``: every file's path and sha256), computed from the sdist above.
CONVERTER_TREE_SHA256 = "64b7193412ff3595cd240d112e56a9836f0e334f35048baa46b4dc301cd59e6e"
MANIFEST = "SHA256SUMS"  # written at install, to name the changed files when the tree differs


def converter_dir() -> Path:
    return Path(sys.prefix) / "compat" / f"llama.cpp-converter-{CONVERTER_SDIST.split('==')[1]}"


class ConverterChanged(RuntimeError):
    """The installed converter is not the pinned one; the message names what differs."""


def file_digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``, but the manifest and bytecode caches."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST and "__pycache__" not in path.parts
    }


def tree_digest(digests: dict[str, str]) -> str:
    """One sha256 for a tree: over ``sha256sum``'s lines, sorted by path."""
    return hashlib.sha256("".join(f"{digests[p]}  {p}\n" for p in sorted(digests)).encode()).hexdigest()


def verify_converter() -> Path:
    """The converter's folder, after checking that its files are exactly the pinned ones; ``FileNotFoundError``
    when it is not installed, ``ConverterChanged`` (naming the files) when it differs."""
    root = converter_dir()
    if not (root / SCRIPT).is_file():
        raise FileNotFoundError(
            f"llama.cpp's converter is not in {root}: run `python -m tools.export --install_converter` "
            "(`bash run.sh export` installs it on first use)"
        )
    digests = file_digests(root)
    if tree_digest(digests) == CONVERTER_TREE_SHA256:
        return root
    recorded = {}
    if (root / MANIFEST).is_file():
        for line in (root / MANIFEST).read_text(encoding="utf-8", errors="replace").splitlines():
            digest, _, path = line.partition("  ")
            recorded[path] = digest
    changed = [p for p in digests if p in recorded and recorded[p] != digests[p]]
    added, missing = sorted(set(digests) - set(recorded)), sorted(set(recorded) - set(digests))
    found = [
        f"{what}: {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}"
        for what, paths in (("changed", changed), ("not in the pinned sdist", added), ("missing", missing))
        if paths
    ]
    raise ConverterChanged(
        f"llama.cpp's converter in {root} is not the pinned one ({'; '.join(found) or 'its files differ'}), so "
        "it was not run. Reinstall it: python -m tools.export --install_converter --reinstall_converter"
    )


def install_converter(reinstall: bool = False) -> Path:
    """Download the pinned sdist (pip, no build, no dependencies), check its sha256, extract the converter files
    and check them; the folder gets its final name only when complete, so a broken fetch never looks installed.
    An installed converter is verified and kept, unless ``reinstall``."""
    target = converter_dir()
    if (target / SCRIPT).is_file() and not reinstall:
        return verify_converter()
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
        extract_converter(sdist, partial)
    digests = file_digests(partial)
    if tree_digest(digests) != CONVERTER_TREE_SHA256:
        raise RuntimeError(f"{CONVERTER_SDIST} gave converter files other than the pinned ones: not installed")
    (partial / MANIFEST).write_text("".join(f"{digests[p]}  {p}\n" for p in digests), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def extract_converter(sdist: Path, into: Path) -> None:
    """The converter's files from the llama-cpp-python sdist, below ``VENDORED``, into ``into``."""
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            path = member.name.partition("/")[2]  # below the sdist's top folder
            if path.startswith(VENDORED) and path[len(VENDORED) :].startswith(CONVERTER_FILES):
                member.name = path[len(VENDORED) :]
                members.append(member)
        tar.extractall(into, members=members, filter="data")
    if not (into / SCRIPT).is_file() or not (into / "conversion" / "qwen.py").is_file():
        raise RuntimeError(f"{CONVERTER_SDIST} does not hold {VENDORED}{SCRIPT} and conversion/qwen.py")


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
    try:
        root = verify_converter()
    except (FileNotFoundError, ConverterChanged) as err:
        raise SystemExit(str(err)) from None
    # Bytecode from a private, empty cache only: a .pyc in the converter's folder is never read, none is written.
    sys.dont_write_bytecode = True
    sys.pycache_prefix = tempfile.mkdtemp(prefix="converter-pycache-")
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
