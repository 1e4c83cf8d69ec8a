"""How does the loss scale with data? A quarter, half and all of the PT data, same epochs, curves in one figure."""

from __future__ import annotations

from pathlib import Path

from experiments.common import HELD_OUT_DOMAIN, Scale, curves, final_loss, score, spread, train_pt, write_report

TITLE = "scaling"
QUESTION = (
    "Upstream plotted its loss against training tokens for growing data. Here: the same model trained for the same "
    "number of epochs on the first quarter, half and all of the PT data (`--data_fraction`), the loss curves "
    f"against tokens in one figure, and the perplexity on held-out documents ({HELD_OUT_DOMAIN})."
)
FULL_SIZE = (
    "```bash\nfor f in 0.25 0.5 1.0; do bash run.sh pt --data_fraction $f --output_dir results/scaling/data_$f; done\n"
    "python -m tools.plot results/scaling/data_* --x tokens --output results/scaling/curves.png\n```"
)
FRACTIONS = ("0.25", "0.5", "1.0")


def run(out: Path, scale: Scale) -> Path:
    runs = {
        (f, seed): train_pt(
            out / f"data_{f}-s{seed}",
            seed,
            scale,
            "--data_fraction",
            str(float(f) * scale.data_scale),
            "--max_steps",
            "-1",
            "--num_train_epochs",
            str(scale.pt_epochs),
        )
        for f in FRACTIONS
        for seed in scale.seeds
    }
    scores = score(list(runs.values()), out, scale, eval_data=f"mini_data/pt/{HELD_OUT_DOMAIN}")
    ppl = {f: [scores["metrics"][f"data_{f}-s{s}"]["perplexity"] for s in scale.seeds] for f in FRACTIONS}
    table = [[f, spread([final_loss(runs[f, s]) for s in scale.seeds]), spread(ppl[f])] for f in FRACTIONS]
    steps = [doubling(a, b, ppl[a], ppl[b]) for a, b in zip(FRACTIONS, FRACTIONS[1:])]
    conclusion = (
        "Held-out perplexity, each doubling of the data: " + "; ".join(steps) + ". With the same epochs, more data "
        "also means more optimizer steps: the figure shows loss against tokens seen, the scaling-law view. On a demo "
        "corpus of about 150K tokens this shows the method, not a law to extrapolate."
    )
    figure = curves([runs[f, scale.seeds[0]] for f in FRACTIONS], out, x="tokens")
    return write_report(
        out,
        TITLE,
        QUESTION,
        table,
        ["share of data", "final train loss", "held-out perplexity"],
        figure,
        None,
        conclusion,
        FULL_SIZE,
    )


def doubling(small: str, large: str, before: list[float], after: list[float]) -> str:
    """How held-out perplexity moved from one share of the data to the next, against the seeds' spread."""
    change = f"{small} -> {large}: {sum(before) / len(before):.1f} -> {sum(after) / len(after):.1f}"
    if len(before) < 2:
        return f"{change} (one seed: noise unknown)"
    if max(after) < min(before):
        return f"{change}, lower beyond the seed-to-seed spread"
    if min(after) > max(before):
        return f"{change}, higher beyond the seed-to-seed spread"
    return f"{change}, within the seed-to-seed spread (no conclusion)"
