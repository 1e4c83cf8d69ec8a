"""Which SFT epoch should DPO start from? DPO from the checkpoint of each SFT epoch, scored on held-back pairs."""

from __future__ import annotations

from pathlib import Path

from experiments.chat_base import chat_base
from experiments.common import Scale, spread, train_dpo, verdict, write_report

TITLE = "sft_epochs"
QUESTION = (
    "Upstream found its 3-epoch SFT model over-fitted and started DPO from the 2-epoch checkpoint. Here: one SFT run "
    "that records the checkpoint ending each epoch, then DPO from each of them (`--sft_epoch`), several seeds "
    "each. Score: how often the model prefers the chosen reply on held-back preference pairs "
    "(length-normalised log-likelihood), before DPO (the SFT checkpoint) and after."
)
FULL_SIZE = (
    "```bash\nbash run.sh sft          # saves one checkpoint per epoch and records them\n"
    "for e in 1 2 3; do bash run.sh dpo --sft_epoch $e --output_dir results/dpo_from_epoch_$e; done\n"
    "cat results/dpo_from_epoch_*/preference_report.md\n```"
)


def run(out: Path, scale: Scale) -> Path:
    sft = chat_base(out / "base", scale)
    epochs = [str(e) for e in range(1, scale.sft_epochs + 1)]
    reports = {
        (e, s): train_dpo(out / f"dpo_epoch{e}-s{s}", sft, s, scale, "--sft_epoch", e)
        for e in epochs
        for s in scale.seeds
    }
    after = {f"epoch {e}": [reports[e, s]["dpo_prefers_chosen"] for s in scale.seeds] for e in epochs}
    pairs = reports[epochs[0], scale.seeds[0]]["heldout_pairs"]
    table = [
        [
            f"epoch {e}",
            spread([reports[e, s]["reference_prefers_chosen"] for s in scale.seeds]),
            spread(after[f"epoch {e}"]),
            spread([reports[e, s]["dpo_mean_reward_margin"] for s in scale.seeds]),
        ]
        for e in epochs
    ]
    conclusion = (
        "Held-back preference accuracy after DPO: "
        + verdict(after, False, "preference accuracy after DPO", pairs)
        + f"\n\nEach accuracy is over {pairs} held-back pairs (a step of {1 / pairs:.0%}), and the pairs held back "
        "change with the seed, so small differences are expected noise."
    )
    return write_report(
        out,
        TITLE,
        QUESTION,
        table,
        ["DPO started from", "SFT prefers chosen", "DPO prefers chosen", "DPO reward margin"],
        None,
        None,
        conclusion,
        FULL_SIZE,
    )
