"""Verifiable rewards for GRPO: is the final number right, and is the reply laid out as asked.

A completion is what the model wrote after the prompt. With thinking on, the prompt already opened the think
block (``<|im_start|>assistant\\n<think>\\n``, see ``utils.tokenizer.CHAT_TEMPLATE``), so a well-formed completion
is ``reasoning </think> answer`` followed by the end-of-turn token; with thinking off it is the answer alone.

Both rewards read the answer part only, never the reasoning: a number that appears only inside the think block
earns nothing. The final number of an answer is, in this order of precedence:

1. the content of ``\\boxed{...}`` (every box in the answer must hold the same value);
2. the number after the last "答案是" / "答案为" / "答案：" / "The answer is" / "Answer:" marker, up to the end of
   that sentence (a sentence that names two different numbers hedges, and is wrong);
3. otherwise the answer's only number (an answer with two different numbers and no marker is ambiguous).

Numbers are read after Unicode NFKC normalisation (full-width digits and punctuation become ASCII): thousands
separators (``1,234``), decimals (``2.50``), fractions (``3/4``, ``\\frac{3}{4}``), a minus sign (``-`` or ``−``);
units and currency around them are ignored (``$18``, ``18 元``, ``50%``). Numbers written in words ("forty-two",
"四十二") are not read. Values are compared exactly as fractions, so ``0.75 == 3/4`` and ``18.00 == 18``.

A completion that did not end (it hit ``max_completion_length``) has no final answer: both rewards give it 0.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

from utils.data.chat import split_reasoning

# A number: optional minus (not glued to a preceding digit or letter: "3-2" is 3 and 2), thousands groups or plain
# digits, optional decimals, optional "/denominator". Digits are ASCII after NFKC.
_NUMBER = re.compile(
    r"(?<![0-9A-Za-z.])(?P<sign>-)?(?<![0-9.])(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?P<dec>\.[0-9]+)?"
    r"(?:\s*/\s*(?P<den>[0-9]+)(?![0-9.]))?"
)
_MARKER = re.compile(r"(?:最终)?答案\s*(?:是|为|：|:)|(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|:)", re.IGNORECASE)
# Where the marked sentence ends: Chinese full stops, a newline, or a period/semicolon that is not a decimal point.
_SENTENCE_END = re.compile(r"[。！？!?;\n]|\.(?![0-9])")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*)\s*\}\s*\{\s*([^{}]*)\s*\}")
_BOXED = "\\boxed"
# GSM8K writes the reference after "####" at the end of its worked solution.
REFERENCE_MARK = "####"


@dataclass(frozen=True)
class Judged:
    """What the rewards see in one completion."""

    answer: str | None  # the answer part; None: the think block never closed (or the completion did not end)
    well_formed: bool  # one think block (with thinking), no stray think tags, and it ended
    value: Fraction | None  # the final number of the answer, None when there is none (or several)


def normalize(text: str) -> str:
    """NFKC (full-width digits, commas and slashes become ASCII), a Unicode minus becomes ``-``, LaTeX's
    ``\\frac{a}{b}`` becomes ``a/b`` and its ``{,}`` thousands separator a comma; ``$`` signs go."""
    text = unicodedata.normalize("NFKC", text).replace("\u2212", "-").replace("{,}", ",").replace("$", "")
    return _FRAC.sub(r"\1/\2", text)


def numbers(text: str) -> list[Fraction]:
    """Every number in already-normalised ``text``, in order, as exact fractions (a zero denominator is skipped)."""
    values = []
    for match in _NUMBER.finditer(text):
        value = Fraction(match["int"].replace(",", "") + (match["dec"] or ""))
        if match["den"] is not None:
            if int(match["den"]) == 0:
                continue
            value /= int(match["den"])
        values.append(-value if match["sign"] else value)
    return values


def _single(values: list[Fraction]) -> Fraction | None:
    """The value when every number agrees, else None (none, or a hedge between different numbers)."""
    return values[0] if values and all(v == values[0] for v in values) else None


def _boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}``, braces balanced (``\\boxed{\\frac{3}{4}}`` works)."""
    contents, start = [], text.find(_BOXED)
    while start != -1:
        brace = text.find("{", start + len(_BOXED))
        depth, end = 0, None
        if brace != -1 and not text[start + len(_BOXED) : brace].strip():
            for i in range(brace, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    end = i
                    break
        if end is None:
            break
        contents.append(text[brace + 1 : end])
        start = text.find(_BOXED, end)
    return contents


def final_number(answer: str) -> Fraction | None:
    """The final number of an answer part, by the precedence in the module docstring; None if there is none."""
    boxed = _boxed_contents(answer)
    if boxed:
        return _single([_single(numbers(normalize(box))) for box in boxed]) if all(boxed) else None
    text = normalize(answer)
    markers = list(_MARKER.finditer(text))
    if markers:
        tail = text[markers[-1].end() :].lstrip()
        end = _SENTENCE_END.search(tail)
        return _single(numbers(tail[: end.start()] if end else tail))
    return _single(numbers(text))


def reference_number(solution: str) -> Fraction | None:
    """The reference of a GSM8K-style worked solution: the number after the last ``####`` (``#### 1,234``)."""
    if REFERENCE_MARK not in solution:
        return None
    return _single(numbers(normalize(solution.rsplit(REFERENCE_MARK, 1)[1])))


def judge(text: str, thinking: bool, ended: bool = True) -> Judged:
    """Split a completion into reasoning and answer and read its final number (see the module docstring)."""
    reasoning, answer, tags_ok = split_reasoning(text, thinking)
    if answer is None or not ended:
        return Judged(None, False, None)
    value = final_number(answer) if tags_ok else None
    well_formed = tags_ok and bool(answer.strip()) and (not thinking or bool(reasoning.strip()))
    return Judged(answer, well_formed, value)


def _texts(completions: Sequence) -> list[str]:
    """TRL passes conversational completions as ``[[{"role": "assistant", "content": ...}]]``, plain ones as text."""
    return [c if isinstance(c, str) else c[0]["content"] for c in completions]


def _ended(completion_ids: Sequence[Sequence[int]] | None, count: int, eos_ids: Sequence[int]) -> list[bool]:
    """Whether each completion ended with an end-of-turn token (TRL keeps it as the last id); without ids, all did."""
    if completion_ids is None:
        return [True] * count
    return [bool(ids) and ids[-1] in eos_ids for ids in completion_ids]


def correctness_reward(
    completions: Sequence,
    reference: Sequence[str],
    thinking: bool,
    eos_ids: Sequence[int] = (),
    completion_ids: Sequence[Sequence[int]] | None = None,
    **kwargs,
) -> list[float]:
    """1.0 when the answer part's final number equals the reference number, else 0.0 (TRL's reward signature:
    ``reference`` is the dataset column, ``thinking`` and ``eos_ids`` are bound with ``functools.partial``)."""
    texts = _texts(completions)
    ended = _ended(completion_ids, len(texts), eos_ids)
    rewards = []
    for text, ref, done in zip(texts, reference, ended):
        value = judge(text, thinking, done).value
        rewards.append(float(value is not None and value == Fraction(ref)))
    return rewards


def format_reward(
    completions: Sequence,
    thinking: bool,
    eos_ids: Sequence[int] = (),
    completion_ids: Sequence[Sequence[int]] | None = None,
    **kwargs,
) -> list[float]:
    """1.0 when the reply is laid out as asked, else 0.0: with thinking, one closed think block with some
    reasoning, then an answer; without, an answer with no think tags. The answer must state a final number
    (right or wrong) and the completion must have ended."""
    texts = _texts(completions)
    ended = _ended(completion_ids, len(texts), eos_ids)
    rewards = []
    for text, done in zip(texts, ended):
        judged = judge(text, thinking, done)
        rewards.append(float(judged.well_formed and judged.value is not None))
    return rewards


def problem_scores(generations: list, references: list[str], thinking: bool) -> dict:
    """What a model did on held-out math problems (``utils.generation.Generation`` replies): the share answered
    right (as ``correctness_reward`` counts), laid out as asked (``format_reward``), ended at an end-of-turn token,
    and the mean reply length in tokens."""
    n = len(generations)
    judged = [judge(g.text, thinking, g.ended_with_eos) for g in generations]
    right = sum(j.value is not None and j.value == Fraction(ref) for j, ref in zip(judged, references))
    return {
        "problems": n,
        "correct": right / n,
        "well_formed": sum(j.well_formed and j.value is not None for j in judged) / n,
        "ended": sum(g.ended_with_eos for g in generations) / n,
        "mean_tokens": sum(len(g.token_ids) for g in generations) / n,
    }


def write_problem_report(report: dict, output_dir: str | Path) -> None:
    """``grpo_report.json`` and ``.md``: the start checkpoint and the trained model side by side."""
    out = Path(output_dir)
    (out / "grpo_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    rows = [
        f"| {name} | {s['correct']:.1%} | {s['well_formed']:.1%} | {s['ended']:.1%} | {s['mean_tokens']:.1f} |"
        for name, s in (("start", report["start"]), ("GRPO", report["grpo"]))
    ]
    lines = [
        f"# GRPO report ({report['start']['problems']} held-out problems, greedy, thinking "
        f"{'on' if report['thinking'] else 'off'})",
        "",
        "| model | correct | one think block, then a stated number | ended | mean reply tokens |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Start: {report['start_checkpoint']}. Examples (GRPO):",
        "",
        *[f"- {e['question']!r} (reference {e['reference']}) -> {e['reply']!r}" for e in report["examples"]],
        "",
    ]
    (out / "grpo_report.md").write_text("\n".join(lines), encoding="utf-8")


def reward_functions(thinking: bool, eos_ids: Sequence[int]) -> list[Callable]:
    """The rewards GRPO sums (weights: GRPOConfig's ``reward_weights``, in this order), bound to the thinking switch
    and to the ids that end a completion. TRL logs each as ``rewards/<function name>/mean``."""
    bound = {"thinking": thinking, "eos_ids": tuple(eos_ids)}
    return [partial(correctness_reward, **bound), partial(format_reward, **bound)]
