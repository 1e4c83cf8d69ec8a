"""How does the loss scale with data? A quarter, half and all of the PT data, the same epochs, every seed's curve
in one figure against training tokens, and held-out perplexity per language at each doubling."""

from __future__ import annotations

from pathlib import Path

from experiments.common import (
    HELD_OUT_DOMAIN,
    LANGUAGES,
    METRICS,
    PT_COLUMNS,
    Report,
    Scale,
    by_seed,
    curves,
    differences_shown,
    effect,
    pt_scores,
    train_pt_epochs,
    trained_steps,
    variant_table,
)
from utils.stats import NO_DIFFERENCE, Comparison, compare

TITLE = "scaling"
QUESTION = (
    "Upstream read the scaling law from its loss curves: with more data, the curves fall more steeply and settle "
    "lower. Does held-out perplexity fall with each doubling of the data?"
)
DESIGN = (
    "The same model trained for the same number of epochs on the first quarter, half and all of the PT data "
    "(`--data_fraction`), so more data also means more optimizer steps. The first shares of the data are also its "
    "first domains, so a bigger share is also more varied text. The figure draws every seed of every share (the "
    "mean curve and the band of the seeds) against training tokens, the scaling-law view. Each doubling is tested "
    f"on the held-out domain ({HELD_OUT_DOMAIN}, never trained on), Chinese and English documents separately."
)
UPSTREAM = (
    "Upstream plotted the training loss of pt1, pt2, pt3 and its full run against steps (each step 1,152 sequences): "
    "the bigger the data, the steeper the curve, the higher its start and the lower the value where it settles; it "
    "took this as the scaling law at work. Those are training losses on different data, one run each."
)
FULL_SIZE = (
    "```bash\nfor seed in 1 2 3 4; do for f in 0.25 0.5 1.0; do\n"
    "  bash run.sh pt --data_fraction $f --seed $seed --output_dir results/scaling/data_$f-s$seed\ndone; done\n"
    "python -m tools.plot results/scaling/data_* --x tokens --output results/scaling/curves.png\n"
    "for lang in chinese english; do\n"
    "  bash run.sh eval --model_name_or_path results/scaling/data_* --prompts mini_data/eval_prompts.jsonl \\\n"
    "    --eval_data data/pt/news_media/$lang --output_dir results/scaling/eval_$lang\ndone\n```"
)
FRACTIONS = ("0.25", "0.5", "1.0")
DOUBLINGS = tuple(zip(FRACTIONS, FRACTIONS[1:]))
PLAN = [Comparison(small, large, lang) for lang in LANGUAGES for small, large in DOUBLINGS]


def plan(scale: Scale) -> list[Comparison]:
    """The study's comparisons (the same at every scale)."""
    return PLAN


def run(out: Path, scale: Scale) -> Report:
    runs = {}
    for fraction in FRACTIONS:
        share = str(float(fraction) * scale.data_scale)
        for seed in scale.seeds:
            folder = out / f"data_{fraction}-s{seed}"
            runs[fraction, seed] = train_pt_epochs(folder, seed, scale, "--data_fraction", share)
    values = pt_scores(runs, out, scale)
    for key, run_dir in runs.items():
        values[key]["steps"] = trained_steps(run_dir)
    scores = {lang: by_seed(values, FRACTIONS, scale.seeds, lang) for lang in LANGUAGES}
    results = compare(plan(scale), scores)
    steps = []
    for r in results:
        said = f"**{'falls' if r.difference < 0 else 'rises'}**" if r.shown else NO_DIFFERENCE
        steps.append(
            f"- {r.comparison.baseline} → {r.comparison.variant}, {METRICS[r.comparison.metric].label}: "
            f"{said} ({effect(r)})"
        )
    notes = (
        "More data here also means more steps and more domains, as in upstream's runs; on a demo corpus of about "
        "150K tokens this shows the method, not a law to extrapolate."
    )
    columns = {"steps": ("steps", 0), "final train loss": ("final_loss", 3), **PT_COLUMNS}
    return Report(
        title=TITLE,
        question=QUESTION,
        design=DESIGN,
        header=["share of data", *columns],
        table=variant_table(values, FRACTIONS, scale.seeds, columns),
        results=results,
        conclusion="\n\n".join(["Each doubling of the data:", "\n".join(steps), differences_shown(results), notes]),
        upstream=UPSTREAM,
        full_size=FULL_SIZE,
        figure=curves({f"data {f}": [runs[f, s] for s in scale.seeds] for f in FRACTIONS}, out, x="tokens"),
        scores=scores,
    )
