"""GGUF files of a saved model, for llama.cpp and Ollama, made by llama.cpp's own converter.

    python -m tools.export --gguf results/dpo        # results/dpo/gguf/mini_qwen-dpo-{f16,q8_0}.gguf + Modelfile
    python -m tools.export --gguf results/sft --outtypes f32 f16 --name my-model
    python -m tools.export --install_converter       # only fetch the pinned converter (run.sh test/export do it)

The converter is llama.cpp's ``convert_hf_to_gguf.py``, pinned and fetched once (``tools.gguf_converter``); it
runs as a subprocess, one per output type, and needs ``requirements/export.txt``. Each file is written under a
temporary name and renamed when complete. Then the commands to run the files in llama.cpp and Ollama are printed,
and an Ollama ``Modelfile`` is written next to them.

What a GGUF keeps: the weights (f16 and q8_0 move logits by about 0.002 and 0.06-0.09 on small trained models,
greedy ids unchanged), the tokenizer (llama.cpp gives transformers' ids, except on text that is not NFC-normalised,
as for every Qwen2 GGUF), eos, the chat template and the sampling defaults (``general.sampling.*``). Loaded back
into transformers (``from_pretrained(folder, gguf_file=...)``) the vocabulary is padded to ``vocab_size`` and the
generation config is not restored (the second eos, <|endoftext|>, and the sampling defaults).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path

from tools.gguf_converter import SCRIPT, converter_command, converter_dir, install_converter
from utils import REPO_ROOT

logger = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # the converter's whole-model types (tq1_0/tq2_0 are for ternary models)
DEFAULT_OUTTYPES = ("f16", "q8_0")
# The Go-template form of utils.tokenizer.CHAT_TEMPLATE with add_generation_prompt: Ollama does not run Jinja.
OLLAMA_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
# generation_config.json key -> Ollama PARAMETER
OLLAMA_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repeat_penalty",
}


def default_name(model_dir: Path) -> str:
    return f"mini_qwen-{Path(model_dir).resolve().name}"


class ConversionError(RuntimeError):
    """The converter refused the folder or failed; the message ends with its last lines."""


def convert_to_gguf(
    model_dir: str | Path, outtypes=DEFAULT_OUTTYPES, out_dir: str | Path | None = None, name: str | None = None
) -> dict[str, Path]:
    """Convert a saved model folder to one GGUF file per output type: ``{outtype: path}``. ``out_dir`` defaults to
    ``<model_dir>/gguf``, ``name`` to ``mini_qwen-<folder name>`` (the files are ``<name>-<outtype>.gguf``)."""
    model_dir = Path(model_dir)
    missing = [file for file in ("config.json", "tokenizer.json") if not (model_dir / file).is_file()]
    missing += [] if any(model_dir.glob("*.safetensors")) else ["*.safetensors"]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a saved model folder: it has no {', '.join(missing)}")
    if not (converter_dir() / SCRIPT).is_file():
        raise FileNotFoundError(
            f"llama.cpp's converter is not in {converter_dir()}: run "
            "`python -m tools.export --install_converter` (or `bash run.sh export`)"
        )
    if importlib.util.find_spec("sentencepiece") is None:  # the converter imports it for every Qwen2 model
        raise ConversionError("llama.cpp's converter needs sentencepiece: pip install -r requirements/export.txt")
    out_dir = Path(out_dir) if out_dir else model_dir / "gguf"
    name = name or default_name(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # `python -m tools.gguf_converter` from any working directory; the hub is never asked (a local folder).
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
    }
    written = {}
    for outtype in outtypes:
        out = out_dir / f"{name}-{outtype}.gguf"
        partial = out.with_name(out.name + ".partial")
        start = time.monotonic()
        command = converter_command(model_dir, outtype, partial, name)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        # What tools.gguf_converter itself said: the qwen2 fallback, or why there is none.
        said = [line.split(":mini_qwen:", 1)[1] for line in result.stderr.splitlines() if ":mini_qwen:" in line]
        if result.returncode or not partial.is_file():
            partial.unlink(missing_ok=True)
            tail = "\n".join(result.stderr.strip().splitlines()[-12:])
            raise ConversionError(
                f"llama.cpp's converter could not convert {model_dir} to {outtype} (exit "
                f"{result.returncode}). {' '.join(said)}\nIts last lines:\n{tail}"
            )
        partial.replace(out)
        for line in said:
            logger.info("converter: %s", line)
        logger.info("Wrote %s (%.1f MiB) in %.1f s", out, out.stat().st_size / 2**20, time.monotonic() - start)
        written[outtype] = out
    return written


def write_modelfile(model_dir: Path, gguf: Path) -> Path:
    """An Ollama Modelfile next to ``gguf``: the file, our ChatML template, the stop tokens and sampling defaults
    of the checkpoint's ``generation_config.json``."""
    tokens = {t["id"]: t["content"] for t in json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]}
    generation_file = model_dir / "generation_config.json"
    generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
    eos = generation.get("eos_token_id") or json.loads((model_dir / "config.json").read_text())["eos_token_id"]
    lines = [f"FROM ./{gguf.name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""']
    lines += [f'PARAMETER stop "{tokens[i]}"' for i in (eos if isinstance(eos, list) else [eos])]
    lines += [f"PARAMETER {ollama} {generation[key]}" for key, ollama in OLLAMA_SAMPLING.items() if key in generation]
    modelfile = gguf.parent / "Modelfile"
    modelfile.write_text("\n".join(lines) + "\n")
    return modelfile


def how_to_run(model_dir: Path, files: dict[str, Path], gguf: Path, modelfile: Path, name: str) -> str:
    """The commands that run ``gguf`` (one of ``files``), for people: llama.cpp and Ollama."""
    # Imported here: it brings torch, which `--install_converter` (bash run.sh test, on every run) does without.
    from utils.generation import is_chat_checkpoint

    ollama_name = re.sub(r"[^a-z0-9_.-]+", "-", name.lower())
    chat = is_chat_checkpoint(str(model_dir))
    listing = "\n".join(f"  {path}  ({path.stat().st_size / 2**20:.1f} MiB)" for path in files.values())
    llama = f"llama-cli -m {gguf} -cnv" if chat else f"llama-cli -m {gguf} -no-cnv -p '李白是'"
    return (
        f"GGUF files:\n{listing}\n\n"
        f"llama.cpp (the file carries the chat template, eos and sampling defaults):\n  {llama}\n"
        f"  llama-server -m {gguf} --port 8080      # OpenAI-compatible API on http://127.0.0.1:8080/v1\n\n"
        f"Ollama ({modelfile}: FROM {gguf.name}, ChatML template, stop tokens, sampling defaults):\n"
        f"  ollama create {ollama_name} -f {modelfile}\n  ollama run {ollama_name}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", metavar="MODEL_DIR", help="Saved model folder to convert (e.g. results/dpo).")
    parser.add_argument(
        "--outtypes",
        nargs="+",
        choices=OUTTYPES,
        default=list(DEFAULT_OUTTYPES),
        help="GGUF weight types, one file each (q8_0: 8-bit, about half of f16).",
    )
    parser.add_argument("--output_dir", default=None, help="Where the files go (default: MODEL_DIR/gguf).")
    parser.add_argument("--name", default=None, help="File name stem and GGUF name (default: mini_qwen-<folder>).")
    parser.add_argument(
        "--install_converter",
        action="store_true",
        help=f"Fetch llama.cpp's converter into {converter_dir()} (once), then go on.",
    )
    args = parser.parse_args(argv)
    if not args.gguf and not args.install_converter:
        parser.error("give --gguf MODEL_DIR, or --install_converter")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.install_converter:
        logger.info("llama.cpp's converter: %s", install_converter())
    if args.gguf:
        model_dir, name = Path(args.gguf), args.name or default_name(Path(args.gguf))
        try:
            files = convert_to_gguf(model_dir, args.outtypes, args.output_dir, name)
        except (FileNotFoundError, ConversionError) as err:
            raise SystemExit(str(err)) from None
        chosen = files.get("q8_0") or next(iter(files.values()))
        print(how_to_run(model_dir, files, chosen, write_modelfile(model_dir, chosen), name))


if __name__ == "__main__":
    main()
