"""GGUF files of a saved model, for llama.cpp and Ollama, made by llama.cpp's own converter.

    python -m tools.export --gguf results/dpo        # results/dpo/gguf/mini_qwen-dpo-{f16,q8_0}.gguf + Modelfile
    python -m tools.export --gguf results/sft --outtypes f32 f16 --name my-model
    python -m tools.export --gguf results/dpo --overwrite               # replace the files of an earlier export
    python -m tools.export --install_converter       # only fetch the pinned converter (--gguf does it on first use)

The converter is llama.cpp's ``convert_hf_to_gguf.py``, pinned, fetched on first use and checked before every run
(``tools.gguf_converter``); it runs as a subprocess, one per output type, and needs ``requirements/export.txt``.
Then the commands to run the files in llama.cpp and Ollama are printed, and an Ollama ``Modelfile`` is written
next to them.

Nothing is written until the folder has been checked (``plan_export``): the files and weight headers
(``tools.checkpoint_files``: a truncated or unreadable file is named), the config against the weights (a
``vocab_size`` that is not the embedding's row count would give a GGUF whose vocabulary and embedding disagree),
the tokenizer's ids against ``vocab_size``, and the end-of-turn ids against the tokenizer's special tokens (the
Modelfile's stop strings). ``--name`` is a file name, not a path; files that exist are replaced only with
``--overwrite``. Every file is written under a temporary name and renamed once all of them are complete: a failed
or interrupted export leaves the folder as it was.

What a GGUF keeps: the weights (f16 and q8_0 move logits by about 0.002 and 0.06-0.09 on small trained models,
greedy ids unchanged), the tokenizer (llama.cpp gives transformers' ids, except on text that is not NFC-normalised,
as for every Qwen2 GGUF), eos, the chat template and the sampling defaults (``general.sampling.*``). Loaded back
into transformers (``from_pretrained(folder, gguf_file=...)``) the vocabulary is padded to ``vocab_size`` and the
generation config is not restored (the second eos, <|endoftext|>, and the sampling defaults).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tools.checkpoint_files import (
    CheckpointError,
    CheckpointFiles,
    check_files,
    check_tokenizer_fits_config,
    check_weights_fit_config,
    special_token,
)
from tools.gguf_converter import (
    CONVERTER_SDIST,
    ConverterChanged,
    converter_command,
    converter_dir,
    install_converter,
    verify_converter,
)
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


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a file name stem: no folders, no hidden files


def default_name(model_dir: Path) -> str:
    return f"mini_qwen-{Path(model_dir).resolve().name}"


class ExportError(ValueError):
    """The export cannot be done as asked; the message names the argument or the file."""


class ConversionError(RuntimeError):
    """The converter refused the folder or failed; the message ends with its last lines."""


@dataclass
class ExportPlan:
    """What an export will write, decided (and checked) before anything is written."""

    files: CheckpointFiles
    out_dir: Path
    name: str
    ggufs: dict[str, Path]  # outtype -> final path
    modelfile: str  # the Modelfile's text

    @property
    def modelfile_path(self) -> Path:
        return self.out_dir / "Modelfile"

    @property
    def chosen(self) -> Path:
        """The file the Modelfile and the printed commands use: q8_0 if made (half of f16), else the first."""
        return self.ggufs.get("q8_0") or next(iter(self.ggufs.values()))


def modelfile_text(files: CheckpointFiles, gguf_name: str) -> str:
    """An Ollama Modelfile: the file, our ChatML template, the stop tokens and sampling defaults of the
    checkpoint's ``generation_config.json`` (eos from ``config.json`` when it has none)."""
    source = "generation_config.json" if files.generation_config.get("eos_token_id") is not None else "config.json"
    eos = (files.generation_config if source == "generation_config.json" else files.config).get("eos_token_id")
    stops = [special_token(files, token_id, source) for token_id in (eos if isinstance(eos, list) else [eos])]
    generation = files.generation_config
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += [f"PARAMETER {ollama} {generation[key]}" for key, ollama in OLLAMA_SAMPLING.items() if key in generation]
    return "\n".join(lines) + "\n"


def plan_export(
    model_dir: str | Path,
    outtypes=DEFAULT_OUTTYPES,
    out_dir: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> ExportPlan:
    """Check everything an export needs and decide its files, or raise ``CheckpointError`` / ``ExportError``
    naming the file or argument. Writes nothing."""
    model_dir = Path(model_dir)
    name = default_name(model_dir) if name is None else name
    if not NAME.fullmatch(name):
        raise ExportError(f"--name must be a file name (letters, digits, '.', '_', '-'; not a path), got {name!r}")
    if not outtypes or len(set(outtypes)) != len(outtypes) or not set(outtypes) <= set(OUTTYPES):
        raise ExportError(f"--outtypes must be different values of {', '.join(OUTTYPES)}, got {list(outtypes)}")
    files = check_files(model_dir)
    if files.tokenizer_json is None:
        raise CheckpointError(f"{files.path}: no tokenizer.json, which the converter reads")
    check_weights_fit_config(files)
    check_tokenizer_fits_config(files)
    out_dir = Path(out_dir) if out_dir else model_dir / "gguf"
    ggufs = {outtype: out_dir / f"{name}-{outtype}.gguf" for outtype in outtypes}
    plan = ExportPlan(files, out_dir, name, ggufs, "")
    plan.modelfile = modelfile_text(files, plan.chosen.name)
    existing = [path for path in (*ggufs.values(), plan.modelfile_path) if path.exists()]
    if existing and not overwrite:
        listed = ", ".join(str(path) for path in existing)
        raise ExportError(f"{listed} {'exists' if len(existing) == 1 else 'exist'}: pass --overwrite to replace")
    return plan


def export_gguf(plan: ExportPlan) -> None:
    """Write ``plan``'s GGUF files (llama.cpp's converter, one run per type) and its Modelfile. Each goes to a
    temporary name first; only when all are complete are they renamed. Whatever fails, or a Ctrl-C, removes what
    this export wrote (and ``out_dir`` if it made it), so the folder is left as it was."""
    verify_converter()
    if importlib.util.find_spec("sentencepiece") is None:  # the converter imports it for every Qwen2 model
        raise ConversionError("llama.cpp's converter needs sentencepiece: pip install -r requirements/export.txt")
    made_dir = not plan.out_dir.exists()
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    partial = {path: path.with_name(f".{path.name}.partial-{os.getpid()}") for path in plan.ggufs.values()}
    partial[plan.modelfile_path] = plan.modelfile_path.with_name(f".Modelfile.partial-{os.getpid()}")
    # `python -m tools.gguf_converter` from any working directory; the hub is never asked (a local folder).
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
    }
    try:
        for outtype, out in plan.ggufs.items():
            start = time.monotonic()
            command = converter_command(plan.files.path, outtype, partial[out], plan.name)
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            # What tools.gguf_converter itself said: the qwen2 fallback, or why there is none.
            said = [line.split(":mini_qwen:", 1)[1] for line in result.stderr.splitlines() if ":mini_qwen:" in line]
            if result.returncode or not partial[out].is_file():
                tail = "\n".join(result.stderr.strip().splitlines()[-12:])
                raise ConversionError(
                    f"llama.cpp's converter could not convert {plan.files.path} to {outtype} (exit "
                    f"{result.returncode}). {' '.join(said)}\nIts last lines:\n{tail}"
                )
            for line in said:
                logger.info("converter: %s", line)
            size = partial[out].stat().st_size / 2**20
            logger.info("Converted %s (%.1f MiB) in %.1f s", out.name, size, time.monotonic() - start)
        partial[plan.modelfile_path].write_text(plan.modelfile, encoding="utf-8")
        for final, temporary in partial.items():
            temporary.replace(final)
    finally:
        for temporary in partial.values():
            temporary.unlink(missing_ok=True)
        if made_dir and not any(plan.out_dir.iterdir()):
            plan.out_dir.rmdir()
    for path in plan.ggufs.values():
        logger.info("Wrote %s", path)


def how_to_run(plan: ExportPlan) -> str:
    """The commands that run the exported files, for people: llama.cpp and Ollama."""
    # Imported here: it brings torch, which `--install_converter` (bash run.sh test, on every run) does without.
    from utils.generation import is_chat_checkpoint

    gguf, modelfile = plan.chosen, plan.modelfile_path
    ollama_name = re.sub(r"[^a-z0-9_.-]+", "-", plan.name.lower())
    listing = "\n".join(f"  {path}  ({path.stat().st_size / 2**20:.1f} MiB)" for path in plan.ggufs.values())
    chat = is_chat_checkpoint(str(plan.files.path))
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
    parser.add_argument(
        "--name", default=None, help="File name stem and GGUF name, not a path (default: mini_qwen-<folder>)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace GGUF files and a Modelfile that exist.")
    parser.add_argument(
        "--install_converter",
        action="store_true",
        help=f"Fetch llama.cpp's converter into {converter_dir()} now (--gguf does it on first use).",
    )
    parser.add_argument(
        "--reinstall_converter", action="store_true", help="Fetch it again, replacing the installed copy."
    )
    args = parser.parse_args(argv)
    if not (args.gguf or args.install_converter or args.reinstall_converter):
        parser.error("give --gguf MODEL_DIR, or --install_converter")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        plan = plan_export(args.gguf, args.outtypes, args.output_dir, args.name, args.overwrite) if args.gguf else None
        fetch = args.install_converter or args.reinstall_converter or not converter_dir().exists()
        if fetch:  # on first use: a fresh clone's `bash run.sh export --gguf DIR` fetches it here
            logger.info("llama.cpp's converter (%s, sha256-checked): %s", CONVERTER_SDIST, converter_dir())
            install_converter(reinstall=args.reinstall_converter)
        if plan is not None:
            export_gguf(plan)
    except (CheckpointError, ExportError, ConversionError, ConverterChanged, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"error: could not download {CONVERTER_SDIST} with pip (exit {err.returncode})") from None
    if plan is not None:
        print(how_to_run(plan))


if __name__ == "__main__":
    main()
