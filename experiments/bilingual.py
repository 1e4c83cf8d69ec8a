"""Does English help Chinese? Chinese-only PT against Chinese + English PT, in two designs: the same Chinese tokens
(upstream's: English added to the same Chinese data, so more steps) and the same steps (the same compute)."""

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
    train_pt_epochs,
    trained_steps,
    variant_table,
)
from utils.stats import Comparison, compare

TITLE = "bilingual"
QUESTION = (
    "Upstream added English documents to the same Chinese data and asked whether the English helps the model's "
    "Chinese. Does it, on held-out text?"
)
CHINESE, SAME_CHINESE, SAME_STEPS = "chinese", "chinese+english, same Chinese tokens", "chinese+english, same steps"
DESIGN = (
    f"Three PT variants, same model and batch. **{CHINESE}**: the Chinese documents only, for a number of epochs. "
    f"**{SAME_CHINESE}** (upstream's design): the same Chinese documents plus the English ones, for the same "
    "epochs, so every Chinese token is seen as often as in the Chinese-only run and the English comes on top "
    f"(more steps). It answers upstream's question: does adding English help Chinese? **{SAME_STEPS}**: both "
    "languages for the Chinese-only run's number of steps, so it sees about half the Chinese tokens. It answers "
    "another question: at a fixed compute budget, what does sharing it with English cost Chinese? Both bilingual "
    f"runs are compared with the Chinese-only one on the held-out domain ({HELD_OUT_DOMAIN}, never trained on), "
    "its Chinese and English documents scored separately. The English scores of the Chinese-only run measure a "
    "language it never saw: expect them far worse. Training losses mix languages and are not comparable."
)
UPSTREAM = (
    "Upstream trained pt3 (accommodation_catering_hotel Chinese + English, one document per row, one epoch) beside "
    "pt1 (the same Chinese only) and judged from greedy answers that the English data did help the model's Chinese, "
    '"although the effect is still poor"; both models fixated on quotation marks and punctuation. One run each, '
    "judged by eye, with the same Chinese tokens and more steps for pt3."
)
FULL_SIZE = (
    "Upstream's pt1 and pt3 on one domain, plus the same-steps run, four seeds each:\n\n"
    "```bash\nfor seed in 1 2 3 4; do\n"
    "  bash run.sh pt --domains accommodation_catering_hotel --languages chinese --seed $seed \\\n"
    "    --output_dir results/bilingual/zh-s$seed\n"
    "  bash run.sh pt --domains accommodation_catering_hotel --seed $seed \\\n"
    "    --output_dir results/bilingual/zh+en-s$seed\n"
    "  steps=$(grep -o '\"global_step\": [0-9]*' results/bilingual/zh-s$seed/trainer_state.json | grep -o '[0-9]*$')\n"
    "  bash run.sh pt --domains accommodation_catering_hotel --max_steps $steps --seed $seed \\\n"
    "    --output_dir results/bilingual/zh+en-same-steps-s$seed\n"
    "done\n"
    "for lang in chinese english; do\n"
    "  bash run.sh eval --model_name_or_path results/bilingual/* --prompts mini_data/eval_prompts.jsonl \\\n"
    "    --eval_data data/pt/news_media/$lang --output_dir results/bilingual/eval_$lang\ndone\n```"
)
VARIANTS = (CHINESE, SAME_CHINESE, SAME_STEPS)
FOLDERS = {CHINESE: "chinese", SAME_CHINESE: "chinese+english_same_chinese", SAME_STEPS: "chinese+english_same_steps"}
PLAN = [Comparison(CHINESE, variant, lang) for lang in LANGUAGES for variant in (SAME_CHINESE, SAME_STEPS)]


def plan(scale: Scale) -> list[Comparison]:
    """The study's comparisons (the same at every scale)."""
    return PLAN


def run(out: Path, scale: Scale) -> Report:
    runs = {}
    for seed in scale.seeds:
        folder = {v: out / f"{FOLDERS[v]}-s{seed}" for v in VARIANTS}
        runs[CHINESE, seed] = train_pt_epochs(folder[CHINESE], seed, scale, "--languages", "chinese")
        runs[SAME_CHINESE, seed] = train_pt_epochs(folder[SAME_CHINESE], seed, scale)
        steps = str(trained_steps(runs[CHINESE, seed]))
        runs[SAME_STEPS, seed] = train_pt_epochs(folder[SAME_STEPS], seed, scale, "--max_steps", steps)
    values = pt_scores(runs, out, scale)
    for key, run_dir in runs.items():
        values[key]["steps"] = trained_steps(run_dir)
    scores = {lang: by_seed(values, VARIANTS, scale.seeds, lang) for lang in LANGUAGES}
    results = compare(plan(scale), scores)
    verdicts = {(r.comparison.variant, r.comparison.metric): r for r in results}
    columns = {"steps": ("steps", 0), **PT_COLUMNS}
    return Report(
        title=TITLE,
        question=QUESTION,
        design=DESIGN,
        header=["training data", *columns],
        table=variant_table(values, VARIANTS, scale.seeds, columns),
        results=results,
        conclusion="\n\n".join(
            [
                "Upstream's question (same Chinese tokens): " + transfer(verdicts[SAME_CHINESE, "chinese"]),
                "Same compute (same steps): " + shared_budget(verdicts[SAME_STEPS, "chinese"]),
                differences_shown(results),
            ]
        ),
        upstream=UPSTREAM,
        full_size=FULL_SIZE,
        figure=curves({v: [runs[v, s] for s in scale.seeds] for v in VARIANTS}, out),
        answers={v: values[v, scale.seeds[0]]["answers"] for v in VARIANTS},
        scores=scores,
    )


def transfer(result) -> str:
    if not result.shown:
        return f"these runs do not show English helping or hurting Chinese. {sentence(result)}."
    lowered = "**lowered**" if result.difference < 0 else "**raised**"
    return f"adding English to the same Chinese data {lowered} Chinese held-out perplexity. {sentence(result)}."


def shared_budget(result) -> str:
    if not result.shown:
        return f"these runs do not show a cost (or a gain) for Chinese. {sentence(result)}."
    costs = "**costs** Chinese" if result.difference > 0 else "**still lowered** Chinese perplexity"
    return f"sharing the steps with English {costs}. {sentence(result)}."
