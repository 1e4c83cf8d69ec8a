"""Which DPO learning rate? A small sweep from the same SFT model, each scored on held-back pairs."""

from __future__ import annotations

from pathlib import Path

from experiments.chat_base import chat_base
from experiments.common import Scale, curves, final_loss, spread, train_dpo, verdict, write_report

TITLE = "dpo_lr"
QUESTION = (
    "Upstream's DPO attempts failed until it used a tiny learning rate (5e-7). Here: DPO from the same SFT model with "
    "learning rates a factor of 10 apart around the demo recipe's, several seeds each, scored on held-back "
    "preference pairs."
)
FULL_SIZE = (
    "```bash\nfor lr in 5e-8 5e-7 5e-6; do\n"
    "  bash run.sh dpo --learning_rate $lr --output_dir results/dpo_lr/$lr\ndone\n"
    "cat results/dpo_lr/*/preference_report.md\n```"
)
RATES = ("1e-5", "1e-4", "1e-3")


def run(out: Path, scale: Scale) -> Path:
    sft = chat_base(out / "base", scale)
    reports = {
        (lr, s): train_dpo(out / f"lr_{lr}-s{s}", sft, s, scale, "--learning_rate", lr)
        for lr in RATES
        for s in scale.seeds
    }
    after = {f"lr {lr}": [reports[lr, s]["dpo_prefers_chosen"] for s in scale.seeds] for lr in RATES}
    table = [
        [
            lr,
            spread([reports[lr, s]["reference_prefers_chosen"] for s in scale.seeds]),
            spread(after[f"lr {lr}"]),
            spread([reports[lr, s]["dpo_mean_reward_margin"] for s in scale.seeds]),
            spread([final_loss(out / f"lr_{lr}-s{s}") for s in scale.seeds]),
        ]
        for lr in RATES
    ]
    conclusion = (
        "Held-back preference accuracy: "
        + verdict(after, False, "preference accuracy after DPO", reports[RATES[0], scale.seeds[0]]["heldout_pairs"])
        + "\n\n"
        "A rate too high drives the training loss to zero (it memorises the training pairs) without helping the "
        "held-back ones; too low leaves the policy where SFT left it (accuracy equal to the SFT column)."
    )
    figure = curves([out / f"lr_{lr}-s{scale.seeds[0]}" for lr in RATES], out)
    return write_report(
        out,
        TITLE,
        QUESTION,
        table,
        ["learning rate", "SFT prefers chosen", "DPO prefers chosen", "DPO reward margin", "final DPO loss"],
        figure,
        None,
        conclusion,
        FULL_SIZE,
    )
