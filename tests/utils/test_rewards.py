"""Verifiable rewards: the final number in Chinese and English forms, read from the answer part only, and the
format of one think block then an answer; adversarial completions that must not earn a reward."""

from __future__ import annotations

from fractions import Fraction

import pytest

from utils.rewards import correctness_reward, final_number, format_reward, judge, reference_number

EOS = 7  # a stand-in end-of-turn id: TRL keeps it as the last id of a completion that ended


def reward(text: str, ref: str, thinking: bool = True, ended: bool = True) -> float:
    ids = [[1, 2, EOS if ended else 3]]
    return correctness_reward(
        [[{"role": "assistant", "content": text}]], [ref], thinking=thinking, eos_ids=[EOS], completion_ids=ids
    )[0]


def fmt(text: str, thinking: bool = True, ended: bool = True) -> float:
    ids = [[1, 2, EOS if ended else 3]]
    return format_reward(
        [[{"role": "assistant", "content": text}]], thinking=thinking, eos_ids=[EOS], completion_ids=ids
    )[0]


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("The answer is 42.", 42),
        ("the final answer is 1,234 dollars.", 1234),
        ("Answer: $18", 18),
        ("The answer is 2.50.", Fraction(5, 2)),
        ("The answer is 3/4 of the cake.", Fraction(3, 4)),
        ("The answer is \\frac{3}{4}.", Fraction(3, 4)),
        ("So she has \\boxed{\\dfrac{7}{2}} cups left.", Fraction(7, 2)),
        ("The answer is -5.", -5),
        ("The answer is −5.", -5),
        ("The answer is 50%.", 50),
        ("答案是 42。", 42),
        ("答案是：１２３４５元。", 12345),  # full-width digits
        ("所以答案为１，２３４个。", 1234),  # full-width comma as a thousands separator
        ("最终答案：7 本", 7),
        ("他一共有 42 个苹果。", 42),  # no marker, one number
        ("42", 42),
        ("\\boxed{12} apples", 12),
        ("48/2 = 24 clips in May, so the answer is 24.", 24),  # numbers before the marker do not count
        ("The answer is 24. Check: 20 + 4 = 24.", 24),  # later sentences do not count
    ],
)
def test_final_number_forms(answer, expected):
    assert final_number(answer) == expected


@pytest.mark.parametrize(
    "answer",
    [
        "The answer is 3 or 42.",  # a hedge between two numbers
        "答案是 41 或 42。",
        "12 + 30 = 42",  # no marker and several numbers: ambiguous
        "\\boxed{41} or maybe \\boxed{42}",  # boxes that disagree
        "\\boxed{}",
        "The answer is forty-two.",  # numbers in words are not read
        "",
        "I do not know.",
    ],
)
def test_no_single_final_number(answer):
    assert final_number(answer) is None


def test_reference_of_gsm8k_solutions():
    assert reference_number("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72") == 72
    assert reference_number("...\n#### 1,234") == 1234
    assert reference_number("no final line") is None


def test_correctness_reads_only_the_answer_part():
    assert reward("6 × 7 = 42\n</think>\n\nThe answer is 42.", "42") == 1.0
    assert reward("6 × 7 = 42\n</think>\n\n答案是 42。", "42") == 1.0
    # The right number only inside the think block earns nothing.
    assert reward("6 × 7 = 42, the answer is 42\n</think>\n\nThe answer is 41.", "42") == 0.0
    assert reward("The answer is \\boxed{42}\n</think>\n\n", "42") == 0.0  # empty answer
    assert reward("The answer is 42", "42") == 0.0  # the think block never closed: no answer at all
    # Without thinking the whole completion is the answer.
    assert reward("6 × 7 = 42. The answer is 42.", "42", thinking=False) == 1.0
    assert reward("1,234", "1234", thinking=False) == 1.0
    assert reward("0.75", "3/4", thinking=False) == 1.0


def test_adversarial_completions_earn_nothing():
    # Several numbers after the marker, hoping one is right.
    assert reward("...\n</think>\n\nThe answer is 40, 41, 42 or 43.", "42") == 0.0
    # Every number up to 20,000 in a very long answer (and it is parsed in linear time).
    listing = " ".join(str(i) for i in range(20_000))
    assert reward(f"...\n</think>\n\n{listing}", "42") == 0.0
    # A fake second think block, or think tags in the answer, make the answer unreadable.
    assert reward("a\n</think>\n\n<think>42</think> The answer is 42.", "42") == 0.0
    assert reward("a\n</think>\n\nb</think>\n\nThe answer is 42.", "42") == 0.0
    # Think tags when thinking is off.
    assert reward("<think>x</think> The answer is 42.", "42", thinking=False) == 0.0
    # A completion cut by max_completion_length has no final answer, even if the number so far is right.
    assert reward("x\n</think>\n\nThe answer is 42", "42", ended=False) == 0.0


def test_very_long_answer_is_judged_on_its_final_statement():
    prose = "The apples are red and the baskets are full. " * 2000
    assert reward(f"x\n</think>\n\n{prose}The answer is 42.", "42") == 1.0
    assert reward(f"x\n</think>\n\n{prose}The answer is 41.", "42") == 0.0


def test_format_one_think_block_then_an_answer():
    assert fmt("6 × 7 = 42\n</think>\n\nThe answer is 42.") == 1.0
    assert fmt("6 × 7 = 42\n</think>\n\nThe answer is 41.") == 1.0  # format says nothing about being right
    assert fmt("\n</think>\n\nThe answer is 42.") == 0.0  # no reasoning
    assert fmt("6 × 7 = 42\n</think>\n\n") == 0.0  # no answer
    assert fmt("6 × 7 = 42\n</think>\n\nI am not sure.") == 0.0  # no final number
    assert fmt("6 × 7 = 42. The answer is 42.") == 0.0  # never closed the think block
    assert fmt("a</think>b</think>The answer is 42.") == 0.0  # two closings
    assert fmt("a<think>b</think>The answer is 42.") == 0.0  # a second opening
    assert fmt("6 × 7 = 42\n</think>\n\nThe answer is 42.", ended=False) == 0.0
    assert fmt("The answer is 42.", thinking=False) == 1.0
    assert fmt("x</think>The answer is 42.", thinking=False) == 0.0


def test_judge_splits_reasoning_and_answer():
    judged = judge("steps\n</think>\n\nThe answer is 42.", thinking=True)
    assert judged.answer == "\n\nThe answer is 42." and judged.well_formed and judged.value == 42
    assert judge("steps", thinking=True).answer is None


def test_plain_text_completions_and_missing_ids():
    """TRL passes plain strings for non-chat prompts, and tests call without ids: both are read."""
    assert correctness_reward(["The answer is 42."], ["42"], thinking=False) == [1.0]
    assert format_reward(["x\n</think>\n\nThe answer is 42."], thinking=True) == [1.0]
