"""End to end on CPU: each stage's main() trains a tiny model, and what it saves loads and generates."""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed
from trl import DPOConfig, DPOTrainer, SFTConfig

import mini_qwen_dpo
import mini_qwen_pt
import mini_qwen_sft
from tests.helpers import MINI_DATA, REAL_SAMPLES, TINY_SHAPE, needs_real_samples
from utils.data.dpo import encode_pair, preference_pair
from utils.modeling import build_model
from utils.train.args import parse_args
from utils.train.stage import FusedLMHeadTrainer


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def run_pt(tmp_path, tokenizer_dir, data_dir, *extra: str):
    argv = [
        "--data_dir",
        str(data_dir),
        "--tokenizer_name_or_path",
        str(tokenizer_dir),
        *TINY_SHAPE,
        "--vocab_size",
        "1024",
        "--block_size",
        "64",
        "--cache_dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(tmp_path / "pt"),
        "--max_steps",
        "20",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "5e-3",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--num_proc",
        "1",
        *extra,
    ]
    return mini_qwen_pt.main(*parse_args((mini_qwen_pt.PTArguments, TrainingArguments), argv))


def assert_all_changed(before: dict, model) -> None:
    after = model.state_dict()
    unchanged = [name for name, value in before.items() if torch.equal(value, after[name].cpu())]
    assert unchanged == []


def assert_loads_and_generates(path) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("李白", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert out.shape[1] == ids.shape[1] + 5
    config = json.loads((path / "generation_config.json").read_text())
    assert config["do_sample"] and config["repetition_penalty"] > 1
    return out[0].tolist()


@pytest.fixture(scope="module")
def pt_run(tmp_path_factory, small_tokenizer_dir):
    """The PT run most tests start from: 10% of the documents held out and scored every 10 steps."""
    tmp = tmp_path_factory.mktemp("pt")
    held = ["--holdout", "0.1", "--eval_strategy", "steps", "--eval_steps", "10", "--eval_max_blocks", "8"]
    return tmp, run_pt(tmp, small_tokenizer_dir, MINI_DATA / "pt", *held)


def test_pt_trains_on_mini_data(pt_run, small_tokenizer_dir):
    tmp, trainer = pt_run
    values = losses(trainer)
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3 - 0.3  # from ln(1000) = 6.9, clearly learning
    set_seed(42)
    shape = mini_qwen_pt.PTArguments(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=1024,
    )
    initial = build_model(shape, attn_implementation="sdpa", bos_token_id=None, eos_token_id=2, pad_token_id=0)
    assert_all_changed(initial.state_dict(), trainer.model)
    assert_loads_and_generates(tmp / "pt")
    assert (tmp / "pt" / "training_curves.png").stat().st_size > 1000
    info = json.loads((tmp / "pt" / "run_info.json").read_text())
    assert info["stage"] == "pt" and info["data"]["documents"] >= 200


def test_pt_holds_out_documents_and_logs_their_loss(pt_run):
    """The documents below the hash share never reach a training block; their loss is logged at every eval step and
    drawn in the loss panel beside the training loss."""
    from utils.data.parquet import find_parquet_files, heldout_fraction, read_rows
    from utils.plotting import find_log_history, panel_curves

    tmp, trainer = pt_run
    texts = [r["text"] for _, _, r in read_rows(find_parquet_files(MINI_DATA / "pt"), ["text"]) if r["text"].strip()]
    held = [text for text in texts if heldout_fraction(text) < 0.1]
    assert 0 < len(held) < len(texts) / 5
    meta = json.loads((tmp / "pt" / "run_info.json").read_text())["data"]
    assert meta["heldout_documents"] == len(held) and meta["documents"] == len(texts) - len(held)
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [10, 20] and all(math.isfinite(h["eval_loss"]) for h in evals)
    panels = panel_curves(find_log_history(tmp / "pt"))
    assert set(panels["loss"]) == {"loss", "eval_loss"}


def test_pt_compares_its_loss_with_a_reference_at_the_same_tokens(tmp_path, small_tokenizer_dir, caplog):
    """A reference curve (here a CSV of our own: tokens, loss) is looked up at the tokens each logged step has seen:
    one log line per log, the value in the log history, the curve in training_curves.png; a run far above it warns."""
    reference = tmp_path / "ref.csv"
    reference.write_text("tokens,loss\n0,5.0\n4096,1.0\n")  # 4 x 64 tokens a step: steps 1-16 inside it
    caplog.set_level(logging.INFO)
    trainer = run_pt(
        tmp_path,
        small_tokenizer_dir,
        MINI_DATA / "pt",
        "--max_steps",
        "6",
        "--warmup_steps",
        "1",
        "--reference_curve",
        str(reference),
    )
    logged = [h for h in trainer.state.log_history if "reference_loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4, 5, 6]
    assert logged[1]["reference_loss"] == pytest.approx(5.0 - 4.0 * 512 / 4096, abs=1e-4)  # step 2: 512 tokens
    assert "loss 6.9" in caplog.text and "at 512 tokens; ref had 4.5000 at the same point" in caplog.text
    # Loss ~6.9 against a reference of ~4: more than 10% above it after warmup, said once.
    assert caplog.text.count("above ref at the same point") == 1


def test_pt_fused_lm_head_matches_plain_loss(tmp_path, small_tokenizer_dir):
    """The fused, chunked LM head is an exact rewrite of logits + cross-entropy: same losses step by step."""
    steps = ["--max_steps", "4"]
    fused = run_pt(tmp_path / "fused", small_tokenizer_dir, MINI_DATA / "pt", *steps, "--fused_lm_head", "true")
    plain = run_pt(tmp_path / "plain", small_tokenizer_dir, MINI_DATA / "pt", *steps, "--fused_lm_head", "false")
    assert isinstance(fused, FusedLMHeadTrainer) and not isinstance(plain, FusedLMHeadTrainer)
    assert losses(fused) == pytest.approx(losses(plain), rel=1e-4)
    assert losses(fused)[0] == pytest.approx(6.93, abs=0.2)  # ln(1024): a fresh model, any loss would not do
    with pytest.raises(ValueError, match="label smoothing"):
        run_pt(
            tmp_path / "smooth",
            small_tokenizer_dir,
            MINI_DATA / "pt",
            *steps,
            "--fused_lm_head",
            "true",
            "--label_smoothing_factor",
            "0.1",
        )


@needs_real_samples
def test_pt_trains_on_real_samples(tmp_path, qwen_tokenizer_dir):
    trainer = run_pt(
        tmp_path,
        qwen_tokenizer_dir,
        REAL_SAMPLES / "pt",
        "--vocab_size",
        "151936",
        "--max_steps",
        "6",
        "--learning_rate",
        "1e-2",
    )
    values = losses(trainer)
    assert values[-1] < values[0]
    assert_loads_and_generates(tmp_path / "pt")


def test_pt_resume_continues_exactly(tmp_path, small_tokenizer_dir):
    full = run_pt(
        tmp_path / "a",
        small_tokenizer_dir,
        MINI_DATA / "pt",
        "--max_steps",
        "8",
        "--save_strategy",
        "steps",
        "--save_steps",
        "4",
    )
    # "Kill" run b after step 4: it only has what was saved then, and resumes from it.
    (tmp_path / "b" / "pt").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "pt" / "checkpoint-4", tmp_path / "b" / "pt" / "checkpoint-4")
    resumed = run_pt(
        tmp_path / "b",
        small_tokenizer_dir,
        MINI_DATA / "pt",
        "--max_steps",
        "8",
        "--save_strategy",
        "steps",
        "--save_steps",
        "4",
        "--resume_from_checkpoint",
        "auto",
    )
    after = [h["loss"] for h in resumed.state.log_history if "loss" in h and h["step"] > 4]
    assert len(after) == 4
    assert after == pytest.approx(losses(full)[4:], rel=1e-4)


@pytest.fixture(scope="module")
def stop_data(tmp_path_factory):
    """Short conversations a tiny model can learn in a few dozen steps, including when to stop."""
    folder = tmp_path_factory.mktemp("sft_data")
    conversations = [
        [{"from": "human", "value": q}, {"from": "gpt", "value": "Hello!"}] for q in ("Hi", "Hey", "Hello", "Yo")
    ]
    conversations.append([{"from": "system", "value": "Be kind."}, *conversations[0]])
    pq.write_table(pa.table({"id": list(range(5)), "conversations": conversations}), folder / "part.parquet")
    return folder


def run_sft(tmp_path, model_dir, data_dir, *extra: str):
    argv = [
        "--model_name_or_path",
        str(model_dir),
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(tmp_path / "sft"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--max_length",
        "128",
        "--max_steps",
        "100",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "3e-3",
        "--logging_steps",
        "5",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--activation_checkpointing",
        "false",
        *extra,
    ]
    return mini_qwen_sft.main(*parse_args((mini_qwen_sft.SFTArguments, SFTConfig), argv))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, pt_run, stop_data):
    tmp = tmp_path_factory.mktemp("sft")
    pt_dir = pt_run[0] / "pt"
    before = AutoModelForCausalLM.from_pretrained(pt_dir).state_dict()
    return tmp, run_sft(tmp, pt_dir, stop_data), before


def test_sft_trains_and_learns_to_stop(sft_run):
    tmp, trainer, before = sft_run
    values = losses(trainer)
    assert values[-1] < values[0] / 2
    assert_all_changed(before, trainer.model)
    shares = [h["real_token_share"] for h in trainer.state.log_history if "real_token_share" in h]
    assert shares and min(shares) > 0.5
    model = AutoModelForCausalLM.from_pretrained(tmp / "sft")
    tokenizer = AutoTokenizer.from_pretrained(tmp / "sft")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    reply = out[0, prompt["input_ids"].shape[1] :].tolist()
    assert reply[-1] == tokenizer.eos_token_id and len(reply) < 20
    assert tokenizer.decode(reply, skip_special_tokens=True) == "Hello!"


def test_sft_on_mini_data_packed_and_padded(tmp_path, pt_run):
    packed = run_sft(
        tmp_path / "p",
        pt_run[0] / "pt",
        MINI_DATA / "sft",
        "--max_steps",
        "4",
        "--max_length",
        "256",
        "--logging_steps",
        "1",
    )
    padded = run_sft(
        tmp_path / "q",
        pt_run[0] / "pt",
        MINI_DATA / "sft",
        "--max_steps",
        "4",
        "--max_length",
        "256",
        "--logging_steps",
        "1",
        "--layout",
        "one_per_row",
    )

    def mean_share(trainer):
        shares = [h["real_token_share"] for h in trainer.state.log_history if "real_token_share" in h]
        assert len(shares) == 4
        return sum(shares) / len(shares)

    assert mean_share(packed) > mean_share(padded)
    assert all(math.isfinite(v) for v in losses(packed) + losses(padded))


def run_dpo(tmp_path, model_dir, data_dir, *extra: str):
    argv = [
        "--model_name_or_path",
        str(model_dir),
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(tmp_path / "dpo"),
        "--max_length",
        "192",
        "--max_prompt_length",
        "64",
        "--holdout",
        "4",
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--activation_checkpointing",
        "false",
        *extra,
    ]
    return mini_qwen_dpo.main(*parse_args((mini_qwen_dpo.DPOArguments, DPOConfig), argv))


@pytest.mark.parametrize("source", ["mini_data", "real_samples"])
def test_dpo_trains_and_reports(tmp_path, sft_run, source):
    data = MINI_DATA / "dpo" if source == "mini_data" else REAL_SAMPLES / "dpo"
    if not data.is_dir():
        pytest.skip(f"{data} not found")
    sft_dir = sft_run[0] / "sft"
    before = AutoModelForCausalLM.from_pretrained(sft_dir).state_dict()
    trainer = run_dpo(tmp_path, sft_dir, data)
    history = trainer.state.log_history
    assert all(math.isfinite(v) for v in losses(trainer))
    assert any("rewards/accuracies" in h and "rewards/margins" in h for h in history)
    assert_all_changed(before, trainer.model)
    report = json.loads((tmp_path / "dpo" / "preference_report.json").read_text())
    assert report["heldout_pairs"] == 4
    for key in ("reference_prefers_chosen", "dpo_prefers_chosen"):
        assert report[key] in (0.0, 0.25, 0.5, 0.75, 1.0)  # a share of the 4 held-out pairs
    assert math.isfinite(report["dpo_mean_reward_margin"]) and report["dpo_mean_reward_margin"] != 0
    assert "SFT reference" in (tmp_path / "dpo" / "preference_report.md").read_text()
    assert_loads_and_generates(tmp_path / "dpo")


def test_dpo_overfits_a_handful_of_pairs(tmp_path, sft_run):
    rows = [
        {
            "prompt": q,
            "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": good}],
            "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}],
            "id": i,
        }
        for i, (q, good, bad) in enumerate(
            [
                ("Hi", "Hello!", "Go away."),
                ("2+2?", "4", "5"),
                ("Capital of France?", "Paris", "Rome"),
                ("Sky color?", "Blue", "Green"),
            ]
        )
    ]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "pairs.parquet")
    trainer = run_dpo(
        tmp_path,
        sft_run[0] / "sft",
        tmp_path / "data",
        "--holdout",
        "0",
        "--max_steps",
        "25",
        "--beta",
        "0.5",
        "--learning_rate",
        "5e-3",
    )
    last = [h for h in trainer.state.log_history if "rewards/accuracies" in h][-1]
    assert last["rewards/accuracies"] == 1.0 and last["rewards/margins"] > 0


def test_nan_loss_stops_without_saving(tmp_path, small_tokenizer_dir, monkeypatch):
    real_build = mini_qwen_pt.build_model
    calls = []

    def poisoned(*args, **kwargs):
        """The real model, whose logits turn NaN from the third forward pass on (a diverged run)."""
        model = real_build(*args, **kwargs)

        def hook(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) > 2 else output

        model.lm_head.register_forward_hook(hook)
        return model

    monkeypatch.setattr(mini_qwen_pt, "build_model", poisoned)
    with pytest.raises(RuntimeError, match=r"NaN/inf at step 3.*Last good checkpoint: none"):
        run_pt(tmp_path, small_tokenizer_dir, MINI_DATA / "pt", "--max_steps", "6")
    assert not (tmp_path / "pt" / "model.safetensors").exists()


def test_end_of_run_samples_are_logged(tmp_path, pt_run, stop_data, caplog):
    with caplog.at_level(logging.INFO):
        run_sft(tmp_path, pt_run[0] / "pt", stop_data, "--max_steps", "2")
    assert "Sample '李白是谁？' -> " in caplog.text and "Sample 'who are you?' -> " in caplog.text


def test_missing_optional_packages_fall_back_with_one_line_each(tmp_path, small_tokenizer_dir, caplog, monkeypatch):
    """On a CPU (--use_cpu: also on a GPU machine) without bitsandbytes, whatever is installed here."""
    import utils.train.hardware

    monkeypatch.setattr(utils.train.hardware, "installed", lambda package: package != "bitsandbytes")
    with caplog.at_level(logging.INFO):
        trainer = run_pt(
            tmp_path,
            small_tokenizer_dir,
            MINI_DATA / "pt",
            "--max_steps",
            "2",
            "--use_liger_kernel",
            "true",
            "--optim",
            "adamw_bnb_8bit",
            "--use_cpu",
            "true",
        )
    assert caplog.text.count("use_liger_kernel: no CUDA GPU") == 1 and not trainer.args.use_liger_kernel
    assert caplog.text.count("bitsandbytes is not installed") == 1 and trainer.args.optim == "adamw_torch"
    assert len(losses(trainer)) == 2 and all(math.isfinite(v) for v in losses(trainer))


def test_dpo_starts_from_the_checkpoint_that_ended_sft_epoch_two(tmp_path, pt_run, stop_data):
    """SFT records which checkpoint closes each epoch; the full DPO recipe resolves its start through it."""
    run_sft(
        tmp_path,
        pt_run[0] / "pt",
        stop_data,
        "--max_steps",
        "-1",
        "--num_train_epochs",
        "3",
        "--save_strategy",
        "epoch",
        "--logging_steps",
        "1",
    )
    sft_dir = tmp_path / "sft"
    recorded = json.loads((sft_dir / "run_info.json").read_text())["epoch_checkpoints"]
    assert sorted(recorded) == ["1", "2", "3"] and all((sft_dir / name).is_dir() for name in recorded.values())
    steps = [int(name.split("-")[1]) for name in recorded.values()]
    assert steps == sorted(steps) and steps[0] > 0
    script, _ = parse_args(
        (mini_qwen_dpo.DPOArguments, DPOConfig),
        ["--config", "configs/dpo_full.yaml", "--model_name_or_path", str(sft_dir)],
    )
    # The arguments stay as given (a resume compares them); the start is resolved where it is used.
    assert script.model_name_or_path == str(sft_dir) and script.sft_epoch == 2
    assert mini_qwen_dpo.start_checkpoint(script) == str(sft_dir / recorded["2"])
    epoch_four = ["--config", "configs/dpo_full.yaml", "--model_name_or_path", str(sft_dir), "--sft_epoch", "4"]
    with pytest.raises(SystemExit, match=r"--sft_epoch 4: the SFT run in .* recorded checkpoints for epochs \['1', "):
        parse_args((mini_qwen_dpo.DPOArguments, DPOConfig), epoch_four)
    with pytest.raises(SystemExit, match="holds no SFT run record"):
        parse_args(
            (mini_qwen_dpo.DPOArguments, DPOConfig),
            ["--config", "configs/dpo_full.yaml", "--model_name_or_path", str(pt_run[0] / "pt")],
        )


def test_dpo_trains_on_the_rows_we_tokenized(tmp_path, sft_run):
    """TRL has no public switch to skip its own DPO tokenization, so PreTokenizedDPOTrainer overrides the one private
    method that does it. This fails if TRL renames it, changes its signature or stops calling it: the trainer
    would then re-tokenize, and special-token text in a reply would become a control token again."""
    assert list(inspect.signature(DPOTrainer._prepare_dataset).parameters) == [
        "self",
        "dataset",
        "processing_class",
        "args",
        "dataset_name",
    ]
    question, reply = "What ends a turn?", "The marker <|im_end|> does."
    user = {"role": "user", "content": question}

    def pair(good: str, bad: str) -> dict:
        return {
            "chosen": [user, {"role": "assistant", "content": good}],
            "rejected": [user, {"role": "assistant", "content": bad}],
        }

    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.Table.from_pylist([pair(reply, "No idea."), pair("A marker.", "Nothing.")]),
        tmp_path / "data" / "pairs.parquet",
    )
    trainer = run_dpo(
        tmp_path,
        sft_run[0] / "sft",
        tmp_path / "data",
        "--holdout",
        "0",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
    )
    tokenizer = AutoTokenizer.from_pretrained(sft_run[0] / "sft")
    ours = encode_pair(tokenizer, preference_pair(pair(reply, "No idea."), tokenizer, 64))
    rows = trainer.train_dataset.to_list()
    assert any(row["chosen_ids"] == ours["chosen_ids"] and row["prompt_ids"] == ours["prompt_ids"] for row in rows)
    assert ours["chosen_ids"].count(tokenizer.eos_token_id) == 1  # the reply's marker text is text


def test_the_dpo_report_scores_in_the_inference_dtype_one_model_at_a_time(tmp_path, monkeypatch):
    """On an Ampere GPU with flash-attention-2 (faked where the decision is taken), the held-out report loads the
    reference, then the policy, each in bf16 (flash-attn refuses fp32) with the training attention, the first freed
    before the second is loaded."""
    import gc
    import weakref

    import utils.evaluation
    import utils.train.hardware
    from benchmarks.engine_probe import HARDWARE
    from utils.modeling import ModelShapeArguments

    monkeypatch.setattr(utils.train.hardware, "detect_hardware", lambda use_cpu=False: HARDWARE["a100"])
    loads, alive = [], []

    def load(path, attn, dtype):
        gc.collect()
        loads.append((path, attn, dtype, [ref() is not None for ref in alive]))
        shape = ModelShapeArguments(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=64,
        )
        model = build_model(shape, attn_implementation="sdpa")
        alive.append(weakref.ref(model))
        return model

    monkeypatch.setattr(utils.evaluation, "load_causal_lm", load)
    pairs = [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6, 7, 8]}] * 3
    report = utils.evaluation.heldout_preference_report(
        "out/dpo", "out/sft", pairs, 0.1, 64, "flash_attention_2", "cpu"
    )
    assert [(path, attn, dtype) for path, attn, dtype, _ in loads] == [
        ("out/sft", "flash_attention_2", torch.bfloat16),
        ("out/dpo", "flash_attention_2", torch.bfloat16),
    ]
    assert loads[1][3] == [False]  # the reference was gone when the policy was loaded
    assert report["heldout_pairs"] == 3 and 0 <= report["dpo_prefers_chosen"] <= 1
