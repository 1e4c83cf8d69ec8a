"""Does English help Chinese? Chinese-only PT vs Chinese + English PT, measured on held-back Chinese text."""

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

TITLE = "bilingual"
QUESTION = (
    "Upstream pretrained on Chinese and English together. Does the English half help (or cost) Chinese at the "
    "same compute? Two PT runs with the same model, steps and batch: Chinese documents only, and Chinese + "
    f"English. Both are scored on held-back Chinese documents ({HELD_OUT_DOMAIN}/chinese, never trained on)."
)
FULL_SIZE = (
    "```bash\nbash run.sh pt --languages chinese --max_steps 20000 --output_dir results/bilingual/chinese\n"
    "bash run.sh pt --max_steps 20000 --output_dir results/bilingual/chinese+english\n"
    "bash run.sh eval --model_name_or_path results/bilingual/* --prompts mini_data/eval_prompts.jsonl \\\n"
    "  --eval_data data/pt/news_media/chinese --output_dir results/bilingual/eval\n```\n\n"
    "Hold the evaluation domain out of training (`--domains` without it) for a clean measurement."
)
VARIANTS = {"chinese": ["--languages", "chinese"], "chinese+english": []}


def run(out: Path, scale: Scale) -> Path:
    runs = {
        (name, seed): train_pt(out / f"{name}-s{seed}", seed, scale, *flags)
        for name, flags in VARIANTS.items()
        for seed in scale.seeds
    }
    scores = score(list(runs.values()), out, scale, eval_data=f"mini_data/pt/{HELD_OUT_DOMAIN}/chinese")
    ppl = {name: [scores["metrics"][f"{name}-s{s}"]["perplexity"] for s in scale.seeds] for name in VARIANTS}
    bpb = {name: [scores["metrics"][f"{name}-s{s}"]["bits_per_byte"] for s in scale.seeds] for name in VARIANTS}
    table = [
        [name, spread([final_loss(runs[name, s]) for s in scale.seeds]), spread(ppl[name]), spread(bpb[name])]
        for name in VARIANTS
    ]
    conclusion = (
        "Held-out Chinese perplexity: " + verdict(ppl, True, "held-out Chinese perplexity") + "\n\n"
        "At equal steps the Chinese + English run sees about half as many Chinese tokens, so a lower Chinese "
        "perplexity there would mean English transfers; a higher one is the price of sharing the budget. Training "
        "losses mix languages and are not comparable between the two variants."
    )
    first = {f"{name}-s{scale.seeds[0]}": scores["answers"][f"{name}-s{scale.seeds[0]}"] for name in VARIANTS}
    return write_report(
        out,
        TITLE,
        QUESTION,
        table,
        ["training data", "final train loss", "held-out Chinese perplexity", "bits per byte"],
        curves(list(runs.values()), out),
        first,
        conclusion,
        FULL_SIZE,
    )
