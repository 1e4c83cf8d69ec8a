"""Curation (tools.curate) end to end on tiny inputs: planted near-duplicates, exact copies, benchmark questions and
bad rows go in; the test checks what comes out, what the ledger says, and that the counts add up."""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("datatrove", reason="install requirements/curate.txt (bash run.sh test does)")

from datatrove.executor import SlurmPipelineExecutor  # noqa: E402

from tests.helpers import MINI_DATA, REAL_SAMPLES, ROOT, needs_real_samples  # noqa: E402
from tests.stages.test_bad_input import invalid_utf8_strings  # noqa: E402
from tests.stages.test_stages import losses, run_pt  # noqa: E402
from tools.curate.heuristics import check_repetition, duplicate_line_fraction  # noqa: E402
from tools.curate.pipeline import build_stages, chain_executors  # noqa: E402
from tools.curate.recipe import CurateArguments  # noqa: E402
from tools.curate.run import main  # noqa: E402
from tools.curate.words import MinHasher, ngram_hashes, split_words  # noqa: E402
from utils.data.dpo import load_preference_pairs  # noqa: E402
from utils.data.parquet import EMPTY_TEXT, INVALID_UTF8, DataError  # noqa: E402
from utils.train.args import parse_args  # noqa: E402

# ---- synthetic text: random words (English) and random common characters (Chinese), never repeating ----------
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]


def english_doc(rng: random.Random, words: int = 120) -> str:
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))) for _ in range(words)]
    lines = [" ".join(vocab[i : i + 12]) + "." for i in range(0, words, 12)]
    return "\n".join(lines)


def chinese_doc(rng: random.Random, chars: int = 240) -> str:
    text = "".join(rng.choice(CJK) for _ in range(chars))
    return "\n".join(text[i : i + 30] + "。" for i in range(0, chars, 30))


def jaccard(a: str, b: str, n: int = 5) -> float:
    x, y = set(ngram_hashes(split_words(a).hashes, n).tolist()), set(ngram_hashes(split_words(b).hashes, n).tolist())
    return len(x & y) / len(x | y)


def near_copy(rng: random.Random, text: str, target: float = 0.8) -> str:
    """``text`` with words (Chinese: characters) replaced at random positions so that its 5-gram Jaccard with
    ``text`` is within 0.01 below ``target`` (one replacement moves it by up to 5 shingles: retried until it lands)."""
    chinese = split_words(text).cjk > 0
    while True:
        tokens = list(text) if chinese else text.split(" ")
        while True:
            i = rng.randrange(len(tokens))
            if chinese and tokens[i] in "。\n":
                continue
            tokens[i] = rng.choice(CJK) if chinese else "".join(rng.choice("abcdefghij") for _ in range(6))
            copy = ("" if chinese else " ").join(tokens)
            similarity = jaccard(text, copy)
            if similarity <= target:
                break
        if similarity >= target - 0.01:
            return copy


def write_pt(path: Path, texts: list, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"text": texts, **columns}) if not isinstance(texts, pa.Array) else pa.table({"text": texts})
    pq.write_table(table, path)
    return path


def curate(tmp_path: Path, input_dir: Path, *flags: str, kind: str = "pt", name: str = "run") -> dict:
    argv = [
        "--kind",
        kind,
        "--input_dir",
        str(input_dir),
        "--output_dir",
        str(tmp_path / name / "out"),
        "--work_dir",
        str(tmp_path / name / "work"),
        "--bench_dir",
        str(MINI_DATA / "bench"),
        "--token_sample_every",
        "0",
        *flags,
    ]
    (recipe,) = parse_args((CurateArguments,), argv)
    return main(recipe)


def ledger(tmp_path: Path, name: str = "run") -> list[dict]:
    """Every ledger row (all steps) of a run."""
    rows = []
    for file in sorted((tmp_path / name / "work" / "ledger").rglob("*.parquet")):
        rows += pq.read_table(file).to_pylist()
    return rows


def fates(tmp_path: Path, name: str = "run") -> dict[tuple[str, int], str]:
    """(path, row) -> the step that removed it, or "kept"."""
    out = {}
    for row in ledger(tmp_path, name):
        if row["step"] != "passed":
            out[(row["path"], row["row"])] = row["step"] if row["step"] != "kept" else "kept"
    return out


# ---- words and measures -----------------------------------------------------------------------------------------


def test_a_chinese_character_is_a_word_and_text_is_normalized():
    words = split_words("Hello, WORLD! 李白是诗人。Café 2023年 Ｆｕｌｌ")
    assert [words.span(i, 1) for i in range(len(words))] == [
        "hello",
        "world",
        "李",
        "白",
        "是",
        "诗",
        "人",
        "cafe",
        "2023",
        "年",
        "full",
    ]
    assert words.cjk == 6
    same = split_words("hello world 李白是诗人 cafe 2023年 full")
    assert np.array_equal(words.hashes, same.hashes)  # case, accents, width and punctuation do not matter


def test_ngram_hashes_depend_on_content_not_position():
    grams = ngram_hashes(split_words("a b c a b c x").hashes, 3)
    assert grams[0] == grams[3] and len(set(grams.tolist())) == 4  # abc bca cab abc bcx


def _reference(words, n):
    """Slow, obvious versions of the two repetition measures."""
    h, lengths = list(words.hashes), words.lengths
    grams = [tuple(h[i : i + n]) for i in range(len(h) - n + 1)]
    counts = Counter(grams)
    top = max(counts[g] * lengths[i : i + n].sum() for i, g in enumerate(grams))
    covered, seen = np.zeros(len(h), bool), set()
    for i, g in enumerate(grams):
        if g in seen:
            covered[i : i + n] = True
        seen.add(g)
    return top / lengths.sum(), lengths[covered].sum() / lengths.sum()


@pytest.mark.parametrize("language", ["english", "chinese"])
def test_repetition_measures_match_a_slow_reference(language):
    rng = random.Random(0)
    make = english_doc if language == "english" else chinese_doc
    for _ in range(20):
        parts = [make(rng, 40) for _ in range(3)]
        text = "\n".join(parts + rng.sample(parts, 2))  # some repeated paragraphs
        words = split_words(text)
        for n in (2, 3, 5, 8):
            # Limits of 1.0 never trigger, so every size is computed.
            _, (top, duplicated) = check_repetition(words, {n: 1.0}, {n: 1.0})
            assert (top, duplicated) == pytest.approx(_reference(words, n))


def test_repetition_rules_flag_repeats_and_pass_ordinary_text():
    rng = random.Random(1)
    ordinary = english_doc(rng, 300)
    top, duplicate = {2: 0.2, 3: 0.18, 4: 0.16}, {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    assert check_repetition(split_words(ordinary), top, duplicate)[0] is None
    repeated = ordinary + "\n" + ordinary[: len(ordinary) // 3]
    assert check_repetition(split_words(repeated), top, duplicate)[0][:2] == ("duplicated", 5)
    spam = " ".join(["buy cheap watches"] * 40)
    assert check_repetition(split_words(spam), top, duplicate)[0][0] == "top"
    assert duplicate_line_fraction("a line\nanother\na line\n\na line") == pytest.approx(12 / 25)


def test_minhash_signatures_estimate_jaccard():
    rng = random.Random(2)
    hasher = MinHasher(256, seed=1)
    for _ in range(10):
        a = english_doc(rng, 200)
        b = near_copy(rng, a, target=rng.uniform(0.3, 0.9))
        sa, sb = (hasher.signature(ngram_hashes(split_words(t).hashes, 5)) for t in (a, b))
        assert np.mean(sa == sb) == pytest.approx(jaccard(a, b), abs=0.1)  # 256 hashes: standard error < 0.032


# ---- the pipeline ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Two IndustryCorpus2-like files, each read by its own task: 200 distinct documents, 120 near-duplicate pairs
    (Jaccard 0.79-0.80, the copy in the other file), 4 exact copies (one with other whitespace), two documents that
    quote a benchmark question, and rows the heuristics, the quality bound and the row check remove."""
    tmp = tmp_path_factory.mktemp("planted")
    rng = random.Random(3)
    first, second = [], []
    distinct = [english_doc(rng) for _ in range(100)] + [chinese_doc(rng) for _ in range(100)]
    first += distinct
    pairs = []
    for i in range(120):
        original = english_doc(rng, 200) if i % 2 else chinese_doc(rng, 400)
        copy = near_copy(rng, original)
        assert 0.79 <= jaccard(original, copy) <= 0.8
        pairs.append((("first.parquet", len(first)), ("second.parquet", len(second))))
        first.append(original)
        second.append(copy)
    exact = [distinct[0], distinct[1], distinct[2], "  " + distinct[3].replace("\n", " \n ")]
    second += exact
    mmlu = pq.read_table(MINI_DATA / "bench/mmlu/machine_learning/test-00000-of-00001.parquet").to_pylist()[0]
    ceval = pq.read_table(MINI_DATA / "bench/ceval/high_school_geography/val-00000-of-00001.parquet").to_pylist()[0]
    quoted = [
        english_doc(rng, 60)
        + "\nQuiz time. "
        + mmlu["question"]
        + " "
        + " ".join(mmlu["choices"])
        + "\n"
        + english_doc(rng, 60),
        chinese_doc(rng, 90) + "\n" + ceval["question"] + ceval["A"] + "\n" + chinese_doc(rng, 90),
        english_doc(rng, 100) + " " + " ".join(mmlu["question"].split()[:6]),  # a few words only: kept
    ]
    second += quoted
    rejects = {
        "too short": "Only a few words here.",
        "symbols": english_doc(rng, 80) + "\n" + "#$%&*@!~^|" * 100,
        "duplicate lines": "\n".join([english_doc(rng, 40)] + ["click here to subscribe to our newsletter"] * 30),
        "low quality": english_doc(rng),
    }
    second += list(rejects.values())
    bad = ["", None]
    score = [4.5] * (len(second) - 1) + [1.0]  # the "low quality" row
    write_pt(tmp / "in/tech/english/high/first.parquet", first, quality_score=[4.5] * len(first))
    write_pt(tmp / "in/tech/english/high/second.parquet", second + bad, quality_score=score + [4.5, 4.5])
    rows_in = len(first) + len(second) + len(bad)
    summary = curate(tmp, tmp / "in", "--min_quality_score", "4.0", "--workers", "2")
    return tmp, summary, pairs, rows_in, len(first)


def _fate(fates_by_row, where):
    path, row = where
    return fates_by_row[(f"tech/english/high/{path}", row)]


def test_planted_near_duplicates_are_found_and_distinct_documents_kept(planted):
    tmp, summary, pairs, _, _ = planted
    by_row = fates(tmp)
    found = [sorted((_fate(by_row, a), _fate(by_row, b))) == ["kept", "near_duplicate"] for a, b in pairs]
    assert sum(found) / len(found) >= 0.95  # LSH 16 x 6 finds a pair at Jaccard 0.8 with probability 0.992
    assert not any(_fate(by_row, a) != "kept" and _fate(by_row, b) != "kept" for a, b in pairs)  # one stays
    distinct = [_fate(by_row, ("first.parquet", i)) for i in range(200)]
    assert distinct.count("kept") == 200  # their exact copies go, the originals stay


def test_exact_copies_removed_with_the_kept_twin_named(planted):
    tmp, summary, _, _, _ = planted
    by_row = fates(tmp)
    copies = [_fate(by_row, ("second.parquet", 120 + i)) for i in range(4)]
    assert copies == ["exact_duplicate"] * 4
    report = (tmp / "run/out/curation_report.md").read_text()
    assert "same text as kept tech/english/high/first.parquet#0" in report


def test_planted_benchmark_questions_are_removed_and_listed(planted):
    tmp, summary, _, _, _ = planted
    by_row = fates(tmp)
    assert [_fate(by_row, ("second.parquet", 124 + i)) for i in range(3)] == [
        "decontamination",
        "decontamination",
        "kept",
    ]
    listed = (tmp / "run/out/decontaminated.csv").read_text()
    assert "second.parquet,124," in listed and "mmlu/machine_learning/test-00000-of-00001.parquet row 0" in listed
    assert "second.parquet,125," in listed and "ceval/high_school_geography/val-00000-of-00001.parquet" in listed


def test_every_row_has_one_fate_and_the_counts_add_up(planted):
    tmp, summary, _, rows_in, _ = planted
    by_row = fates(tmp)
    steps = Counter(row["step"] for row in ledger(tmp) if row["step"] != "passed")
    assert len(by_row) == sum(steps.values()) == rows_in == summary["input_rows"]  # no row twice, none missing
    removed = sum(r["documents"] for r in summary["reasons"])
    assert removed + summary["kept"] == rows_in
    assert summary["kept"] == steps["kept"] == summary["output_rows"]
    assert {r["reason"]: r["documents"] for r in summary["reasons"]} == {
        "near duplicate": sum(1 for f in by_row.values() if f == "near_duplicate"),
        "exact duplicate": 4,
        "shares 13-grams with mmlu": 1,
        "shares 13-grams with ceval": 1,
        "fewer than 50 words": 1,
        "symbol ratio > 0.3": 1,
        "duplicate lines > 0.2": 1,
        "quality_score < 4": 1,
        EMPTY_TEXT: 2,
    }
    per_group = summary["groups"]["tech/english"]
    assert sum(f["documents"] for f in per_group.values()) == rows_in


def test_curated_copy_keeps_the_layout_columns_and_rows(planted):
    tmp, summary, _, _, _ = planted
    by_row = fates(tmp)
    for name in ("first.parquet", "second.parquet"):
        source = pq.read_table(tmp / "in/tech/english/high" / name)
        curated = pq.read_table(tmp / "run/out/tech/english/high" / name)
        assert curated.schema.equals(source.schema)
        kept = [i for i in range(source.num_rows) if by_row[(f"tech/english/high/{name}", i)] == "kept"]
        assert curated.to_pylist() == [source.slice(i, 1).to_pylist()[0] for i in kept]


def test_report_has_the_tables_examples_and_figures(planted):
    tmp, _, _, _, _ = planted
    out = tmp / "run/out"
    report = (out / "curation_report.md").read_text()
    for heading in (
        "## Headline",
        "## Per domain and language",
        "## Removal reasons",
        "## Examples",
        "## Benchmark overlap",
        "### near-duplicates: near duplicate",
    ):
        assert heading in report
    assert re.search(r"\| near-duplicates \| \d+ \| \d+ \| \d+ \|", report)
    for figure in ("funnel_and_mix.png", "quality_columns.png", "heuristics.png"):
        assert (out / "curation_figures" / figure).stat().st_size > 10_000
        assert f"curation_figures/{figure}" in report


def test_pt_trains_from_the_curated_folder(planted, tmp_path, small_tokenizer_dir):
    source, summary, _, _, _ = planted
    trainer = run_pt(tmp_path, small_tokenizer_dir, source / "run/out")
    values = losses(trainer)
    assert all(math.isfinite(v) for v in values) and values[-1] < values[0]
    info = json.loads((tmp_path / "pt" / "run_info.json").read_text())
    assert info["data"]["documents"] == summary["kept"]


# ---- bad input: the stages' named errors and counted skips -------------------------------------------------------


def test_bad_pt_rows_are_counted_under_the_stages_reasons(tmp_path):
    good = english_doc(random.Random(4))
    write_pt(tmp_path / "in/a.parquet", invalid_utf8_strings([good.encode(), b"bad \xff\xfe text", b"", b"  "]))
    summary = curate(tmp_path, tmp_path / "in", "--decontaminate", "false")
    assert {r["reason"]: r["documents"] for r in summary["reasons"]} == {INVALID_UTF8: 1, EMPTY_TEXT: 2}
    assert summary["kept"] == summary["output_rows"] == 1


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"text": [1, 2]}, r"a\.parquet: column 'text' holds int64, not text"),
        ({"text": ["x", "y"], "quality_score": ["high", "low"]}, r"a\.parquet: column 'quality_score' holds string"),
        ({"content": ["x", "y"]}, r"a\.parquet: missing column\(s\) \['text'\]"),
    ],
)
def test_pt_files_of_the_wrong_shape_fail_naming_the_file(tmp_path, columns, message):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table(columns), tmp_path / "in/a.parquet")
    with pytest.raises(DataError, match=message):
        curate(tmp_path, tmp_path / "in", "--decontaminate", "false")


def test_sft_rows_skipped_as_the_sft_stage_skips_them_and_malformed_ones_named(tmp_path):
    def turn(who, what):
        return {"from": who, "value": what}

    rows = [
        [turn("human", "Name a prime number."), turn("gpt", "Seven is prime.")],
        [turn("human", "Name a prime number."), turn("gpt", "Seven is prime.")],  # exact duplicate
        [turn("human", "Hello?")],  # no assistant turn at the end
        [turn("robot", "beep"), turn("gpt", "boop")],  # unknown role
    ]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"conversations": rows}), tmp_path / "in/a.parquet")
    summary = curate(tmp_path, tmp_path / "in", "--decontaminate", "false", kind="sft")
    assert {r["reason"]: r["documents"] for r in summary["reasons"]} == {
        "does not end with an assistant turn": 1,
        "unknown role": 1,
        "exact duplicate": 1,
    }
    assert summary["kept"] == 1
    pq.write_table(pa.table({"conversations": ["a string, not turns"]}), tmp_path / "in/a.parquet")
    with pytest.raises(DataError, match=r"a\.parquet, row 0: malformed conversation"):
        curate(tmp_path, tmp_path / "in", "--decontaminate", "false", kind="sft", name="malformed")


def test_dpo_pairs_deduplicated_and_decontaminated_with_the_same_report(tmp_path, qwen_tokenizer):
    rng = random.Random(5)
    ceval = pq.read_table(MINI_DATA / "bench/ceval/high_school_geography/val-00000-of-00001.parquet").to_pylist()[0]

    def pair(prompt, good, bad):
        return {
            "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": good}],
            "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": bad}],
        }

    answer = english_doc(rng, 150)
    rows = [
        pair("Explain tides.", answer, "No idea."),
        pair("Explain tides.", answer, "No idea."),
        pair("Explain tides!", near_copy(rng, answer, 0.85), "No idea."),
        pair(ceval["question"] + ceval["A"], chinese_doc(rng, 60), "不知道"),
        pair("Name a colour.", "Blue.", "Blue."),
    ]
    (tmp_path / "in").mkdir()
    pq.write_table(
        pa.table({"chosen": [r["chosen"] for r in rows], "rejected": [r["rejected"] for r in rows]}),
        tmp_path / "in/train.parquet",
    )
    summary = curate(tmp_path, tmp_path / "in", kind="dpo")
    assert {r["reason"]: r["documents"] for r in summary["reasons"]} == {
        "chosen equals rejected": 1,
        "exact duplicate": 1,
        "shares 13-grams with ceval": 1,
        "near duplicate": 1,
    }
    assert summary["kept"] == summary["output_rows"] == 1
    report = (tmp_path / "run/out/curation_report.md").read_text()
    assert "one preference pair" in report and "## Headline" in report and "## Benchmark overlap" in report
    pairs, loaded = load_preference_pairs(
        str(tmp_path / "run/out"), qwen_tokenizer, 256, 512
    )  # the DPO stage's reader
    assert loaded["rows"] == loaded["kept"] == len(pairs) == 1


# ---- runs, resumes and the cluster executor ----------------------------------------------------------------------


def test_a_run_resumes_and_refuses_a_different_recipe(tmp_path):
    write_pt(tmp_path / "in/a.parquet", [english_doc(random.Random(6)) for _ in range(5)])
    first = curate(tmp_path, tmp_path / "in", "--decontaminate", "false")
    again = curate(tmp_path, tmp_path / "in", "--decontaminate", "false", "--workers", "2")  # engine-only change
    assert first == again
    with pytest.raises(SystemExit, match="other settings \\(min_words\\)"):
        curate(tmp_path, tmp_path / "in", "--decontaminate", "false", "--min_words", "10")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="is not empty"):
        curate(tmp_path, tmp_path / "in", "--output_dir", str(tmp_path / "mine"), name="other")


def test_the_slurm_switch_builds_the_same_stages_as_job_arrays(tmp_path):
    (recipe,) = parse_args(
        (CurateArguments,),
        [
            "--config",
            "configs/curate_pt.yaml",
            "--executor",
            "slurm",
            "--slurm_partition",
            "cpu",
            "--work_dir",
            str(tmp_path / "work"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
    )
    stages = build_stages(recipe, str(tmp_path / "files.txt"), tasks=64, report_step=print)
    last = chain_executors(recipe, stages)
    chain = []
    while last is not None:
        chain.append(last)
        last = last.depends
    chain.reverse()
    assert all(isinstance(e, SlurmPipelineExecutor) for e in chain)
    assert [e.tasks for e in chain] == [64, 1, 64, recipe.minhash_buckets, 1, 64, 1]
    assert [e.job_name for e in chain][0] == "curate_pt_1_filter" and chain[0].partition == "cpu"
    # The nodes run datatrove's launcher script: the repository must reach their PYTHONPATH.
    assert f"export PYTHONPATH={ROOT}" in chain[0].env_command


FAKE_SBATCH = """#!/usr/bin/env python3
# Runs an sbatch script's array tasks one after the other, here and now, as a cluster would (one at a time, so a job
# that depends on another finds it done), and answers like sbatch.
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read() + "#SBATCH --array=0-0"  # a job without an array is one task
first, last = map(int, re.search(r"#SBATCH --array=(\\d+)-(\\d+)", text).groups())
env = dict(os.environ)
for arg in sys.argv[1:-1]:
    if arg.startswith("--export=ALL,"):
        env.update(item.split("=", 1) for item in arg.removeprefix("--export=ALL,").split(","))
for task in range(first, last + 1):
    task_env = {**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_JOB_ID": "7", "SLURM_NODELIST": "node1"}
    subprocess.run(["bash", script], env=task_env, check=True)
print("Submitted batch job 7")
"""
FAKE_SRUN = """#!/usr/bin/env python3
import os, sys
args = sys.argv[1:]
while args[0].startswith("-"):
    args = args[2:] if args[0] == "-n" else args[1:]
os.execvp(args[0], args)
"""


def test_the_same_pipeline_runs_through_datatrove_slurm_launcher(tmp_path, monkeypatch):
    """The Slurm executor pickles each stage, writes an sbatch script and submits it; a stand-in sbatch runs the
    array tasks here, through datatrove's own launcher, in fresh processes, as cluster nodes would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = "#!/bin/sh\necho node1\n"  # scontrol show hostnames <list>
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("scontrol", scontrol)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    rng = random.Random(8)
    docs = [english_doc(rng) for _ in range(20)]
    write_pt(tmp_path / "in/en/a.parquet", docs + [docs[0]])
    write_pt(tmp_path / "in/en/b.parquet", [near_copy(rng, docs[1], 0.9), english_doc(rng)])
    flags = [
        "--executor",
        "slurm",
        "--slurm_partition",
        "test",
        "--minhash_buckets",
        "2",
        "--minhash_hashes_per_bucket",
        "8",
        "--decontaminate",
        "false",
    ]
    assert curate(tmp_path, tmp_path / "in", *flags) is None  # submitted, not waited for
    summary = json.loads((tmp_path / "run/out/curation_summary.json").read_text())
    assert {r["reason"]: r["documents"] for r in summary["reasons"]} == {"exact duplicate": 1, "near duplicate": 1}
    assert summary["kept"] == summary["output_rows"] == 21


# ---- the real samples ----------------------------------------------------------------------------------------------


@needs_real_samples
def test_real_pt_sample_counts_tokens_exactly_and_finds_its_exact_duplicate(tmp_path, qwen_tokenizer_dir):
    from utils.bpe import make_fast_encoder
    from utils.tokenizer import load_tokenizer

    summary = curate(
        tmp_path,
        REAL_SAMPLES / "pt",
        "--config",
        "configs/curate_pt.yaml",
        "--token_sample_every",
        "1",
        "--tokenizer_name_or_path",
        str(qwen_tokenizer_dir),
        "--workers",
        "1",
    )
    texts = []
    for file in sorted((REAL_SAMPLES / "pt").rglob("*.parquet")):
        texts += pq.read_table(file, columns=["text"]).column("text").to_pylist()
    encode = make_fast_encoder(load_tokenizer(qwen_tokenizer_dir))[1]
    group = summary["groups"]["accommodation_catering_hotel/chinese"]
    assert sum(f["tokens"] for f in group.values()) == sum(len(ids) for ids in encode(texts))
    assert {r["reason"]: r["documents"] for r in summary["reasons"]}["exact duplicate"] >= 1
    assert summary["input_rows"] == len(texts) and summary["kept"] == summary["output_rows"]
