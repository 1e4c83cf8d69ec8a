"""The PT + SFT model the DPO studies start from: one demo PT run, then SFT with a checkpoint per epoch."""

from __future__ import annotations

from pathlib import Path

from experiments.common import Scale, train_pt, train_sft


def chat_base(out: Path, scale: Scale) -> Path:
    """The SFT output dir (its run_info.json records the checkpoint that ended each epoch)."""
    pt = train_pt(out / "pt", 1, scale)
    return train_sft(out / "sft", pt, 1, scale, "--save_strategy", "epoch")
