"""Which SFT epoch? Each epoch's checkpoint judged by upstream's own measure (do its answers repeat, do they end?)
beside how often it prefers the chosen reply of held-back pairs before and after DPO."""

from __future__ import annotations

from pathlib import Path

from experiments.common import (
    CHAT_PROMPTS,
    Report,
    Scale,
    by_seed,
    chat_base,
    greedy_answers,
    sentence,
    sft_budget,
    train_dpo,
    variant_table,
)
from mini_qwen_dpo import epoch_checkpoint
from utils.stats import Comparison, compare

TITLE = "sft_epochs"
QUESTION = (
    "Upstream trained SFT for 3 epochs, judged each epoch's checkpoint by its answers and started its final DPO from "
    "the epoch-2 one. Which epoch is best, by upstream's measure and by held-back preference pairs?"
)
UPSTREAM = (
    "Upstream judged its SFT checkpoints by their greedy answers. After epoch 1 they still repeated, usually until "
    "the length limit; after epoch 2 repetition eased and answers ended with the end token; after epoch 3 repetition "
    "was still there (one answer looped to the limit). Its SFT loss dropped slightly at the start of epochs 2 and 3, "
    "which it read as the model having memorised the data in the first epoch. It recommended the epoch-2 checkpoint "
    "and started its final DPO from it. One run, judged from a handful of answers."
)
FULL_SIZE = (
    "```bash\nfor seed in 1 2 3 4; do\n"
    "  bash run.sh sft --seed $seed --output_dir results/sft-s$seed    # a checkpoint per epoch, recorded\n"
    "  bash run.sh eval --model_name_or_path results/sft-s$seed/checkpoint-* --decoding greedy \\\n"
    "    --prompts mini_data/eval_prompts.jsonl --output_dir results/sft_epochs/eval-s$seed    # repetition, EOS\n"
    "  for e in 1 2 3; do\n"
    "    bash run.sh dpo --model_name_or_path results/sft-s$seed --sft_epoch $e --seed $seed \\\n"
    "      --output_dir results/sft_epochs/dpo_epoch$e-s$seed\n"
    "  done\ndone\ncat results/sft_epochs/dpo_epoch*/preference_report.md\n```"
)
METRIC_KEYS = ("repetition", "ended", "dpo_accuracy")


def epochs(scale: Scale) -> list[str]:
    return [f"epoch {e}" for e in scale.sft_checkpoints]


def design(scale: Scale) -> str:
    return (
        f"Every seed trains its own PT model and SFT run, which saves the checkpoint ending each epoch. "
        f"{sft_budget(scale)} Each of these checkpoints answers the chat prompts of `{CHAT_PROMPTS}` greedily: "
        "upstream's measure is how much the answers repeat (repeated 4-gram share) and whether they end (share of "
        "answers that stop at the end-of-turn token before the length limit). Then DPO starts from each checkpoint "
        "(`--sft_epoch`) with the same seed, and both the checkpoint and the DPO model are scored on the held-back "
        "preference pairs (how often the chosen reply is more likely, length-normalised; the pairs held back depend "
        "on the seed, so all checkpoints of one seed share them). Each checkpoint is compared with the one before "
        "with a paired t-test over seeds: each seed gives every checkpoint's score from one SFT run."
    )


def plan(scale: Scale) -> list[Comparison]:
    """Each epoch against the one before, paired by seed, on each metric."""
    names = epochs(scale)
    return [Comparison(a, b, metric, paired=True) for metric in METRIC_KEYS for a, b in zip(names, names[1:])]


def run(out: Path, scale: Scale) -> Report:
    values, answers = {}, {}
    for seed in scale.seeds:
        sft = chat_base(out / f"base-s{seed}", seed, scale)
        checkpoints = [Path(epoch_checkpoint(str(sft), e)) for e in scale.sft_checkpoints]
        chat = greedy_answers(checkpoints, out / f"eval-s{seed}", scale, prompts=CHAT_PROMPTS)
        for e, name, checkpoint in zip(scale.sft_checkpoints, epochs(scale), checkpoints):
            report = train_dpo(out / f"dpo_epoch{e}-s{seed}", sft, seed, scale, "--sft_epoch", str(e))
            values[name, seed] = {
                **chat[checkpoint],
                "sft_accuracy": report["reference_prefers_chosen"],
                "dpo_accuracy": report["dpo_prefers_chosen"],
                "margin": report["dpo_mean_reward_margin"],
                "heldout_pairs": report["heldout_pairs"],
            }
            if seed == scale.seeds[0]:
                answers[name] = chat[checkpoint]["answers"]
    names = epochs(scale)
    scores = {metric: by_seed(values, names, scale.seeds, metric) for metric in METRIC_KEYS}
    results = compare(plan(scale), scores)
    by_step = []
    for a, b in zip(names, names[1:]):
        lines = [f"- {sentence(r)}" for r in results if (r.comparison.baseline, r.comparison.variant) == (a, b)]
        by_step += [f"{b} against {a}:", "", *lines, ""]
    columns = {
        "repeated 4-gram share": ("repetition", 3),
        "answers that end": ("ended", 3),
        "answer length (tokens)": ("answer_length", 1),
        "SFT prefers chosen": ("sft_accuracy", 3),
        "DPO prefers chosen": ("dpo_accuracy", 3),
        "DPO reward margin": ("margin", 3),
    }
    pairs = values[names[0], scale.seeds[0]]["heldout_pairs"]
    pairs_note = (
        f"Preference accuracies are shares of {pairs} held-back pairs (steps of {1 / pairs:.3f}), and a model this "
        "small often prefers the rejected reply: read them with their intervals."
    )
    return Report(
        title=TITLE,
        question=QUESTION,
        design=design(scale),
        header=["SFT checkpoint", *columns],
        table=variant_table(values, names, scale.seeds, columns),
        results=results,
        conclusion="\n".join([*by_step, pairs_note]),
        upstream=UPSTREAM,
        full_size=FULL_SIZE,
        answers=answers,
        scores=scores,
    )
