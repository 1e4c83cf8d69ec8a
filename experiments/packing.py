"""Does document packing cause repetition? Isolated packing vs cross-document packing vs one document per row."""

from __future__ import annotations

from pathlib import Path

from experiments.common import (
    HELD_OUT_DOMAIN,
    LANGUAGES,
    PT_COLUMNS,
    Report,
    Scale,
    by_seed,
    curves,
    differences_shown,
    pt_scores,
    sentence,
    train_pt,
    variant_table,
)
from utils.stats import Comparison, compare

TITLE = "packing"
QUESTION = (
    "Upstream packed documents into 1,024-token blocks that attend across document boundaries, and its models "
    "repeat themselves. Is packing to blame?"
)
DESIGN = (
    "Three PT layouts, same model, steps, batch and data: **isolated** (this repository: packed, each document "
    "attends only to itself), **cross_document** (upstream's packing) and **one_per_row** (one document per row, cut "
    "and padded: upstream's conventional run). Each layout is trained with every seed. Scores: perplexity on the "
    f"held-out domain ({HELD_OUT_DOMAIN}, never trained on), its Chinese and English documents scored separately "
    "and each document on its own, as text is met at inference; and the repetition of greedy continuations of raw "
    "prompts (half Chinese, half English). Upstream's question is cross_document against one_per_row; isolated "
    "against the other two is this repository's choice."
)
UPSTREAM = (
    "Upstream's full model repeated itself. It suspected packing, trained pt1 (one document per row) and pt2 "
    "(packed) on accommodation_catering_hotel/chinese, found that both repeat, and concluded that packing is not "
    "the cause. Base models Qwen2.5-0.5B and 1.5B repeat too, so it attributed repetition to the pretraining task "
    "itself, which SFT relieves. One run per layout, judged from answers."
)
FULL_SIZE = (
    "The same three layouts with the full recipe, e.g. for a fixed budget of steps, with several seeds:\n\n"
    "```bash\nfor seed in 1 2 3 4; do for layout in isolated cross_document one_per_row; do\n"
    "  bash run.sh pt --layout $layout --seed $seed --max_steps 20000 --output_dir results/packing/$layout-s$seed\n"
    "done; done\n"
    "bash run.sh eval --model_name_or_path results/packing/* --prompts mini_data/eval_prompts.jsonl \\\n"
    "  --eval_data data/pt/news_media/chinese --decoding greedy --output_dir results/packing/eval_chinese\n```\n\n"
    "and the same eval with `--eval_data data/pt/news_media/english`; hold that domain out of training "
    "(`--domains` without it)."
)
LAYOUTS = ("isolated", "cross_document", "one_per_row")
PAIRS = (("one_per_row", "cross_document"), ("cross_document", "isolated"), ("one_per_row", "isolated"))
PLAN = [Comparison(base, variant, metric) for metric in (*LANGUAGES, "repetition") for base, variant in PAIRS]
UPSTREAMS_QUESTION = Comparison("one_per_row", "cross_document", "repetition")


def plan(scale: Scale) -> list[Comparison]:
    """The study's comparisons (the same at every scale)."""
    return PLAN


def run(out: Path, scale: Scale) -> Report:
    runs = {}
    for layout in LAYOUTS:
        for seed in scale.seeds:
            runs[layout, seed] = train_pt(out / f"{layout}-s{seed}", seed, scale, "--layout", layout)
    values = pt_scores(runs, out, scale)
    scores = {metric: by_seed(values, LAYOUTS, scale.seeds, metric) for metric in (*LANGUAGES, "repetition")}
    results = compare(plan(scale), scores)
    repetition = next(r for r in results if r.comparison == UPSTREAMS_QUESTION)
    if repetition.shown:
        more = "more" if repetition.difference > 0 else "less"
        answer = f"cross-document packing repeats **{more}** than one document per row. {sentence(repetition)}."
    else:
        answer = (
            f"these runs do not show packing changing repetition. {sentence(repetition)}. Upstream reached the same "
            "answer from pt1 and pt2, which both repeated."
        )
    notes = (
        "The repetition share is over the tokens generated: an answer that stops early (at EOS) has less room to "
        "repeat, so read it with the share of answers that end. The training losses are not comparable across "
        "layouts (cross_document also predicts across document boundaries; one_per_row trains on fewer real "
        "tokens per step), and a model this small repeats under greedy decoding whatever the layout."
    )
    columns = {"final train loss": ("final_loss", 3), **PT_COLUMNS}
    columns.update({"repeated 4-gram share": ("repetition", 3), "answers that end": ("ended", 3)})
    return Report(
        title=TITLE,
        question=QUESTION,
        design=DESIGN,
        header=["layout", *columns],
        table=variant_table(values, LAYOUTS, scale.seeds, columns),
        results=results,
        conclusion="\n\n".join(
            [
                f"Upstream's question, cross-document packing against one document per row: {answer}",
                differences_shown(results),
                notes,
            ]
        ),
        upstream=UPSTREAM,
        full_size=FULL_SIZE,
        figure=curves({layout: [runs[layout, s] for s in scale.seeds] for layout in LAYOUTS}, out),
        answers={layout: values[layout, scale.seeds[0]]["answers"] for layout in LAYOUTS},
        scores=scores,
    )
