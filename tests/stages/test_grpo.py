"""GRPO end to end on CPU: a tiny model that SFT taught the thinking layout from a few worked solutions gets more
replies well formed under GRPO; the run records, plots, reports, resumes exactly and refuses bad starts."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, SFTConfig

import mini_qwen_grpo
import mini_qwen_sft
from tests.helpers import MINI_DATA
from tests.stages.test_distributed import ZERO2, check_run, launch
from utils.modeling import ModelShapeArguments, build_model
from utils.tokenizer import load_tokenizer
from utils.train.args import parse_args

# Small enough for seconds per step, big enough to pick the layout up from 48 worked solutions.
SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
FORMAT, CORRECT = "rewards/format_reward/mean", "rewards/correctness_reward/mean"


def grpo_args(tmp_path, model_dir, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(model_dir),
        "--data_dir",
        str(MINI_DATA / "grpo" / "train"),
        "--output_dir",
        str(tmp_path / "grpo"),
        "--max_prompt_length",
        "128",
        "--holdout",
        "8",
        "--num_generations",
        "8",
        "--per_device_train_batch_size",
        "16",
        "--steps_per_generation",
        "2",
        "--max_completion_length",
        "40",
        "--max_steps",
        "32",
        "--learning_rate",
        "2e-3",
        "--logging_steps",
        "4",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--activation_checkpointing",
        "false",
        *extra,
    ]


def run_grpo(tmp_path, model_dir, *extra: str):
    args = grpo_args(tmp_path, model_dir, *extra)
    return mini_qwen_grpo.main(*parse_args((mini_qwen_grpo.GRPOArguments, GRPOConfig), args))


@pytest.fixture(scope="module")
def thinking_model(tmp_path_factory, small_tokenizer_dir):
    """A tiny random model, then SFT on a few greetings and the 48 worked solutions of mini_data/grpo/sft."""
    tmp = tmp_path_factory.mktemp("grpo_start")
    tokenizer = load_tokenizer(small_tokenizer_dir)
    torch.manual_seed(0)
    build_model(ModelShapeArguments(**SHAPE, vocab_size=1024)).save_pretrained(tmp / "init")
    tokenizer.save_pretrained(tmp / "init")
    greetings = tmp / "chat"
    greetings.mkdir()
    conversations = [[{"from": "human", "value": q}, {"from": "gpt", "value": "Hello!"}] for q in ("Hi", "Hey")]
    pq.write_table(pa.table({"conversations": conversations}), greetings / "part.parquet")
    argv = [
        "--model_name_or_path",
        str(tmp / "init"),
        "--data_dir",
        str(greetings),
        "--reasoning_data_dir",
        str(MINI_DATA / "grpo" / "sft"),
        "--output_dir",
        str(tmp / "sft"),
        "--cache_dir",
        str(tmp / "cache"),
        "--max_length",
        "128",
        "--max_steps",
        "150",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "5e-3",
        "--logging_steps",
        "50",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--activation_checkpointing",
        "false",
    ]
    mini_qwen_sft.main(*parse_args((mini_qwen_sft.SFTArguments, SFTConfig), argv))
    return tmp / "sft"


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, thinking_model):
    tmp = tmp_path_factory.mktemp("grpo")
    before = AutoModelForCausalLM.from_pretrained(thinking_model).state_dict()
    return tmp, run_grpo(tmp, thinking_model), before


def logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def test_format_reward_rises_on_a_layout_the_model_can_learn(grpo_run):
    """The task: close the think block and state a number within 40 tokens. After SFT about a third of the sampled
    replies manage it (the rest are cut); GRPO rewards the ones that do, and most do after 32 steps."""
    tmp, trainer, before = grpo_run
    form = logged(trainer, FORMAT)
    assert len(form) == 8  # one entry per 4 steps: 64 replies each
    first, last = form[0], sum(form[-2:]) / 2
    assert 0 < first < 0.6  # SFT left room: some replies had the layout, not all
    assert last > first + 0.2
    clipped = logged(trainer, "completions/clipped_ratio")
    assert sum(clipped[-2:]) / 2 < clipped[0]  # fewer replies run out of room
    report = json.loads((tmp / "grpo" / "grpo_report.json").read_text())
    assert report["grpo"]["well_formed"] > report["start"]["well_formed"]  # greedy, on problems never trained on
    # The reward is the weighted sum of its parts, and the parts are what the reward functions return.
    for entry in (h for h in trainer.state.log_history if "reward" in h):
        assert entry["reward"] == pytest.approx(entry[FORMAT] + entry[CORRECT], abs=1e-5)
    after = trainer.model.state_dict()
    changed = [name for name, value in before.items() if not torch.equal(value, after[name].cpu())]
    assert changed == list(before)


def test_run_records_plots_and_reports(grpo_run, thinking_model):
    tmp, _, _ = grpo_run
    out = tmp / "grpo"
    info = json.loads((out / "run_info.json").read_text())
    assert info["stage"] == "grpo" and info["start_checkpoint"] == str(thinking_model)
    assert info["data"]["kept"] == 240 and info["data"]["heldout"] == 8 and info["data"]["train"] == 232
    assert info["arguments"]["GRPOConfig"]["chat_template_kwargs"] == {"enable_thinking": True}
    assert (out / "training_curves.png").stat().st_size > 10_000 and (
        out / "reward_curves.png"
    ).stat().st_size > 10_000
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    clipped = [h["completions/clipped_ratio"] for h in history if "completions/clipped_ratio" in h]
    ended = [h["completions/ended_ratio"] for h in history if "completions/ended_ratio" in h]
    assert len(ended) == len(clipped) == 8 and ended == pytest.approx([1 - c for c in clipped], abs=1e-4)
    report = json.loads((out / "grpo_report.json").read_text())
    assert report["start"]["problems"] == report["grpo"]["problems"] == 8
    for scores in (report["start"], report["grpo"]):
        assert all(0 <= scores[key] <= 1 for key in ("correct", "well_formed", "ended"))
    assert "| GRPO |" in (out / "grpo_report.md").read_text(encoding="utf-8")
    # The checkpoint loads as any other and thinks when asked to.
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tom has 3 apples. How many?"}],
        add_generation_prompt=True,
        enable_thinking=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert tokenizer.decode(prompt["input_ids"][0]).endswith("<|im_start|>assistant\n<think>\n")
    reply = model.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert reply.shape[1] == prompt["input_ids"].shape[1] + 8


def test_resume_continues_exactly(tmp_path, thinking_model):
    """Stopped after step 4 (a rollout boundary) and resumed: the same rewards and losses as straight through."""
    save = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--logging_steps", "1"]
    full = run_grpo(tmp_path / "a", thinking_model, *save)
    (tmp_path / "b" / "grpo").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "grpo" / "checkpoint-4", tmp_path / "b" / "grpo" / "checkpoint-4")
    resumed = run_grpo(tmp_path / "b", thinking_model, *save, "--resume", "auto")
    # Losses every step; rewards once per rollout (every 2 steps), when the replies are scored.
    for key, count in (("loss", 4), ("reward", 2), (FORMAT, 2)):
        tail = [h[key] for h in resumed.state.log_history if key in h and h["step"] > 4]
        expected = [h[key] for h in full.state.log_history if key in h and h["step"] > 4]
        assert len(tail) == count and tail == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_bad_starts_are_refused(tmp_path, thinking_model, small_tokenizer_dir):
    pt = tmp_path / "pt"
    shutil.copytree(thinking_model, pt)
    (pt / "run_info.json").write_text(json.dumps({"stage": "pt"}))
    with pytest.raises(SystemExit, match="pretraining checkpoint: GRPO starts from a chat model"):
        parse_args((mini_qwen_grpo.GRPOArguments, GRPOConfig), grpo_args(tmp_path, pt))
    with pytest.raises(SystemExit, match="chat_template_kwargs is set from --enable_thinking"):
        parse_args(
            (mini_qwen_grpo.GRPOArguments, GRPOConfig),
            grpo_args(tmp_path, thinking_model, "--chat_template_kwargs", '{"enable_thinking": true}'),
        )
    with pytest.raises(SystemExit, match="reward_weights needs 2 values"):
        parse_args(
            (mini_qwen_grpo.GRPOArguments, GRPOConfig), grpo_args(tmp_path, thinking_model, "--reward_weights", "1")
        )
    script, training = parse_args(
        (mini_qwen_grpo.GRPOArguments, GRPOConfig), grpo_args(tmp_path, thinking_model, "--use_vllm", "true")
    )
    assert training.use_vllm is False
    assert any("use_vllm: no CUDA GPU" in line for _, line in script.settled_notes)
    # A foreign template without the thinking switch fails before any model is loaded.
    foreign = tmp_path / "foreign"
    shutil.copytree(thinking_model, foreign)
    tokenizer = AutoTokenizer.from_pretrained(foreign)
    tokenizer.chat_template = "{{ messages[0]['content'] }}{% generation %}{% endgeneration %}"
    tokenizer.save_pretrained(foreign)
    with pytest.raises(ValueError, match="no enable_thinking switch"):
        run_grpo(tmp_path, foreign)


def test_two_processes_under_deepspeed_zero2(tmp_path, thinking_model):
    """accelerate launch, 2 CPU processes, ZeRO-2: each process generates its share of the replies, the rewards are
    gathered for the group comparison, and the checkpoint loads without DeepSpeed."""
    args = grpo_args(tmp_path, thinking_model, "--per_device_train_batch_size", "8", "--max_steps", "4")
    launch("mini_qwen_grpo.py", ZERO2, *args, "--logging_steps", "1")
    out = tmp_path / "grpo"
    check_run(out, falling=False)
    info = json.loads((out / "run_info.json").read_text())
    assert info["global_batch_size"] == 8 * 2  # two problems' 8 replies per optimizer step, split over 2 processes
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    form = [h[FORMAT] for h in history if FORMAT in h]
    assert len(form) == 2 and all(0 <= v <= 1 for v in form)
    assert json.loads((out / "grpo_report.json").read_text())["grpo"]["problems"] == 8
