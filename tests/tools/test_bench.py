"""tools.bench on the bundled fixtures (mini_data/bench) with two tiny random checkpoints, one PT and one SFT:
the table against an independent plain-torch scoring of ARC-Easy, bench.json / bench.md and the random-guess
column, raw text vs chat template, the generated task configs, and the download stage with a stub `hf` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from tests.helpers import MINI_DATA, ROOT

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install -r requirements/bench.txt")

from tools.bench import BenchArguments, main, random_guess  # noqa: E402
from tools.bench_tasks import SPECS, write_task_yamls  # noqa: E402
from utils.evaluation import (  # noqa: E402
    above_chance,
    bench_table_markdown,
    cell,
    completion_logprob,
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
    arc_row = (out / "bench.md").read_text().splitlines()[5].split(" | ")
    assert arc_row[0] == "| ARC-Easy" and arc_row[2 + chat].strip("*").startswith(f"{acc:.4f} ± ")
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
    assert lines[0] == "| benchmark | docs | pt | sft (chat) | random guess |"
    rows = [line.split(" | ") for line in lines[2 : 2 + len(ALL_TASKS)]]
    assert [row[0] for row in rows] == [f"| {SPECS[t]['title']}" for t in ALL_TASKS]
    for row, task in zip(rows, ALL_TASKS, strict=True):
        metric = "exact_match,strict-match" if task == "gsm8k" else "acc,none"
        assert row[1] == str(guess[task]["n"]) and row[-1] == f"{guess[task]['acc']:.4f} |"
        for column, label in ((2, "pt"), (3, "sft")):
            score = saved["results"][label][task][metric]
            assert row[column].strip("*") == f"{score['value']:.4f} ± {score['stderr']:.4f}"
    assert bench_table_markdown(out / "bench.json") == table


def test_above_chance_uses_the_spread_of_guessing():
    assert above_chance(1.0, 0.25, 3)  # 3 of 3: the model's own standard error is 0, the guesser's is not
    assert not above_chance(0.5, 0.25, 6)  # 0.25 above, but two standard errors of guessing are 0.35
    assert above_chance(0.30, 0.25, 10_000) and not above_chance(0.26, 0.25, 1_000)
    assert cell({"value": 1.0, "stderr": 0.0}, 0.25, 3) == "**1.0000 ± 0.0000**" and cell(None, 0.25, 3) == "—"


def test_random_guess_follows_the_limit(tmp_path):
    from lm_eval.tasks import TaskManager

    names = write_task_yamls(BENCH, tmp_path / "tasks", ["arc_easy", "ceval"], tmp_path / "cache")
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    guess = random_guess(manager, names, 2)  # lm_eval's --limit: the first 2 documents of every task and subject
    assert guess["arc_easy"] == {"acc": pytest.approx((1 / 4 + 1 / 3) / 2), "n": 2}
    assert guess["ceval"] == {"acc": 0.25, "n": 4}


def test_task_configs_point_at_absolute_local_files(tmp_path, caplog):
    names = write_task_yamls(BENCH, tmp_path / "tasks", ["mmlu", "hellaswag"], tmp_path / "cache")
    assert names == {"mmlu": "local_mmlu", "hellaswag": "local_hellaswag"}
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
    with pytest.raises(SystemExit, match="not found"):
        main(
            BenchArguments(
                model_name_or_path=[str(tmp_path / "nope")], data_dir=str(BENCH), output_dir=str(tmp_path / "out")
            )
        )


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


@pytest.fixture()
def stub_hf(tmp_path):
    """A fake `hf` CLI: records its arguments and "downloads" the fixture files its --include globs select
    (CMMLU as its release zip of CSVs, with options that a type-guessing reader would change)."""
    zipped = tmp_path / "cmmlu_v1_0_1.zip"
    with zipfile.ZipFile(zipped, "w") as bundle:
        bundle.writestr("test/machine_learning.csv", ",Question,A,B,C,D,Answer\n0,学习率为多少？,2,0.5,NA,None,A\n")
        bundle.writestr("dev/machine_learning.csv", ",Question,A,B,C,D,Answer\n0,一个问题？,甲,乙,丙,丁,B\n")
    calls, cli = tmp_path / "calls.jsonl", tmp_path / "hf"
    sources = {
        "ceval/ceval-exam": "ceval",
        "cais/mmlu": "mmlu",
        "allenai/ai2_arc": "ai2_arc",
        "Rowan/hellaswag": "hellaswag",
        "openai/gsm8k": "gsm8k",
    }
    cli.write_text(f"""#!{sys.executable}
import fnmatch, json, shutil, sys
from pathlib import Path
args = sys.argv[1:]
open({str(calls)!r}, "a").write(json.dumps(args) + "\\n")
repo, local = args[1], Path(args[args.index("--local-dir") + 1])
include = [args[i + 1] for i, a in enumerate(args) if a == "--include"]
exclude = [args[i + 1] for i, a in enumerate(args) if a == "--exclude"]
if repo == "haonan-li/cmmlu":
    shutil.copy({str(zipped)!r}, local / "cmmlu_v1_0_1.zip")
    sys.exit(0)
source = Path({str(BENCH)!r}) / {sources!r}[repo]
for path in source.rglob("*.parquet"):
    name = path.relative_to(source).as_posix()
    if any(fnmatch.fnmatch(name, g) for g in include) and not any(fnmatch.fnmatch(name, g) for g in exclude):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, local / name)
""")
    cli.chmod(0o755)
    return cli, calls


def test_download_bench_stage_with_a_stub_cli(tmp_path, stub_hf):
    cli, calls = stub_hf
    data = tmp_path / "data"
    command = [sys.executable, "-m", "tools.download", "--stage", "bench", "--data_dir", str(data), "--hf", str(cli)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    made = [json.loads(line) for line in calls.read_text().splitlines()]
    assert made[2] == [
        "download",
        "cais/mmlu",
        "--repo-type",
        "dataset",
        "--include",
        "*/test-*.parquet",
        "--include",
        "*/dev-*.parquet",
        "--exclude",
        "all/*",
        "--exclude",
        "auxiliary_train/*",
        "--local-dir",
        str(data / "bench" / "mmlu"),
    ]
    assert [c[1] for c in made] == [
        "ceval/ceval-exam",
        "haonan-li/cmmlu",
        "cais/mmlu",
        "allenai/ai2_arc",
        "Rowan/hellaswag",
        "openai/gsm8k",
    ]
    converted = pq.read_table(data / "bench/cmmlu/machine_learning/test-00000-of-00001.parquet")
    assert converted.schema.names == ["Question", "A", "B", "C", "D", "Answer"]
    assert converted.schema.types == [pa.string()] * 6  # "2" stays "2", "NA" and "None" stay text
    assert converted.to_pylist()[0] == {
        "Question": "学习率为多少？",
        "A": "2",
        "B": "0.5",
        "C": "NA",
        "D": "None",
        "Answer": "A",
    }
    manifest = json.loads((data / "bench/cmmlu/MANIFEST.json").read_text())
    assert sorted(f["name"] for f in manifest["files"]) == [
        f"machine_learning/{split}-00000-of-00001.parquet" for split in ("dev", "test")
    ]
    assert all((data / "bench" / name / ".complete").is_file() for name in ("ceval", "mmlu", "ai2_arc", "gsm8k"))
    names = write_task_yamls(data / "bench", tmp_path / "tasks", ALL_TASKS)
    assert set(names) == set(ALL_TASKS)  # what the download leaves is what the task configs read
    again = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    assert again.stderr.count("already complete, skipping") == 6 and len(calls.read_text().splitlines()) == 6


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
