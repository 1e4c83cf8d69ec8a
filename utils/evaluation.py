"""Numbers that say whether a model got better: log-likelihoods, perplexity, bits per byte, repetition, and the
benchmark table."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def completion_logprob(model: PreTrainedModel, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> float:
    """Sum of log p(completion | prompt) over the completion tokens."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=model.device)
    logits = model(input_ids=ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    logps = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
    return float(logps[len(prompt_ids) - 1 :].sum())


@torch.no_grad()
def text_nll(model: PreTrainedModel, token_ids: Sequence[int], block_size: int) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of a token stream scored in independent blocks, and the
    number of predicted tokens (the first token of each block has no context and is not scored)."""
    total, count = 0.0, 0
    for start in range(0, len(token_ids), block_size):
        block = list(token_ids[start : start + block_size])
        if len(block) < 2:
            continue
        ids = torch.tensor([block], device=model.device)
        loss = model(input_ids=ids, labels=ids).loss.float()
        total += float(loss) * (len(block) - 1)
        count += len(block) - 1
    return total, count


def perplexity_and_bpb(nll_nats: float, n_tokens: int, n_bytes: int) -> tuple[float, float]:
    """Perplexity per token and bits per UTF-8 byte (comparable across tokenizers)."""
    if n_tokens == 0 or n_bytes == 0:
        return float("nan"), float("nan")
    return math.exp(nll_nats / n_tokens), nll_nats / math.log(2) / n_bytes


def repeated_ngram_share(tokens: Sequence, n: int = 4) -> float:
    """Share of n-grams that already occurred earlier in the same text (0 = no repetition)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    seen: set = set()
    repeated = 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams)


def distinct_n(tokens: Sequence, n: int = 2) -> float:
    """Unique n-grams / all n-grams (1 = every n-gram different)."""
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


@torch.no_grad()
def preference_report(policy, reference, pairs: list[dict], beta: float, max_length: int | None) -> dict:
    """On held-out tokenized pairs (``prompt_ids``, ``chosen_ids``, ``rejected_ids``): how often each model
    prefers the chosen reply (length-normalised log-likelihood), and the DPO model's mean implicit reward
    margin. Replies are cut to ``max_length`` as in training."""
    stats = {"policy_prefers_chosen": 0, "reference_prefers_chosen": 0, "margins": []}
    for row in pairs:
        head = row["prompt_ids"]
        scores = {}
        for key in ("chosen", "rejected"):
            tail = row[f"{key}_ids"]
            if max_length is not None:
                tail = tail[: max(1, max_length - len(head))]
            scores[key] = {
                name: completion_logprob(model, head, tail) for name, model in (("pol", policy), ("ref", reference))
            }
            scores[key]["n"] = len(tail)
        c, r = scores["chosen"], scores["rejected"]
        stats["policy_prefers_chosen"] += c["pol"] / c["n"] > r["pol"] / r["n"]
        stats["reference_prefers_chosen"] += c["ref"] / c["n"] > r["ref"] / r["n"]
        stats["margins"].append(beta * ((c["pol"] - c["ref"]) - (r["pol"] - r["ref"])))
    n = len(pairs)
    return {
        "heldout_pairs": n,
        "reference_prefers_chosen": stats["reference_prefers_chosen"] / n,
        "dpo_prefers_chosen": stats["policy_prefers_chosen"] / n,
        "dpo_mean_reward_margin": sum(stats["margins"]) / n,
    }


def write_preference_report(report: dict, output_dir: str | Path) -> None:
    out = Path(output_dir)
    (out / "preference_report.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Preference report ({report['heldout_pairs']} held-out pairs)",
        "",
        "| model | prefers chosen (length-normalised log-likelihood) |",
        "|---|---|",
        f"| SFT reference | {report['reference_prefers_chosen']:.1%} |",
        f"| DPO | {report['dpo_prefers_chosen']:.1%} |",
        "",
        f"DPO mean implicit reward margin (beta-scaled): {report['dpo_mean_reward_margin']:.4f}",
        "",
    ]
    (out / "preference_report.md").write_text("\n".join(lines))


# Benchmark tables (bench.json of tools/bench.py), rendered here so that any report can include one.


def above_chance(value: float, baseline: float, docs: int) -> bool:
    """More than two standard errors of random guessing (binomial, ``docs`` questions) above its mean. The
    guesser's spread, not the model's: a model right on 3 of 3 questions has a standard error of 0."""
    return docs > 0 and value - baseline > 2 * (baseline * (1 - baseline) / docs) ** 0.5


def decimals(docs: int) -> int:
    """Digits an accuracy on ``docs`` questions deserves: down to the first digit of its standard error at its
    widest (0.5 / sqrt(docs), at an accuracy of one half), between 1 and 4: 5 questions 0.2, 1,000 0.02, 10,000
    0.005."""
    if docs <= 0:
        return 1
    return min(4, max(1, -math.floor(math.log10(0.5 / math.sqrt(docs)))))


def cell(score: dict | None, baseline: float, docs: int, full: bool = True) -> str:
    """``value ± stderr`` to the precision ``docs`` questions allow, bold when above chance on a full split."""
    if not score:
        return "—"
    places = decimals(docs)
    text = f"{score['value']:.{places}f}" + (f" ± {score['stderr']:.{places}f}" if score["stderr"] is not None else "")
    return f"**{text}**" if full and above_chance(score["value"], baseline, docs) else text


def render_bench_table(report: dict) -> str:
    """A title saying whether these are full benchmark splits, then benchmarks x checkpoints (headline metric ±
    standard error), the questions scored and the random-guess column, then what the numbers mean. A row scored on
    partial data (fixtures, --limit, missing subjects) says so in its name and is never marked above chance."""
    coverage = report.get("coverage", {})
    partial = [bench for bench in report["tasks"] if not coverage.get(bench, {}).get("full", True)]
    if partial:
        title = (
            "Benchmark scores on partial data, not the full benchmark splits: not comparable with published results."
        )
    elif coverage:
        title = "Benchmark scores on the full evaluation splits."
    else:
        title = "Benchmark scores."
    columns = [c["label"] + (" (chat)" if c["chat"] else "") for c in report["checkpoints"]]
    header = "| benchmark | metric | questions | " + " | ".join(columns) + " | random guess |"
    lines = [title, "", header, "|---" * (len(columns) + 4) + "|"]
    for bench in report["tasks"]:
        baseline, docs = report["random_guess"][bench]["acc"], report["random_guess"][bench]["n"]
        headline = report["headline"][bench]
        full = bench not in partial
        name = report["titles"][bench] + ("" if full else f": {', '.join(coverage[bench]['reasons'])}")
        scored = [report["results"][c["label"]][bench].get(headline) for c in report["checkpoints"]]
        cells = [cell(score, baseline, docs, full) for score in scored]
        guess = f"{baseline:.{max(2, decimals(docs))}f}"  # exact, not measured: 0.25 stays 0.25
        lines.append(f"| {name} | {headline.split(',')[0]} | {docs:,} | " + " | ".join(cells) + f" | {guess} |")
    lines += [
        "",
        "Score ± standard error. acc: share of questions whose answer the model finds most likely; acc_norm: the "
        "same with each answer's log-likelihood divided by its length in characters (HellaSwag's headline, as papers "
        "report it); exact_match: the final `#### N` answer of GSM8K. Random guess: the expected accuracy of picking "
        "one of each question's choices at random (0 for generation). Digits follow the number of questions. "
        "**Bold**: above chance on a full split, i.e. more than two standard errors of random guessing above its "
        "mean. All metrics are in bench.json.",
    ]
    if report.get("note") and partial:
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def bench_table_markdown(bench_json_path: str | Path) -> str:
    """The markdown table of a finished run, from its bench.json (for another report to include)."""
    return render_bench_table(json.loads(Path(bench_json_path).read_text(encoding="utf-8")))
