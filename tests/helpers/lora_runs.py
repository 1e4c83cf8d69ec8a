"""LoRA runs of the real stage mains on the tiny shape, shared by the adapter, merge and interop tests.

Loaded with ``pytest_plugins``, so the session trains them once: a tiny PT checkpoint, SFT with adapters from it
(checkpoints at steps 3 and 6, then the merged model), DPO with adapters from the merged SFT model.
PYTEST_DONT_REWRITE: test modules import it before ``pytest_plugins`` registers it (and it holds no asserts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.utils.train.test_fault_tolerance import DPO, PT, SFT, dpo_argv, pt_argv, run, sft_argv

# Rank 4 on every projection; no dropout, so that two forwards of the same model agree exactly.
LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"]


@pytest.fixture(scope="session")
def lora_runs(tmp_path_factory, small_tokenizer_dir) -> dict:
    """``{"pt", "sft", "dpo": folders, "sft_trainer", "dpo_trainer": the trainers main() returned}``."""
    tmp: Path = tmp_path_factory.mktemp("lora")
    run(PT, pt_argv(tmp, small_tokenizer_dir, steps="6"))
    # A high learning rate, so that six steps move every adapter far from its initial value.
    sft_extra = ["--save_strategy", "steps", "--save_steps", "3", "--learning_rate", "1e-2"]
    sft = run(SFT, sft_argv(tmp, tmp / "pt", steps="6") + LORA + sft_extra)
    dpo = run(DPO, dpo_argv(tmp, tmp / "sft", steps="3") + LORA + ["--learning_rate", "1e-2"])
    return {"pt": tmp / "pt", "sft": tmp / "sft", "dpo": tmp / "dpo", "sft_trainer": sft, "dpo_trainer": dpo}
