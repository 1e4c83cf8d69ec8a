"""Run under torchrun with two CPU processes: ``run_on_main`` with a step that fails (or not) on the main process.
Each process prints what it got and exits 3 on an exception, 0 otherwise (tests/stages/test_distributed.py)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch.distributed as dist

from utils.train.processes import run_on_main


class MainProcessOnly:
    """What run_on_main reads of a trainer."""

    args = SimpleNamespace(device="cpu")

    def is_world_process_zero(self) -> bool:
        return dist.get_rank() == 0


def step(fail: bool):
    if fail:
        raise ValueError("the report broke")
    return "report written"


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        result = run_on_main(MainProcessOnly(), "the held-out report", lambda: step(sys.argv[1] == "fail"))
    except (ValueError, RuntimeError) as err:
        print(f"rank {dist.get_rank()}: {type(err).__name__}: {err}", flush=True)
        sys.exit(3)
    print(f"rank {dist.get_rank()}: {result}", flush=True)
    dist.destroy_process_group()
