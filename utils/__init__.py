"""The library the stages import. ``data/`` turns files into training examples, ``train/`` runs a stage around its
trainer, and the modules here build, load, generate with, measure and plot models. Programs live in ``tools/``."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The files that hold a checkpoint's weights: safetensors as saved here, the .bin names as other tools save them.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# What a checkpoint of a LoRA run holds instead (the adapters only: the frozen base stays in its own folder), and
# where the final save of such a run keeps them next to the merged weights (``utils.train.adapters``).
ADAPTER_WEIGHT_FILE = "adapter_model.safetensors"
ADAPTER_DIR = "adapter"
