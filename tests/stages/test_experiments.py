"""Upstream's experiments as commands: each study's wiring at the ``ci`` scale (two seeds, seconds per run), from
training its variants to a report with per-language held-out scores, the test used and its p-value; and each
study's decision rule, simulated at the full size on studies without any real difference."""

from __future__ import annotations

import importlib
import json
import math
import re

import numpy as np
import pytest
import yaml

from experiments.__main__ import STUDIES
from experiments.__main__ import main as experiment_main
from experiments.common import HELD_OUT_DOMAIN, SCALES
from mini_qwen_eval import EvalArguments, load, perplexity, read_eval_texts
from tests.helpers import ROOT
from tests.helpers.null_studies import MONTE_CARLO, SCORE_DISTRIBUTIONS, bonferroni_rule, false_difference_rate
from utils.stats import ALPHA, NO_DIFFERENCE

VERDICTS = {"higher", "lower", NO_DIFFERENCE}
MEAN_AND_RANGE = re.compile(r"-?\d+(\.\d+)? \(-?\d+(\.\d+)?–-?\d+(\.\d+)?\)")  # over two seeds


def table_after(report: str, heading: str) -> list[dict]:
    """The first markdown table after ``heading``, one dict per row."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Run a study at the ci scale once per test module: ``study(name)`` -> (report text, results.json, folder)."""
    done = {}

    def run(name: str):
        if name not in done:
            root = tmp_path_factory.mktemp(name)
            argv = [name, "--scale", "ci", "--output_root", str(root), "--work_dir", str(root / "work")]
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(ROOT)
                report = experiment_main(argv).read_text(encoding="utf-8")  # nothing is written into the checkout
            done[name] = report, json.loads((root / name / "results.json").read_text()), root / name
        return done[name]

    return run


def check_comparisons(report: str, results: dict, name: str) -> None:
    """One row per planned comparison, as in results.json, with its test and p-value, and a verdict that is "no
    difference shown" exactly when the interval includes no change; the conclusion names each of them."""
    plan = importlib.import_module(f"experiments.{name}").plan(SCALES["ci"])
    rows = table_after(report, "## Comparisons")
    assert len(rows) == len(results["comparisons"]) == len(plan) > 0
    for row, record, planned in zip(rows, results["comparisons"], plan):
        assert (record["baseline"], record["variant"], record["metric"]) == (
            planned.baseline,
            planned.variant,
            planned.metric,
        )
        assert row["variant vs baseline"] == f"{planned.variant} vs {planned.baseline}"
        assert row["test"] == record["test"] == ("paired t" if planned.paired else "Welch's t")
        assert record["family_size"] == len(plan) and row["verdict"] == record["verdict"] in VERDICTS
        if record["p"] is None:  # seeds without spread
            assert row["p"] == "no spread (not testable)" and record["verdict"] == NO_DIFFERENCE
            continue
        assert 0 <= record["p"] <= 1 and row["p"] == f"{record['p']:.2g}"
        assert (record["verdict"] != NO_DIFFERENCE) == (record["low"] > 0 or record["high"] < 0)
    assert f"The study makes {len(plan)} comparisons" in report
    conclusion = report.split("## What to conclude")[1].split("## What upstream found")[0]
    assert NO_DIFFERENCE in conclusion or "**" in conclusion
    assert re.search(r"Scale `ci`, seeds 1, 2: \d+\.\d min on this machine", report)


@pytest.mark.parametrize(
    "name, variants, checked_run",
    [
        ("packing", ["isolated", "cross_document", "one_per_row"], ("isolated-s1", "isolated")),
        (
            "bilingual",
            ["chinese", "chinese+english, same Chinese tokens", "chinese+english, same steps"],
            ("chinese-s1", "chinese"),
        ),
        ("scaling", ["0.25", "0.5", "1.0"], ("data_1.0-s1", "1.0")),
    ],
)
def test_pt_studies_score_both_languages_and_test_every_comparison(study, name, variants, checked_run):
    report, results, out = study(name)
    rows = table_after(report, "## Results")
    assert [next(iter(row.values())) for row in rows] == variants
    for row in rows:
        assert MEAN_AND_RANGE.fullmatch(row["held-out Chinese perplexity"])
        assert MEAN_AND_RANGE.fullmatch(row["held-out English perplexity"])
    # Each language is scored on its own held-out documents, for both seeds of every variant: recompute one.
    for language in ("chinese", "english"):
        assert set(results["scores"][language]) == set(variants)
        assert all(len(per_seed) == 2 for per_seed in results["scores"][language].values())
    folder, variant = out / checked_run[0], checked_run[1]
    model, tokenizer, _ = load(str(folder), EvalArguments(model_name_or_path=[str(folder)]))
    for language in ("chinese", "english"):
        texts = read_eval_texts(str(ROOT / "mini_data" / "pt" / HELD_OUT_DOMAIN / language))
        expected = perplexity(model, tokenizer, texts, SCALES["ci"].eval_tokens, block_size=256)["perplexity"]
        assert results["scores"][language][variant][0] == pytest.approx(math.log(expected), rel=1e-6)
    assert results["scores"]["chinese"][variant][0] != results["scores"]["english"][variant][0]
    check_comparisons(report, results, name)
    assert (out / "curves.png").stat().st_size > 1000 and "![curves](curves.png)" in report
    assert "```bash" in report.split("## At full size, on GPUs")[1]


def test_bilingual_runs_both_designs(study):
    """Same Chinese tokens: the bilingual run takes more steps than the Chinese-only one; same steps: as many."""
    _, _, out = study("bilingual")
    for seed in (1, 2):
        steps = {
            folder: json.loads((out / f"{folder}-s{seed}" / "trainer_state.json").read_text())["global_step"]
            for folder in ("chinese", "chinese+english_same_chinese", "chinese+english_same_steps")
        }
        assert steps["chinese+english_same_chinese"] > steps["chinese"] == steps["chinese+english_same_steps"]
        files = json.loads((out / f"chinese-s{seed}" / "run_info.json").read_text())["data"]["files"]
        assert files and all("/chinese/" in f for f in files)
        files = json.loads((out / f"chinese+english_same_chinese-s{seed}" / "run_info.json").read_text())["data"]
        assert any("/english/" in f for f in files["files"])


def test_sft_epochs_scores_each_epoch_by_its_answers_and_by_preference_pairs(study):
    report, results, out = study("sft_epochs")
    rows = table_after(report, "## Results")
    assert [row["SFT checkpoint"] for row in rows] == ["epoch 1", "epoch 2"]
    assert all(MEAN_AND_RANGE.fullmatch(row["answers that end"]) for row in rows)
    assert all(MEAN_AND_RANGE.fullmatch(row["repeated 4-gram share"]) for row in rows)
    for seed in (1, 2):
        record = json.loads((out / f"base-s{seed}" / "sft" / "run_info.json").read_text())["epoch_checkpoints"]
        assert sorted(record) == ["1", "2"]  # each seed trains its own SFT run
        metrics = json.loads((out / f"eval-s{seed}" / "metrics.json").read_text())
        for epoch in (1, 2):
            facts = json.loads((out / f"dpo_epoch{epoch}-s{seed}" / "preference_report.json").read_text())
            assert results["scores"]["dpo_accuracy"][f"epoch {epoch}"][seed - 1] == facts["dpo_prefers_chosen"]
            assert (facts["dpo_prefers_chosen"] * facts["heldout_pairs"]).is_integer()
            checkpoint = record[str(epoch)].split("/")[-1]
            assert results["scores"]["ended"][f"epoch {epoch}"][seed - 1] == metrics[checkpoint]["ended_with_eos"]
            assert results["scores"]["repetition"][f"epoch {epoch}"][seed - 1] == pytest.approx(
                metrics[checkpoint]["repeated_4gram_share"]
            )
    check_comparisons(report, results, "sft_epochs")
    assert all(c["test"] == "paired t" for c in results["comparisons"])


def test_dpo_lr_runs_upstreams_grid_scaled_to_the_demo_recipe(study):
    report, results, out = study("dpo_lr")
    demo = yaml.safe_load((ROOT / "configs" / "dpo_demo.yaml").read_text())["learning_rate"]
    full = yaml.safe_load((ROOT / "configs" / "dpo_full.yaml").read_text())["learning_rate"]
    rows = table_after(report, "## Results")
    # ci trains 2 SFT epochs: upstream's epochs 3 and 2 are the last and the one before. The fifth run takes the
    # full recipe's rate unscaled.
    expected = [
        ("lr ×2, SFT epoch 2", 2, demo * 2, "1e-06 on epoch 3"),
        ("lr ×1, SFT epoch 2", 2, demo, "5e-07 on epoch 3"),
        ("lr ×0.2, SFT epoch 1", 1, demo * 0.2, "1e-07 on epoch 2"),
        ("lr ×1, SFT epoch 1", 1, demo, "5e-07 on epoch 2"),
        ("lr 5e-07 (unscaled), SFT epoch 1", 1, full, "5e-07 on epoch 2 (its final run, rate not scaled)"),
    ]
    assert [(row["run"], row["upstream's run"]) for row in rows] == [(e[0], e[3]) for e in expected]
    for row, (_, _, rate, _) in zip(rows, expected):
        assert float(row["learning rate here"]) == pytest.approx(rate)
    full_size = report.split("## At full size, on GPUs")[1]
    for epoch, factor in ((3, 2), (3, 1), (2, 0.2), (2, 1)):
        assert f"--sft_epoch {epoch} --learning_rate {full * factor:g} " in full_size
    for seed in (1, 2):
        for _, epoch, rate, _ in expected:
            folder = out / f"epoch{epoch}_lr{rate:g}-s{seed}"
            facts = json.loads((folder / "preference_report.json").read_text())
            # Each DPO model is compared with the SFT checkpoint it started from, on the same held-back pairs.
            assert results["scores"]["accuracy"][f"SFT epoch {epoch}"][seed - 1] == facts["reference_prefers_chosen"]
            args = json.loads((folder / "run_info.json").read_text())["arguments"]
            assert any(group.get("learning_rate") == pytest.approx(rate) for group in args.values())
    check_comparisons(report, results, "dpo_lr")
    assert "did not improve" in report and "failed until" not in report


@pytest.mark.parametrize("name", STUDIES)
@pytest.mark.parametrize("distribution", ["normal", "share of 12"])
def test_each_study_at_full_size_reports_a_false_difference_at_most_5_percent_of_the_time(name, distribution):
    """The study's own comparisons, with the seeds of the full size, on 20,000 simulated studies whose variants do
    not differ: the share that report any difference stays at or below 5% (plus Monte Carlo error)."""
    full = SCALES["full"]
    plan = importlib.import_module(f"experiments.{name}").plan(full)
    draw = SCORE_DISTRIBUTIONS[distribution](np.random.default_rng(len(plan)))
    rate = false_difference_rate(bonferroni_rule, plan, len(full.seeds), draw)
    assert len(full.seeds) >= 3 and rate <= ALPHA + MONTE_CARLO
