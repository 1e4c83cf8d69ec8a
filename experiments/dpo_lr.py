"""Which DPO learning rate, from which SFT epoch? Upstream's four DPO runs, each scored against the SFT model it
started from on held-back preference pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from demo.common import ROOT
from experiments.common import (
    Report,
    Scale,
    by_seed,
    chat_base,
    curves,
    sentence,
    sft_budget,
    train_dpo,
    variant_table,
)
from utils.plotting import find_log_history
from utils.stats import Comparison, compare

TITLE = "dpo_lr"
DEMO_RECIPE, FULL_RECIPE = ROOT / "configs" / "dpo_demo.yaml", ROOT / "configs" / "dpo_full.yaml"
# Upstream's DPO runs in order: (its SFT epoch, learning rate as a multiple of the full recipe's 5e-7). Three
# attempts, then the final run: 1e-6 and 5e-7 on the epoch-3 model, 1e-7 and 5e-7 on epoch 2.
UPSTREAM_RUNS = ((3, 2.0), (3, 1.0), (2, 0.2), (2, 1.0))
QUESTION = (
    "Upstream ran DPO four times: lr 1e-6 and then 5e-7 on its epoch-3 SFT model, then 1e-7 and finally 5e-7 on the "
    "epoch-2 one. Does DPO improve the model it starts from, at which rate, from which epoch?"
)
UPSTREAM = (
    "Upstream's attempts, each 3 epochs at a batch of 384 pairs: lr 1e-6 on the epoch-3 SFT model, whose loss fell "
    "in steps at each epoch (it read this as over-fitting); 5e-7 on epoch 3, still stepped, still somewhat "
    "over-fitted; 1e-7 on epoch 2, not over-fitted but the loss fell only 0.03, too little to learn. Its final run "
    "used 5e-7 and changed the start to the epoch-2 checkpoint: the loss was faintly stepped, slightly over-fitted. "
    "So the final run changed two things at once (rate and starting epoch). Judged by their answers, the final "
    "model at each of its epochs and the failed runs were no better than the SFT model: upstream concluded that DPO "
    "did not improve its model, and rather lowered its quality."
)


def rates() -> tuple[float, float]:
    """The learning rates of the demo and full DPO recipes, read from the recipes themselves."""
    return tuple(float(yaml.safe_load(path.read_text())["learning_rate"]) for path in (DEMO_RECIPE, FULL_RECIPE))


@dataclass(frozen=True)
class DPORun:
    """One DPO run of the study: its SFT start and rate here, and the upstream run it stands for."""

    name: str
    epoch: int
    rate: float
    upstream_epoch: int
    upstream_rate: float

    @property
    def folder(self) -> str:
        return f"epoch{self.epoch}_lr{self.rate:g}"

    @property
    def upstream(self) -> str:
        return f"{self.upstream_rate:g} on epoch {self.upstream_epoch}"


def variants(scale: Scale) -> list[DPORun]:
    """Upstream's four runs at the same multiples of the demo recipe's rate, then its final run's rate unscaled."""
    demo, full = rates()
    stand_in = {3: scale.sft_checkpoints[-1], 2: scale.sft_checkpoints[-2]}  # upstream's epochs 3 and 2
    runs = []
    for upstream_epoch, factor in UPSTREAM_RUNS:
        epoch = stand_in[upstream_epoch]
        runs.append(DPORun(f"lr ×{factor:g}, SFT epoch {epoch}", epoch, demo * factor, upstream_epoch, full * factor))
    return [*runs, DPORun(f"lr {full:g} (unscaled), SFT epoch {stand_in[2]}", stand_in[2], full, 2, full)]


def start(epoch: int) -> str:
    return f"SFT epoch {epoch}"


def plan(scale: Scale) -> list[Comparison]:
    """Each DPO model against the SFT checkpoint it started from, paired by seed (the same held-back pairs)."""
    return [Comparison(start(run.epoch), run.name, "accuracy", paired=True) for run in variants(scale)]


def design(scale: Scale) -> str:
    demo, full = rates()
    grid = ", ".join(f"×{factor:g}" for factor in sorted({f for _, f in UPSTREAM_RUNS}, reverse=True))
    runs = (
        "Every seed trains its own PT model and SFT run (a checkpoint per epoch), then repeats upstream's four DPO "
        f"runs from its checkpoints with the same seed. {sft_budget(scale)}"
    )
    rates_text = (
        f"**The grid is upstream's, scaled**: its rates are {grid} the full recipe's {full:g} "
        f"(`configs/dpo_full.yaml`); here they are the same multiples of the demo recipe's {demo:g} "
        f"(`configs/dpo_demo.yaml`), {demo / full:g} times larger, because the demo model is tiny, barely trained "
        f"and runs {scale.dpo_steps} DPO steps, where upstream's 1B model ran 462. A fifth run uses the full "
        f"recipe's {full:g} as it is, to show what the unscaled rate does to the demo model (its held-back reward "
        "margin)."
    )
    score = (
        "Score: how often the model prefers the chosen reply of the held-back pairs (length-normalised likelihood), "
        "for each DPO model and for the SFT checkpoint it started from, on the same pairs; a paired t-test over "
        "seeds says whether DPO changed it."
    )
    return "\n\n".join([runs, rates_text, score])


def full_size(scale: Scale) -> str:
    commands = "\n".join(
        f"  bash run.sh dpo --model_name_or_path results/sft-s$seed --sft_epoch {run.upstream_epoch} "
        f"--learning_rate {run.upstream_rate:g} --seed $seed "
        f"--output_dir results/dpo_lr/epoch{run.upstream_epoch}_lr{run.upstream_rate:g}-s$seed"
        for run in variants(scale)[: len(UPSTREAM_RUNS)]
    )
    return (
        "Upstream's four runs with the full recipe (3 epochs each), the same multiples of `configs/dpo_full.yaml`'s "
        "rate as above, from an SFT run of 3 epochs per seed:\n\n"
        "```bash\nfor seed in 1 2 3 4; do\n"
        "  bash run.sh sft --seed $seed --output_dir results/sft-s$seed    # a checkpoint per epoch, recorded\n"
        f"{commands}\ndone\ncat results/dpo_lr/*/preference_report.md\n```"
    )


def run(out: Path, scale: Scale) -> Report:
    grid = variants(scale)
    values = {}
    for seed in scale.seeds:
        sft = chat_base(out / f"base-s{seed}", seed, scale)
        for dpo in grid:
            folder = out / f"{dpo.folder}-s{seed}"
            flags = ["--sft_epoch", str(dpo.epoch), "--learning_rate", f"{dpo.rate:g}"]
            report = train_dpo(folder, sft, seed, scale, *flags)
            last_log = [h for h in find_log_history(folder) if "rewards/accuracies" in h][-1]
            values[dpo.name, seed] = {
                "accuracy": report["dpo_prefers_chosen"],
                "sft_accuracy": report["reference_prefers_chosen"],
                "margin": report["dpo_mean_reward_margin"],
                "train_accuracy": last_log["rewards/accuracies"],
                "train_loss": last_log["loss"],
            }
            values[start(dpo.epoch), seed] = {"accuracy": report["reference_prefers_chosen"]}
    names = [dpo.name for dpo in grid]
    starts = sorted({start(dpo.epoch) for dpo in grid})
    scores = {"accuracy": by_seed(values, [*starts, *names], scale.seeds, "accuracy")}
    results = compare(plan(scale), scores)
    columns = {
        "SFT prefers chosen": ("sft_accuracy", 3),
        "DPO prefers chosen": ("accuracy", 3),
        "held-back reward margin": ("margin", 3),
        "train reward accuracy (last log)": ("train_accuracy", 3),
        "train loss (last log)": ("train_loss", 3),
    }
    table = variant_table(values, names, scale.seeds, columns)
    for row, dpo in zip(table, grid):
        unscaled = " (its final run, rate not scaled)" if dpo.rate == dpo.upstream_rate else ""
        row[1:1] = [dpo.upstream + unscaled, f"{dpo.rate:g}"]
    figure = curves({dpo.name: [out / f"{dpo.folder}-s{s}" for s in scale.seeds] for dpo in grid}, out)
    return Report(
        title=TITLE,
        question=QUESTION,
        design=design(scale),
        header=["run", "upstream's run", "learning rate here", *columns],
        table=table,
        results=results,
        conclusion=conclusion(results),
        upstream=UPSTREAM,
        full_size=full_size(scale),
        figure=figure,
        scores=scores,
    )


def conclusion(results) -> str:
    better = [r for r in results if r.shown and r.difference > 0]
    worse = [r for r in results if r.shown and r.difference < 0]
    lines = [f"- {sentence(r)}" for r in results]
    if not better and not worse:
        verdict = (
            "No run shows DPO changing how often the model prefers the chosen reply of held-back pairs, at any rate "
            "or from either epoch. That agrees with upstream's verdict that DPO did not improve its model (upstream "
            "judged answers, not this measure)."
        )
    else:
        verdict = (
            f"DPO raised held-back preference accuracy over its SFT start in {len(better)} of {len(results)} runs "
            f"and lowered it in {len(worse)}. On the demo pairs the chosen reply is visibly better (right against "
            "wrong, complete against cut off), an easier test than upstream's, which judged answers and found that "
            "DPO did not improve its model."
        )
    notes = (
        "A training reward accuracy far above the held-back accuracy is the over-fitting upstream saw in its loss: "
        "the pairs trained on are learnt, the held-back ones are not."
    )
    return "\n\n".join([verdict, "\n".join(lines), notes])
