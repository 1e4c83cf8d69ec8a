"""What a run's processes do together around training: run a step on the main process only (its failure ending
every process), free the memory training held, and finish together."""

from __future__ import annotations

import torch

from utils.devices import release_cached_memory


def release_training_memory(trainer) -> None:
    """After training: drop the optimizer and scheduler state (and the launcher's references to them), so that what
    runs next (a report that loads models) has the memory they held. The trained model itself stays."""
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.accelerator.free_memory()
    release_cached_memory()


def run_on_main(trainer, what: str, fn):
    """``fn()`` on the main process only; every process returns together, and a failure ends every process.

    The other processes wait in one collective for the main one's outcome: without it, an exception on the main
    process (after training, in a report) leaves them waiting forever in the next barrier. Returns ``fn()``'s
    result on the main process, None on the others."""
    result, error = None, None
    if trainer.is_world_process_zero():
        try:
            result = fn()
        except Exception as err:  # re-raised below, after every process has been told
            error = err
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        failed = torch.tensor([float(error is not None)], device=trainer.args.device)
        torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
        if failed.item() and error is None:
            raise RuntimeError(f"{what} failed on the main process (its log has the error)")
    if error is not None:
        raise error
    return result


def finish(trainer) -> None:
    """Let every process reach the end before any exits, then close the process group.

    Without this a non-main process can exit while the main one still writes the final files, and
    the collective threads it leaves behind abort at interpreter exit (seen with ZeRO-3 on CPU).
    """
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
