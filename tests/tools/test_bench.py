"""tools.bench on the bundled fixtures (mini_data/bench) with two tiny random checkpoints, one PT and one SFT:
the table against an independent plain-torch scoring of ARC-Easy, bench.json / bench.md and the random-guess
column, raw text vs chat template, the generated task configs; a table on partial data that says so (and marks
nothing above chance) against one on full splits; what a run prints; bad arguments and bad data files, each refused
naming the input. The download stage is tests/tools/test_download.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from tests.helpers import MINI_DATA, ROOT

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install -r requirements/bench.txt")

from tools.bench import BenchArguments, checkpoint_labels, coverage, main, random_guess  # noqa: E402
from tools.bench_tasks import SPECS, LocalTask, write_task_yamls  # noqa: E402
from utils.evaluation import (  # noqa: E402
    above_chance,
    bench_table_markdown,
    cell,
    completion_logprob,
    decimals,
    render_bench_table,
)
from utils.modeling import ModelShapeArguments, build_model  # noqa: E402
from utils.run_info import write_run_info  # noqa: E402
from utils.tokenizer import load_tokenizer  # noqa: E402

BENCH = MINI_DATA / "bench"
ALL_TASKS = list(SPECS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, small_tokenizer_dir):
    """Two tiny random Qwen2 checkpoints with the small tokenizer, marked as a PT and an SFT run."""
    root = tmp_path_factory.mktemp("bench_ckpt")
    tokenizer = load_tokenizer(small_tokenizer_dir)
    shape = ModelShapeArguments(
        base_config=str(ROOT / "models/Qwen2.5-0.5B-Instruct"),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=len(tokenizer),
    )
    for seed, stage in enumerate(("pt", "sft")):
        torch.manual_seed(seed)
        model = build_model(
            shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
        )
        model.save_pretrained(root / stage)
        tokenizer.save_pretrained(root / stage)
        write_run_info(root / stage, stage)
    return root


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, checkpoints):
    out = tmp_path_factory.mktemp("bench_out")
    args = BenchArguments(
        model_name_or_path=[str(checkpoints / "pt"), str(checkpoints / "sft")],
        tasks=ALL_TASKS,
        data_dir=str(BENCH),
        output_dir=str(out),
        device="cpu",
        cache_dir=str(out / "cache"),
        max_gen_toks=8,
        log_samples=True,
    )
    return out, main(args)


def lm_eval_split(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm_eval's token split: trailing whitespace of the context moves into the continuation, the pair is
    encoded whole and cut where the context alone ends."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    head = tokenizer(context, add_special_tokens=False)["input_ids"]
    return head, whole[len(head) :]


def score_arc_easy(model_dir, chat: bool) -> tuple[float, float, list[np.ndarray]]:
    """acc, acc_norm and per-choice log-likelihoods of ARC-Easy, scored here with plain torch: context
    "Question: {q}\\nAnswer:" and continuation " {choice}" (arc_easy.yaml), or under a chat template the
    rendered user turn + generation prompt and the bare choice (lm_eval drops the delimiter there)."""
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = pq.read_table(BENCH / "ai2_arc/ARC-Easy/test-00000-of-00001.parquet").to_pylist()
    hits, norm_hits, lls = [], [], []
    for row in rows:
        text = f"Question: {row['question']}\nAnswer:"
        if chat:
            messages = [{"role": "user", "content": text}]
            context = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            delimiter = ""
        else:
            context, delimiter = text, " "
        choices = row["choices"]["text"]
        ll = np.array([completion_logprob(model, *lm_eval_split(tokenizer, context, delimiter + c)) for c in choices])
        gold = row["choices"]["label"].index(row["answerKey"])
        hits.append(ll.argmax() == gold)
        norm_hits.append((ll / np.array([len(c) for c in choices])).argmax() == gold)  # characters, not bytes
        lls.append(ll)
    return float(np.mean(hits)), float(np.mean(norm_hits)), lls


@pytest.mark.parametrize("label", ["pt", "sft"])
def test_table_matches_independent_scoring(bench_run, checkpoints, label):
    out, report = bench_run
    chat = label == "sft"
    acc, acc_norm, lls = score_arc_easy(checkpoints / label, chat)
    got = report["results"][label]["arc_easy"]
    assert got["acc,none"]["value"] == pytest.approx(acc) and got["acc_norm,none"]["value"] == pytest.approx(acc_norm)
    assert got["n"] == 5
    raw = json.loads((out / "raw" / f"{label}.json").read_text())
    samples = sorted(raw["samples"]["local_arc_easy"], key=lambda s: s["doc_id"])
    for sample, mine in zip(samples, lls, strict=True):
        np.testing.assert_allclose([float(r[0]) for r in sample["filtered_resps"]], mine, rtol=0, atol=1e-4)
    arc_row = (out / "bench.md").read_text().splitlines()[7].split(" | ")
    assert arc_row[0] == "| ARC-Easy: 5 of 2,376 questions" and arc_row[3 + chat].startswith(f"{acc:.1f} ± ")
    # PT sees raw text and " choice", SFT the rendered chat turn and the bare choice.
    context, continuation = samples[0]["arguments"][0]
    assert ("<|im_start|>user\n" in context) is chat
    assert continuation == ("" if chat else " ") + samples[0]["doc"]["choices"]["text"][0]


def test_report_files_and_random_guess(bench_run):
    out, report = bench_run
    saved = json.loads((out / "bench.json").read_text())
    assert saved["tasks"] == {task: f"local_{task}" for task in ALL_TASKS}
    assert [(c["label"], c["chat"]) for c in saved["checkpoints"]] == [("pt", False), ("sft", True)]
    assert saved["versions"]["lm_eval"] == "0.4.13"
    guess = saved["random_guess"]
    # 2 subjects x 3 questions of 4 choices; ARC-Easy has 4, 3, 4, 5 and 4 choices, ARC-Challenge 4, 3, 4.
    assert guess["ceval"] == guess["cmmlu"] == guess["mmlu"] == {"acc": 0.25, "n": 6}
    assert guess["arc_easy"] == {"acc": pytest.approx((3 / 4 + 1 / 3 + 1 / 5) / 5), "n": 5}
    assert guess["arc_challenge"] == {"acc": pytest.approx((2 / 4 + 1 / 3) / 3), "n": 3}
    assert guess["hellaswag"] == {"acc": 0.25, "n": 4} and guess["gsm8k"] == {"acc": 0.0, "n": 3}
    for label in ("pt", "sft"):
        results = saved["results"][label]
        assert {task: results[task]["n"] for task in ALL_TASKS} == {t: guess[t]["n"] for t in ALL_TASKS}
        assert "acc_norm,none" in results["ceval"] and "exact_match,flexible-extract" in results["gsm8k"]
    table = (out / "bench.md").read_text()
    lines = table.splitlines()
    assert lines[2] == "| benchmark | metric | questions | pt | sft (chat) | random guess |"
    rows = [line.split(" | ") for line in lines[4 : 4 + len(ALL_TASKS)]]
    assert [row[0].split(":")[0] for row in rows] == [f"| {SPECS[t]['title']}" for t in ALL_TASKS]
    for row, task in zip(rows, ALL_TASKS, strict=True):
        metric = {"gsm8k": "exact_match,strict-match", "hellaswag": "acc_norm,none"}.get(task, "acc,none")
        assert row[1] == metric.split(",")[0] and row[2] == str(guess[task]["n"])
        assert row[-1] == f"{guess[task]['acc']:.2f} |"
        for column, label in ((3, "pt"), (4, "sft")):
            score = saved["results"][label][task][metric]
            assert row[column] == f"{score['value']:.1f} ± {score['stderr']:.1f}"  # 3-6 questions: one digit
    assert bench_table_markdown(out / "bench.json") == table


def test_a_table_on_partial_data_says_so_and_marks_nothing(bench_run):
    """The fixtures are 3-6 questions a task: the title, every row, bench.md and bench.json say in words that these
    are not the benchmarks' full splits; no cell is bold; HellaSwag's headline is acc_norm."""
    out, report = bench_run
    saved = json.loads((out / "bench.json").read_text())
    assert saved["partial"] is True and saved["note"].startswith(
        "Not the full benchmark splits (C-Eval (val): 2 of 52"
    )
    assert saved["coverage"]["ceval"] == {"full": False, "reasons": ["2 of 52 subjects"], "docs": 6, "full_docs": None}
    assert saved["coverage"]["mmlu"]["reasons"] == ["2 of 57 subjects", "6 of 14,042 questions"]
    assert saved["coverage"]["hellaswag"] == {
        "full": False,
        "reasons": ["4 of 10,042 questions"],
        "docs": 4,
        "full_docs": 10042,
    }
    assert saved["headline"]["hellaswag"] == "acc_norm,none"
    table = (out / "bench.md").read_text()
    assert table.splitlines()[0].startswith("Benchmark scores on partial data, not the full benchmark splits")
    assert "| HellaSwag: 4 of 10,042 questions | acc_norm | 4 |" in table
    assert "**" not in table.split("\n\nScore ± standard error")[0]
    assert table.rstrip().endswith(saved["note"])


def full_report(value: float, docs: int, full: bool) -> dict:
    """A bench.json of one checkpoint on ARC-Easy, as tools.bench writes it."""
    stderr = (value * (1 - value) / docs) ** 0.5
    return {
        "tasks": {"arc_easy": "local_arc_easy"},
        "titles": {"arc_easy": "ARC-Easy"},
        "headline": {"arc_easy": "acc,none"},
        "random_guess": {"arc_easy": {"acc": 0.25, "n": docs}},
        "coverage": {"arc_easy": coverage("arc_easy", LocalTask("local_arc_easy"), docs, None)},
        "checkpoints": [{"label": "dpo", "chat": True}],
        "results": {"dpo": {"arc_easy": {"acc,none": {"value": value, "stderr": stderr}, "n": docs}}},
    } | ({} if full else {"note": "Not the full benchmark splits (ARC-Easy: 500 of 2,376 questions): ..."})


def test_full_splits_get_a_plain_title_and_may_be_marked_above_chance():
    full = render_bench_table(full_report(0.4, 2376, True))
    assert full.splitlines()[0] == "Benchmark scores on the full evaluation splits."
    assert "| ARC-Easy | acc | 2,376 | **0.40 ± 0.01** | 0.25 |" in full
    partial = render_bench_table(full_report(0.4, 500, False))  # as far above chance, on 500 questions
    assert partial.splitlines()[0].startswith("Benchmark scores on partial data")
    assert "| ARC-Easy: 500 of 2,376 questions | acc | 500 | 0.40 ± 0.02 | 0.25 |" in partial


def test_precision_follows_the_number_of_questions():
    assert [decimals(n) for n in (0, 3, 5, 30, 100, 1_000, 2_376, 10_042, 10**9)] == [1, 1, 1, 2, 2, 2, 2, 3, 4]
    assert cell({"value": 0.123456, "stderr": 0.0123}, 0.25, 1_000) == "0.12 ± 0.01"


def test_coverage_names_every_reason():
    ceval = LocalTask("local_ceval", ["accountant"], 52)
    assert coverage("ceval", ceval, 49, 10) == {
        "full": False,
        "reasons": ["--limit 10", "1 of 52 subjects"],
        "docs": 49,
        "full_docs": None,
    }
    assert coverage("gsm8k", LocalTask("local_gsm8k"), 1319, None)["full"] is True
    assert coverage("gsm8k", LocalTask("local_gsm8k"), 1318, None)["reasons"] == ["1,318 of 1,319 questions"]


def test_above_chance_uses_the_spread_of_guessing():
    assert above_chance(1.0, 0.25, 3)  # 3 of 3: the model's own standard error is 0, the guesser's is not
    assert not above_chance(0.5, 0.25, 6)  # 0.25 above, but two standard errors of guessing are 0.35
    assert above_chance(0.30, 0.25, 10_000) and not above_chance(0.26, 0.25, 1_000)
    assert cell({"value": 1.0, "stderr": 0.0}, 0.25, 3) == "**1.0 ± 0.0**" and cell(None, 0.25, 3) == "—"
    assert cell({"value": 1.0, "stderr": 0.0}, 0.25, 3, full=False) == "1.0 ± 0.0"


def test_random_guess_follows_the_limit(tmp_path):
    from lm_eval.tasks import TaskManager

    tasks = write_task_yamls(BENCH, tmp_path / "tasks", ["arc_easy", "ceval"], tmp_path / "cache")
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    guess = random_guess(
        manager, {bench: task.name for bench, task in tasks.items()}, 2
    )  # lm_eval's --limit: the first 2 documents of every task and subject
    assert guess["arc_easy"] == {"acc": pytest.approx((1 / 4 + 1 / 3) / 2), "n": 2}
    assert guess["ceval"] == {"acc": 0.25, "n": 4}


def test_task_configs_point_at_absolute_local_files(tmp_path, caplog):
    tasks = write_task_yamls(BENCH, tmp_path / "tasks", ["mmlu", "hellaswag"], tmp_path / "cache")
    assert tasks == {
        "mmlu": LocalTask("local_mmlu", ["high_school_geography", "machine_learning"], 57),
        "hellaswag": LocalTask("local_hellaswag"),
    }
    group = yaml.safe_load((tmp_path / "tasks" / "_local_mmlu.yaml").read_text())
    assert group["task"] == ["local_mmlu_high_school_geography", "local_mmlu_machine_learning"]
    assert "2 of 57 subjects" in caplog.text
    subject = yaml.safe_load((tmp_path / "tasks" / "local_mmlu_machine_learning.yaml").read_text())
    assert subject["include"].endswith("lm_eval/tasks/mmlu/default/mmlu_machine_learning.yaml")
    assert subject["tag"] == [] and subject["dataset_path"] == "parquet" and subject["dataset_name"] is None
    files = subject["dataset_kwargs"]["data_files"]
    assert set(files) == {"test", "dev"} and all(os.path.isabs(f) and os.path.isfile(f) for f in files["test"])
    hellaswag = yaml.safe_load((tmp_path / "tasks" / "local_hellaswag.yaml").read_text())
    assert set(hellaswag["dataset_kwargs"]["data_files"]) == {"train", "validation"}
    only_test = tmp_path / "arc" / "ai2_arc" / "ARC-Easy"  # a split the built-in names but no file has: null
    only_test.mkdir(parents=True)
    shutil.copy(BENCH / "ai2_arc/ARC-Easy/test-00000-of-00001.parquet", only_test)
    write_task_yamls(tmp_path / "arc", tmp_path / "tasks", ["arc_easy"])
    arc = yaml.safe_load((tmp_path / "tasks" / "local_arc_easy.yaml").read_text())
    assert arc["training_split"] is None and arc["validation_split"] is None and "test_split" not in arc
    assert write_task_yamls(tmp_path / "nothing", tmp_path / "tasks", ["arc_easy"]) == {}
    assert not list((tmp_path / "tasks").glob("*.yaml"))  # stale configs are removed
    with pytest.raises(ValueError, match="unknown benchmark"):
        write_task_yamls(BENCH, tmp_path / "tasks", ["boolq"])


def test_missing_data_or_checkpoint_is_a_clear_error(tmp_path, checkpoints):
    with pytest.raises(SystemExit, match="prepare.sh --stage bench"):
        main(
            BenchArguments(
                model_name_or_path=[str(checkpoints / "pt")], data_dir=str(tmp_path), output_dir=str(tmp_path / "out")
            )
        )
    with pytest.raises(SystemExit, match=f"{tmp_path / 'nope'}: no such folder"):
        main(
            BenchArguments(
                model_name_or_path=[str(tmp_path / "nope")], data_dir=str(BENCH), output_dir=str(tmp_path / "out")
            )
        )


def bench_args(tmp_path, checkpoints, **overrides) -> BenchArguments:
    fields = {
        "model_name_or_path": [str(checkpoints / "pt")],
        "tasks": ["ceval"],
        "data_dir": str(BENCH),
        "output_dir": str(tmp_path / "out"),
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
    }
    return BenchArguments(**(fields | overrides))


@pytest.mark.parametrize("limit", [-1, 0, 2.5])
def test_a_limit_that_is_no_number_of_questions_is_refused(tmp_path, checkpoints, limit):
    with pytest.raises(SystemExit, match=f"--limit {limit:g}: give a whole number of questions"):
        main(bench_args(tmp_path, checkpoints, limit=limit))


def test_a_folder_that_is_not_a_checkpoint_is_refused_by_name(tmp_path, checkpoints):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a model")
    weightless = tmp_path / "weightless"
    shutil.copytree(checkpoints / "pt", weightless)
    (weightless / "model.safetensors").unlink()
    with pytest.raises(SystemExit) as refused:
        main(bench_args(tmp_path, checkpoints, model_name_or_path=[str(tmp_path / "notes"), str(weightless)]))
    message = str(refused.value)
    assert f"{tmp_path / 'notes'}: not a checkpoint, no config.json" in message
    assert f"{weightless}: no weights" in message


def test_the_same_checkpoint_twice_is_refused(tmp_path, checkpoints, monkeypatch):
    monkeypatch.chdir(checkpoints)
    with pytest.raises(
        SystemExit, match=r"--model_name_or_path: \./pt/ is the same checkpoint as .*/pt: list it once"
    ):
        main(bench_args(tmp_path, checkpoints, model_name_or_path=[str(checkpoints / "pt"), "./pt/"]))


def test_checkpoints_that_share_a_name_get_distinct_columns():
    paths = ["runs/a/seed1/dpo", "runs/b/seed1/dpo", "runs/a/seed2/dpo", "results/sft"]
    assert checkpoint_labels(paths) == ["a/seed1/dpo", "b/seed1/dpo", "seed2/dpo", "sft"]


def copy_fixtures(tmp_path) -> Path:
    data = tmp_path / "bench"
    shutil.copytree(BENCH, data)
    return data


def rewrite(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t.drop_columns(["answer"]), r"val-00000-of-00001.parquet: missing column\(s\) \['answer'\]"),
        (
            lambda t: t.set_column(t.schema.get_field_index("answer"), "answer", pa.array(["A", "E", "B"])),
            r"val-00000-of-00001.parquet: row 1: answer 'E' is not one of A, B, C, D",
        ),
        (lambda t: None, r"val-00000-of-00001.parquet: not a readable parquet file"),
    ],
    ids=["answer column missing", "answer not a choice", "corrupt file"],
)
def test_bad_task_files_are_refused_naming_file_and_row(tmp_path, checkpoints, damage, message):
    data = copy_fixtures(tmp_path)
    target = data / "ceval/college_programming/val-00000-of-00001.parquet"
    if damage(pq.read_table(target)) is None:
        target.write_bytes(b"PAR1 this is not parquet")
    else:
        rewrite(target, damage)
    with pytest.raises(SystemExit, match=f"bad benchmark data: {target.parent}.*{message}"):
        main(bench_args(tmp_path, checkpoints, data_dir=str(data)))


def test_bad_answers_of_every_benchmark_are_named(tmp_path):
    from tools.bench_tasks import answer_problem

    cases = {
        "mmlu": {"answer": 4, "choices": ["a", "b", "c", "d"]},
        "arc_easy": {"answerKey": "E", "choices": {"text": ["x", "y"], "label": ["A", "B"]}},
        "hellaswag": {"label": "", "endings": ["a", "b", "c", "d"]},  # the test split has no labels
        "gsm8k": {"answer": "The answer is 4."},
        "cmmlu": {"Answer": None},
    }
    problems = {bench: answer_problem(SPECS[bench]["answer"], row) for bench, row in cases.items()}
    assert problems == {
        "mmlu": "answer 4 is not the index of one of the 4 choices",
        "arc_easy": "answerKey 'E' is not one of the choice labels ['A', 'B']",
        "hellaswag": "label '' is not the number of one of the 4 endings",
        "gsm8k": "answer has no final '#### <number>' line",
        "cmmlu": "Answer None is not one of A, B, C, D",
    }
    good = {"answer": 3, "choices": ["a", "b", "c", "d"]}
    assert answer_problem(SPECS["mmlu"]["answer"], good) is None


def test_a_run_prints_its_progress_and_the_table_only(tmp_path, checkpoints):
    """What a person sees: one line and one progress bar per checkpoint, then the table; none of lm_eval's per-task
    log lines, no bar per dataset split or weight file, no ERROR."""
    flags = {"--model_name_or_path": checkpoints / "pt", "--tasks": "arc_easy", "--data_dir": BENCH}
    flags |= {"--output_dir": tmp_path / "out", "--device": "cpu", "--cache_dir": tmp_path / "cache"}
    command = [sys.executable, "-m", "tools.bench", *(str(part) for pair in flags.items() for part in pair)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    shown = (done.stdout + done.stderr).replace("\r", "\n").splitlines()
    for noise in ("lm_eval", "Generating", "Map", "Building contexts", "Loading weights", "Tokenizing", "ERROR"):
        assert not [line for line in shown if noise in line], noise
    assert any(line.startswith("Running loglikelihood requests: 100%") for line in shown)
    assert "[1/1] pt: arc_easy on cpu (float32, raw text)" in done.stderr
    assert done.stdout == (tmp_path / "out" / "bench.md").read_text() + "\n"


def test_fixtures_keep_the_hub_schemas():
    def schema(path):
        return {f.name: str(f.type) for f in pq.read_schema(BENCH / path)}

    columns = ["question", "A", "B", "C", "D", "answer", "explanation"]
    assert schema("ceval/college_programming/val-00000-of-00001.parquet") == {
        "id": "int32",
        **dict.fromkeys(columns, "string"),
    }
    assert set(schema("cmmlu/food_science/test-00000-of-00001.parquet").values()) == {"string"}
    assert schema("mmlu/machine_learning/test-00000-of-00001.parquet")["answer"] == "int64"
    arc_choices = "struct<text: list<element: string>, label: list<element: string>>"
    assert schema("ai2_arc/ARC-Easy/test-00000-of-00001.parquet")["choices"] == arc_choices
    assert schema("hellaswag/data/validation-00000-of-00001.parquet")["label"] == "string"
    assert schema("gsm8k/main/test-00000-of-00001.parquet") == {"question": "string", "answer": "string"}


def test_the_eval_report_includes_the_bench_table(tmp_path, bench_run, checkpoints):
    import mini_qwen_eval

    out, _ = bench_run
    (tmp_path / "p.txt").write_text("Hello\n")
    mini_qwen_eval.main(
        mini_qwen_eval.EvalArguments(
            model_name_or_path=[str(checkpoints / "pt")],
            prompts=str(tmp_path / "p.txt"),
            output_dir=str(tmp_path / "e"),
            max_new_tokens=2,
            bench=str(out / "bench.json"),
        )
    )
    report = (tmp_path / "e" / "report.md").read_text()
    assert report.endswith("# Benchmarks\n\n" + (out / "bench.md").read_text())
