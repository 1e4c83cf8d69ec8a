"""``run.sh plan``: the figures of a full recipe against hand arithmetic, and a recipe that cannot fit its card."""

from __future__ import annotations

import math

import pytest

from tests.helpers import TINY_SHAPE
from tools import plan

H800_PEAK = 989e12
PARAMS_1B = 998_810_624  # the widened Qwen2.5 of the full recipe (README)


def test_the_full_pt_recipe_on_upstreams_machine_by_hand():
    """configs/pt_full.yaml on 6 x H800: 1,152 sequences of 1,024 tokens a step over upstream's 15.95B tokens minus
    the 0.1% held out; 6N + attention FLOPs per token; 12 bytes a parameter per checkpoint (fp32 weights + Adam)."""
    p = plan.plan_stage("pt", str(plan.REPO_ROOT / "configs/pt_full.yaml"), {}, 6, "h800", memory=False)
    tokens = 15_952_379_904 * (1 - 0.001)
    assert p.global_batch == 12 * 16 * 6 == 1152
    assert p.steps == math.ceil(tokens / 1024 / 1152)
    flops = tokens * (6 * PARAMS_1B + 12 * 48 * 1024 * 1024)
    assert p.time["flops"] == pytest.approx(flops, rel=1e-9)
    assert p.time["hours at upstream's 20% MFU"] == pytest.approx(flops / (6 * H800_PEAK * 0.2) / 3600, rel=1e-9)
    # Upstream measured 24.7 h for this run at 20% MFU: the arithmetic reproduces it.
    assert 24 < p.time["hours at upstream's 20% MFU"] < 25.5
    assert p.disk["checkpoint"] == PARAMS_1B * (4 + 8) and p.disk["checkpoints_kept"] == 3
    assert p.disk["cache"] == pytest.approx(tokens * 4)
    assert p.data["download"] == sum(
        plan.parse_size(s)
        for s in (
            "371M",
            "267M",
            "5.1G",
            "273M",
            "8.7G",
            "2.2G",
            "4.5G",
            "172M",
            "319M",
            "1.9G",
            "718M",
            "1.6G",
            "1.5G",
            "512M",
            "1.6G",
            "1.7G",
            "1.5G",
            "1.4G",
            "3.1G",
            "3.1G",
        )
    )
    # A recipe value given as a flag changes the plan like it changes the run.
    bigger = plan.plan_stage(
        "pt",
        str(plan.REPO_ROOT / "configs/pt_full.yaml"),
        {"per_device_train_batch_size": 24},
        6,
        "h800",
        memory=False,
    )
    assert bigger.global_batch == 2304 and bigger.steps == math.ceil(tokens / 1024 / 2304)


def test_sft_and_dpo_steps_follow_packing_and_the_held_out_pairs():
    sft = plan.plan_stage("sft", str(plan.REPO_ROOT / "configs/sft_full.yaml"), {}, 6, "h800", memory=False)
    conversations = (7_449_106 + 1_456_927) * (1 - 0.001)
    assert sft.steps == 3 * math.ceil(conversations / 1.9 / 1152)
    padded = plan.plan_stage(
        "sft", str(plan.REPO_ROOT / "configs/sft_full.yaml"), {"layout": "one_per_row"}, 6, "h800", memory=False
    )
    assert padded.steps == 3 * math.ceil(conversations / 1152)  # upstream's 7,730 steps per epoch
    dpo = plan.plan_stage("dpo", str(plan.REPO_ROOT / "configs/dpo_full.yaml"), {}, 6, "h800", memory=False)
    pairs = 59_338 + 100
    assert dpo.steps == 3 * math.ceil((pairs - round(pairs * 0.05)) / 384)


def test_a_recipe_that_cannot_fit_the_card_says_so(monkeypatch):
    """Per device: the estimate with gradients and optimizer state sharded over the GPUs (ZeRO-2), plus the CUDA
    context; the table says when that is more than the card holds."""
    import benchmarks.memory

    row = {"peak": 55.6, "gradients": 3.7, "optimizer state": 7.4, "other": 0.0}
    monkeypatch.setattr(benchmarks.memory, "estimate", lambda setup: row)
    one = plan.plan_stage("pt", str(plan.REPO_ROOT / "configs/pt_full.yaml"), {}, 1, "t4", memory=True)
    assert one.memory["per_device_gib"] == pytest.approx(55.6 + 1.5) and not one.memory["fits"]
    assert "DOES NOT FIT in 14.6 GiB" in plan.render([one], 1, "t4")
    six = plan.plan_stage("pt", str(plan.REPO_ROOT / "configs/pt_full.yaml"), {}, 6, "h800", memory=True)
    assert six.memory["per_device_gib"] == pytest.approx(55.6 - (5 / 6) * (3.7 + 7.4) + 1.5) and six.memory["fits"]
    assert "fits" in plan.render([six], 6, "h800")


def test_the_plan_command_estimates_memory_for_real_on_a_small_shape(capsys, tmp_path):
    """The whole command, the fake-tensor estimate included, on the T4 recipe shrunk by flags."""
    small = [*TINY_SHAPE, "--vocab_size", "1024"]
    (p,) = plan.main(["pt", "--recipes", "t4", "--gpu", "t4", "--json", str(tmp_path / "plan.json"), *small])
    assert p.data["source"] == "counted in mini_data/pt" and p.data["rows"] > 200
    assert 0 < p.memory["estimate_gib"] < 1 and p.memory["fits"]
    out = capsys.readouterr().out
    assert "Plan for 1 x T4 16GB" in out and "| GPU memory per device |" in out
    assert (tmp_path / "plan.json").is_file()


def test_grpo_steps_count_problems_not_replies():
    """An optimizer step of GRPO trains on 8 replies to each of global batch / 8 problems; the held-out problems
    are never trained on; a reply is rolled out (2N per token) and trained on (6N), at most prompt + reply tokens."""
    grpo = plan.plan_stage("grpo", str(plan.REPO_ROOT / "configs/grpo_full.yaml"), {}, 6, "h800", memory=False)
    problems = 7_473 + 7_473 - 200
    assert grpo.global_batch == 384 and grpo.steps == math.ceil(problems / (384 // 8))
    assert grpo.per_step == "384 replies" and grpo.disk["cache"] == 0
    params, layers, hidden = plan.shape_parameters({}, "grpo")
    tokens = problems * 8 * (256 + 512)
    assert grpo.time["flops"] == pytest.approx(
        tokens * (6 * params + 12 * layers * hidden * 768) + tokens * 2 * params
    )
    assert "a lower bound" in plan.render([grpo], 6, "h800")
    with pytest.raises(SystemExit):
        plan.main(["grpo", "--recipes", "t4", "--no_memory"])
