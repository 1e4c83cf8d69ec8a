"""What every experiment shares: training variants with the demo recipes (the stages' own main(), never copied
code), scoring them, comparing the variants with a test of known error rate, and a report that says which
differences the runs show and which they do not.

Every variant is trained with several seeds. Two variants are compared on their per-seed scores with the rule of
``utils.stats`` (Welch's or a paired t-test, Bonferroni over the study's comparisons): a study reports a
difference where there is none at most 5% of the time, and says "no difference shown" when the runs cannot tell.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from demo import demo_dpo, demo_pt, demo_sft
from demo.common import DEMO_TOKENIZER
from mini_qwen_eval import EvalArguments, load, perplexity, read_eval_texts
from mini_qwen_eval import main as eval_main
from utils.plot_runs import plot_groups
from utils.plotting import find_log_history
from utils.stats import ALPHA, NO_DIFFERENCE, Result

# The demo model trains in minutes on a laptop CPU; "ci" shrinks it further to check the wiring in seconds.
TINY = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "4"]
TINY += ["--num_key_value_heads", "2", "--intermediate_size", "64"]
HELD_OUT_DOMAIN = "tourism_geography"  # never trained on by the PT studies: their perplexity is measured on it
LANGUAGES = ("chinese", "english")  # the held-out domain's two folders, each scored on its own
# Where the demo tokenizer and the token caches live; ``python -m experiments --work_dir`` moves both.
WORK = {"tokenizer": DEMO_TOKENIZER, "cache": "cache/experiments"}
# Raw-text prompts for PT models, half Chinese, half English (greedy continuations show repetition).
RAW_PROMPTS = ["李白是", "旅游的意义在于", "酒店的早餐", "人工智能可以"]
RAW_PROMPTS += ["The history of", "Machine learning is", "The hotel room", "Once upon a time"]
CHAT_PROMPTS = "mini_data/eval_prompts.jsonl"  # for SFT checkpoints


@dataclass(frozen=True)
class Scale:
    """How big each run is: ``full`` is the documented size, ``ci`` checks the wiring in seconds."""

    pt_steps: int  # PT runs with a budget of steps: packing, and the base model of the DPO studies
    pt_epochs: int  # PT runs that train for epochs: bilingual and scaling
    data_scale: float  # bilingual and scaling use this share of their data (ci: a sliver)
    sft_epochs: int  # passes over the SFT data...
    sft_checkpoints: tuple[int, ...]  # ...and the epochs whose checkpoints stand for upstream's epochs 1, 2, 3
    dpo_steps: int
    seeds: tuple[int, ...]
    eval_tokens: int  # held-out tokens scored per language (the full size scores every held-out document)
    new_tokens: int  # longest greedy answer
    logging_steps: int
    shape: tuple[str, ...] = ()  # model shape overrides


SCALES = {
    "full": Scale(
        pt_steps=300,
        pt_epochs=3,
        data_scale=1.0,
        sft_epochs=21,
        sft_checkpoints=(7, 14, 21),
        dpo_steps=40,
        seeds=(1, 2, 3, 4),
        eval_tokens=20000,
        new_tokens=48,
        logging_steps=10,
    ),
    "ci": Scale(
        pt_steps=6,
        pt_epochs=1,
        data_scale=0.125,
        sft_epochs=2,
        sft_checkpoints=(1, 2),
        dpo_steps=2,
        seeds=(1, 2),
        eval_tokens=300,
        new_tokens=6,
        logging_steps=1,
        shape=tuple(TINY),
    ),
}


def common_flags(seed: int, out: Path, scale: Scale) -> list[str]:
    run = ["--seed", str(seed), "--output_dir", str(out), "--report_to", "none"]
    return [*run, "--logging_steps", str(scale.logging_steps)]


def train_pt(out: Path, seed: int, scale: Scale, *overrides: str) -> Path:
    """A demo-recipe PT run (configs/pt_demo.yaml) of ``scale.pt_steps`` steps with ``overrides``; the held-out
    domain is never trained on."""
    domains = sorted(p.name for p in Path("mini_data/pt").iterdir() if p.is_dir() and p.name != HELD_OUT_DOMAIN)
    data = ["--domains", *domains, "--cache_dir", WORK["cache"], "--tokenizer_name_or_path", WORK["tokenizer"]]
    demo_pt.run([*common_flags(seed, out, scale), "--max_steps", str(scale.pt_steps), *data, *scale.shape, *overrides])
    return out


def train_pt_epochs(out: Path, seed: int, scale: Scale, *overrides: str) -> Path:
    """A PT run of ``scale.pt_epochs`` epochs over ``scale.data_scale`` of its data (``overrides`` win)."""
    epochs = ["--max_steps", "-1", "--num_train_epochs", str(scale.pt_epochs)]
    return train_pt(out, seed, scale, *epochs, "--data_fraction", str(scale.data_scale), *overrides)


def train_sft(out: Path, model: Path, seed: int, scale: Scale, *overrides: str) -> Path:
    epochs = ["--max_steps", "-1", "--num_train_epochs", str(scale.sft_epochs)]
    model_flags = ["--model_name_or_path", str(model), "--cache_dir", WORK["cache"]]
    demo_sft.run([*common_flags(seed, out, scale), *model_flags, *epochs, *overrides])
    return out


def chat_base(out: Path, seed: int, scale: Scale) -> Path:
    """PT then SFT with ``seed``, a checkpoint (weights only) per SFT epoch, recorded in the SFT run's
    run_info.json: the model the DPO studies start from. Each seed trains its own, so the seeds' spread includes
    PT and SFT noise."""
    pt = train_pt(out / "pt", seed, scale)
    return train_sft(out / "sft", pt, seed, scale, "--save_strategy", "epoch", "--save_only_model", "true")


SFT_BUDGET = (
    "Upstream's SFT made 3 passes over 9M conversations; a model this small needs many passes over the demo's few "
    "short conversations to learn the chat format and when to stop (the demo recipe makes 20). So the SFT budget "
    "here is {epochs} passes, cut in thirds: the checkpoints after epochs {checkpoints} stand for upstream's epochs "
    "1, 2 and 3."
)


def sft_budget(scale: Scale) -> str:
    """How the SFT checkpoints compared here map to upstream's epochs."""
    checkpoints = ", ".join(map(str, scale.sft_checkpoints))
    return SFT_BUDGET.format(epochs=scale.sft_epochs, checkpoints=checkpoints)


def train_dpo(out: Path, model: Path, seed: int, scale: Scale, *overrides: str) -> dict:
    """A demo-recipe DPO run; returns its held-out preference report (the pairs held back depend on the seed)."""
    model_flags = ["--model_name_or_path", str(model), "--max_steps", str(scale.dpo_steps)]
    demo_dpo.run([*common_flags(seed, out, scale), *model_flags, *overrides])
    return json.loads((out / "preference_report.json").read_text())


def final_loss(run: Path, last: int = 3) -> float:
    """The mean of the last logged training losses (one logged value is noisy)."""
    losses = [h["loss"] for h in find_log_history(run) if "loss" in h]
    return statistics.fmean(losses[-last:])


def trained_steps(run: Path) -> int:
    """The optimizer steps a finished run took."""
    return max(h["step"] for h in find_log_history(run))


def held_out_scores(run: Path, scale: Scale) -> dict[str, float]:
    """A model's perplexity on the held-out domain's Chinese and English documents, each language on its own
    (``mini_qwen_eval.perplexity``: every document scored from its first token, none lends context to another).
    Keys: ``chinese`` and ``english`` (the natural log of the perplexity, the scale the tests compare on), and
    ``<language>_perplexity`` and ``<language>_bpb`` (bits per byte)."""
    model, tokenizer, _ = load(str(run), EvalArguments(model_name_or_path=[str(run)]))
    scores = {}
    for lang in LANGUAGES:
        texts = read_eval_texts(f"mini_data/pt/{HELD_OUT_DOMAIN}/{lang}")
        result = perplexity(model, tokenizer, texts, scale.eval_tokens, block_size=256)
        scores[lang] = math.log(result["perplexity"])
        scores[f"{lang}_perplexity"], scores[f"{lang}_bpb"] = result["perplexity"], result["bits_per_byte"]
    return scores


def greedy_answers(runs: list[Path], out: Path, scale: Scale, prompts: str | None = None) -> dict[Path, dict]:
    """Greedy answers of every run to ``prompts`` (a .jsonl file; default: the raw-text prompts) through
    mini_qwen_eval, which writes its files into ``out``. Returns run -> {repetition (repeated 4-gram share),
    ended (share of answers that end with EOS), answer_length (tokens), answers ([(prompt, answer)])}."""
    out.mkdir(parents=True, exist_ok=True)
    if prompts is None:
        prompts = str(out / "prompts.jsonl")
        Path(prompts).write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in RAW_PROMPTS))
    args = EvalArguments(model_name_or_path=[str(r) for r in runs], prompts=prompts, output_dir=str(out))
    args.decoding, args.max_new_tokens = ["greedy"], scale.new_tokens
    rows = eval_main(args)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        run: {
            "repetition": metrics[run.name]["repeated_4gram_share"],
            "ended": metrics[run.name]["ended_with_eos"],
            "answer_length": metrics[run.name]["mean_new_tokens"],
            "answers": [(row["prompt"], row["output"]) for row in rows if row["model"] == str(run)],
        }
        for run in runs
    }


def pt_scores(runs: dict[tuple[str, int], Path], out: Path, scale: Scale) -> dict[tuple[str, int], dict]:
    """Every PT run's numbers, keyed like ``runs`` by (variant, seed): held-out scores per language, greedy
    answers to the raw-text prompts, and the final training loss."""
    answers = greedy_answers(list(runs.values()), out / "eval", scale)
    return {
        key: {**held_out_scores(run, scale), **answers[run], "final_loss": final_loss(run)}
        for key, run in runs.items()
    }


def by_seed(values: dict[tuple[str, int], dict], variants, seeds, key: str) -> dict[str, list[float]]:
    """variant -> the ``key`` score of each seed, in seed order (what ``utils.stats.compare`` reads)."""
    return {variant: [values[variant, seed][key] for seed in seeds] for variant in variants}


def variant_table(values: dict[tuple[str, int], dict], variants, seeds, columns: dict[str, tuple[str, int]]):
    """One row per variant: its name, then for each column (header -> (key, digits)) the mean and range over
    seeds."""
    return [
        [
            variant,
            *(spread(by_seed(values, [variant], seeds, key)[variant], digits) for key, digits in columns.values()),
        ]
        for variant in variants
    ]


PT_COLUMNS = {
    "held-out Chinese perplexity": ("chinese_perplexity", 1),
    "held-out English perplexity": ("english_perplexity", 1),
}


def differences_shown(results: list[Result]) -> str:
    """The comparisons that show a difference, one line each, or a sentence saying there is none."""
    shown = [f"- {sentence(r)}" for r in results if r.shown]
    return "\n".join(["Differences shown:", "", *shown]) if shown else "No difference shown in any comparison."


@dataclass(frozen=True)
class Metric:
    """How a metric is printed. ``log``: the scores are natural logs of a perplexity, so a difference prints as
    the ratio of perplexities (exp of the difference of logs)."""

    label: str
    log: bool = False


METRICS = {
    "chinese": Metric("held-out Chinese perplexity", log=True),
    "english": Metric("held-out English perplexity", log=True),
    "repetition": Metric("repeated 4-gram share of greedy answers"),
    "ended": Metric("share of greedy answers that end (EOS)"),
    "sft_accuracy": Metric("held-back preference accuracy of the SFT model"),
    "dpo_accuracy": Metric("held-back preference accuracy after DPO"),
    "accuracy": Metric("held-back preference accuracy"),
}


def spread(values: list[float], digits: int = 3) -> str:
    """Mean and range over seeds."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def effect(result: Result) -> str:
    """The difference with its interval: a ratio of perplexities for log metrics, else variant - baseline."""
    if METRICS[result.comparison.metric].log:
        return f"×{math.exp(result.difference):.3f} [{math.exp(result.low):.3f}, {math.exp(result.high):.3f}]"
    return f"{result.difference:+.3f} [{result.low:+.3f}, {result.high:+.3f}]"


def p_text(p: float) -> str:
    return "no spread (not testable)" if math.isnan(p) else f"{p:.2g}"


def sentence(result: Result) -> str:
    """One comparison in words, with its numbers."""
    c = result.comparison
    verdict = f"**{result.verdict}**" if result.shown else result.verdict
    p = f"{c.test} p = {p_text(result.p)}, × {result.family_size} comparisons: {p_text(result.adjusted_p)}"
    return f"{c.variant} vs {c.baseline} on {METRICS[c.metric].label}: {verdict}, {effect(result)}, {p}"


LOG_NOTE = " Perplexities are compared on their logarithm and the difference prints as a ratio (×1.10: 10% higher)."


def comparisons_section(results: list[Result]) -> list[str]:
    m, level = results[0].family_size, 1 - ALPHA / results[0].family_size
    lines = [
        "## Comparisons",
        "",
        f"Each row compares two variants on one metric over their seeds. The study makes {m} comparisons, so each is "
        f"tested at {ALPHA:.0%} / {m} (Bonferroni) and its interval has {level:.2%} confidence: the chance that this "
        f"report shows any difference where there is none is at most {ALPHA:.0%}. A difference is shown exactly when "
        "its interval excludes no change; otherwise the verdict is "
        f'"{NO_DIFFERENCE}", which says the runs cannot tell, not that the variants are equal.'
        + (LOG_NOTE if any(METRICS[r.comparison.metric].log for r in results) else ""),
        "",
        f"| variant vs baseline | metric | difference [{level:.2%} interval] | test | p | p × {m} | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.comparison
        cells = [f"{c.variant} vs {c.baseline}", METRICS[c.metric].label, effect(r), c.test, p_text(r.p)]
        lines.append("| " + " | ".join([*cells, p_text(r.adjusted_p), r.verdict]) + " |")
    return [*lines, ""]


@dataclass
class Report:
    """What a study found, rendered to ``report.md`` (and its raw numbers to ``results.json``) by ``write``."""

    title: str
    question: str
    design: str
    header: list[str]
    table: list[list[str]]
    results: list[Result]
    conclusion: str
    upstream: str
    full_size: str
    figure: Path | None = None
    answers: dict = field(default_factory=dict)  # variant -> [(prompt, answer)] of the first seed
    scores: dict = field(default_factory=dict)  # metric -> variant -> per-seed scores

    def write(self, out: Path, scale_name: str, seeds: tuple[int, ...], minutes: float, loads: tuple) -> Path:
        lines = [f"# Experiment: {self.title}", "", self.question, "", "## Design", "", self.design, ""]
        lines += [f"## Results (mean and range over {len(seeds)} seeds)", ""]
        lines += ["| " + " | ".join(row) + " |" for row in [self.header, ["---"] * len(self.header), *self.table]]
        lines += [""]
        if self.figure is not None:
            lines += [f"![curves]({self.figure.name})", ""]
        lines += comparisons_section(self.results) if self.results else []
        lines += ["## What to conclude", "", self.conclusion, "", "## What upstream found", "", self.upstream, ""]
        if self.answers:
            lines += [f"## Greedy answers (seed {seeds[0]})", ""]
            for name, pairs in self.answers.items():
                lines += [f"**{name}**", ""] + [f"- {p!r} → {a[:160]!r}" for p, a in pairs] + [""]
        lines += ["## At full size, on GPUs", "", self.full_size, ""]
        lines += ["## This run", "", run_note(scale_name, seeds, minutes, loads), ""]
        path = out / "report.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        comparisons = [result_record(r) for r in self.results]
        raw = {"scale": scale_name, "seeds": list(seeds), "minutes": minutes, "scores": self.scores}
        (out / "results.json").write_text(
            json.dumps({**raw, "comparisons": comparisons}, indent=2, ensure_ascii=False)
        )
        return path


def result_record(r: Result) -> dict:
    """A comparison as JSON (NaN p-values become null)."""
    numbers = {"difference": r.difference, "low": r.low, "high": r.high, "p": r.p, "adjusted_p": r.adjusted_p}
    numbers = {k: None if math.isnan(v) else v for k, v in numbers.items()}
    return {
        **asdict(r.comparison),
        "test": r.comparison.test,
        **numbers,
        "family_size": r.family_size,
        "verdict": r.verdict,
    }


def run_note(scale_name: str, seeds: tuple[int, ...], minutes: float, loads: tuple) -> str:
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    busy = max(loads) > threads + 0.5
    shared = " Other work was running on the machine, so the time is an upper bound." if busy else ""
    return (
        f"Scale `{scale_name}`, seeds {', '.join(map(str, seeds))}: {minutes:.1f} min on this machine ({cores} CPU "
        f"cores, PyTorch using {threads} thread{'s' if threads > 1 else ''}; load average {loads[0]:.1f} at the "
        f"start and {loads[1]:.1f} at the end).{shared}"
    )


def curves(groups: dict[str, list[Path]], out: Path, x: str = "steps") -> Path:
    """Every seed of every variant in one figure: each variant's mean curve and the band of its seeds."""
    return plot_groups(groups, x=x, output=out / "curves.png")[0]
