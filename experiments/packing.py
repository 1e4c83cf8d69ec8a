"""Does document packing cause repetition? Isolated packing vs cross-document packing vs one document per row."""

from __future__ import annotations

from pathlib import Path

from experiments.common import (
    HELD_OUT_DOMAIN,
    Scale,
    curves,
    final_loss,
    score,
    spread,
    train_pt,
    verdict,
    write_report,
)

TITLE = "packing"
QUESTION = (
    "Upstream packed documents into 1,024-token blocks that attend across document boundaries, and its models "
    "repeat themselves. Is packing to blame? Three PT layouts, same model, steps and batch: **isolated** (this "
    "repo: packed, each document attends only to itself), **cross_document** (upstream's packing) and "
    "**one_per_row** (one document per row, cut and padded: upstream's conventional run). Scored on held-out "
    f"documents ({HELD_OUT_DOMAIN}, never trained on) and on greedy continuations of raw prompts."
)
FULL_SIZE = (
    "Same three layouts with the full recipe, e.g. on one GPU for a fixed budget of steps:\n\n"
    "```bash\nfor layout in isolated cross_document one_per_row; do\n"
    "  bash run.sh pt --layout $layout --max_steps 20000 --output_dir results/packing/$layout\ndone\n"
    "bash run.sh eval --model_name_or_path results/packing/* --prompts mini_data/eval_prompts.jsonl \\\n"
    "  --eval_data data/pt/news_media --decoding greedy --output_dir results/packing/eval\n```"
)
LAYOUTS = ("isolated", "cross_document", "one_per_row")


def run(out: Path, scale: Scale) -> Path:
    runs = {
        (layout, seed): train_pt(out / f"{layout}-s{seed}", seed, scale, "--layout", layout)
        for layout in LAYOUTS
        for seed in scale.seeds
    }
    scores = score(list(runs.values()), out, scale, eval_data=f"mini_data/pt/{HELD_OUT_DOMAIN}")
    m = scores["metrics"]
    per = {layout: [m[f"{layout}-s{s}"] for s in scale.seeds] for layout in LAYOUTS}
    table = [
        [
            layout,
            spread([final_loss(runs[layout, s]) for s in scale.seeds]),
            spread([x["perplexity"] for x in per[layout]]),
            spread([x["repeated_4gram_share"] for x in per[layout]]),
            spread([x["distinct_2"] for x in per[layout]]),
            spread([x["mean_new_tokens"] for x in per[layout]]),
        ]
        for layout in LAYOUTS
    ]
    conclusion = "\n\n".join(
        [
            "Held-out perplexity: "
            + verdict({k: [x["perplexity"] for x in v] for k, v in per.items()}, True, "held-out perplexity"),
            "Repetition of greedy answers: "
            + verdict(
                {k: [x["repeated_4gram_share"] for x in v] for k, v in per.items()}, True, "repeated 4-gram share"
            ),
            "Held-out documents are scored each on its own, as text is met at inference. The repetition share is over "
            "the tokens generated: an answer that stops early (at EOS) has less room to repeat, so read it with the "
            "answer length. The training losses are not comparable across layouts (cross_document also predicts "
            "across document boundaries; one_per_row sees fewer tokens per step), and a small model repeats under "
            "greedy decoding whatever the layout.",
        ]
    )
    first = {f"{layout}-s{scale.seeds[0]}": scores["answers"][f"{layout}-s{scale.seeds[0]}"] for layout in LAYOUTS}
    return write_report(
        out,
        TITLE,
        QUESTION,
        table,
        [
            "layout",
            "final train loss",
            "held-out perplexity",
            "repeated 4-gram share",
            "distinct-2",
            "answer length (tokens)",
        ],
        curves(list(runs.values()), out),
        first,
        conclusion,
        FULL_SIZE,
    )
