"""Math word problems with a checkable final number: GRPO's prompts and references, and SFT's reasoning
conversations.

Every file has GSM8K's layout (openai/gsm8k ``main``, our ``mini_data/grpo`` and the Chinese counterpart as
``prepare.sh --stage grpo`` writes it): ``question``, and ``answer``, a worked solution whose last line is
``#### <number>``. A file may carry a ``split`` column (GSM8K_zh ships its test questions in the same file):
only ``train`` rows are read, the rest are counted as held out.

For GRPO a row becomes ``prompt`` (the question as one user turn; the trainer renders it with the chat template,
the generation prompt and, with thinking on, the opened think block) and ``reference`` (the final number, exact,
as text: ``72``, ``-3``, ``5/2``). Skipped and counted: invalid UTF-8, an empty question, a solution without a
readable final number, a question that spells a special token (TRL renders prompts with ``apply_chat_template``,
which would turn that text into a control token), a prompt longer than ``max_prompt_length`` tokens, and a
question seen before.

For SFT (``reasoning_messages``) a row becomes a conversation whose reply reasons first: the worked solution is
the ``reasoning_content`` (GSM8K's calculator notes ``<<48/2=24>>`` removed) and the answer states the final
number ("The answer is 72." or "答案是 72。", in the question's language), the form the rewards read best.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from utils.data.chat import SkipRow, prompt_ids, special_texts
from utils.data.parquet import INVALID_UTF8, DataError, SkipCounter, find_parquet_files, open_parquet, read_rows
from utils.rewards import REFERENCE_MARK, reference_number

logger = logging.getLogger(__name__)

PROBLEM_COLUMNS = ["question", "answer"]
TRAIN_SPLIT = "train"
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_CJK = re.compile(r"[\u4e00-\u9fff]")
ANSWER_STATEMENT = {"zh": "答案是 {}。", "en": "The answer is {}."}


@dataclass
class Problem:
    question: str
    reference: str  # the exact final number, as text Fraction() reads

    def prompt(self) -> list[dict]:
        return [{"role": "user", "content": self.question}]


def problem_from_row(row: dict, specials: list[str]) -> Problem:
    """A GSM8K-layout row -> ``Problem``, or raise ``SkipRow``."""
    question, solution = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not isinstance(solution, str):
        raise SkipRow("missing text")
    if not question.strip():
        raise SkipRow("empty question")
    if any(s in question for s in specials):
        raise SkipRow("question spells a special token")
    value = reference_number(solution)
    if value is None:
        raise SkipRow("no final number (#### N) in the solution")
    return Problem(question.strip(), str(value))


def problem_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """``(row index, row)`` of one problem file; raise ``SkipRow`` from a row's check, not here: a row that is not
    valid UTF-8, or belongs to a split other than train, comes back as a ``SkipRow`` instance in place of the row."""
    names = open_parquet(path, PROBLEM_COLUMNS).schema_arrow.names
    columns = PROBLEM_COLUMNS + (["split"] if "split" in names else [])
    for _, index, record in read_rows([path], columns):
        if record is None:
            yield index, SkipRow(INVALID_UTF8)
        elif record.get("split", TRAIN_SPLIT) != TRAIN_SPLIT:
            yield index, SkipRow(f"{record['split']} split: held out")
        else:
            yield index, record


def load_problems(data_dir: str, tokenizer, max_prompt_length: int | None, thinking: bool):
    """Problems under ``data_dir`` and a summary of what was kept and skipped (per reason)."""
    files = find_parquet_files(data_dir)
    specials = special_texts(tokenizer)
    skips, problems, seen, total = SkipCounter(), [], set(), 0
    for path in files:
        for index, record in problem_rows(path):
            total += 1
            try:
                if isinstance(record, SkipRow):
                    raise record
                problem = problem_from_row(record, specials)
                if problem.question in seen:
                    raise SkipRow("duplicate question")
                length = len(prompt_ids(tokenizer, problem.prompt(), thinking=thinking))
                if max_prompt_length is not None and length > max_prompt_length:
                    raise SkipRow("prompt longer than max_prompt_length")
            except SkipRow as reason:
                skips.skip(str(reason), f"{path}, row {index}")
                continue
            except (TypeError, AttributeError) as err:
                raise DataError(f"{path}, row {index}: malformed problem row ({err})") from err
            seen.add(problem.question)
            problems.append(problem)
    skips.log("GRPO problems", total)
    summary = {"files": [str(f) for f in files], "rows": total, "kept": len(problems), "skipped": dict(skips)}
    return problems, summary


def as_dataset(problems: list[Problem]) -> Dataset:
    """TRL's conversational prompt dataset; ``reference`` reaches the reward functions as a keyword argument."""
    return Dataset.from_dict({"prompt": [p.prompt() for p in problems], "reference": [p.reference for p in problems]})


def reasoning_messages(row: dict) -> list[dict]:
    """A GSM8K-layout row -> ``[user, assistant]`` whose reply holds the worked solution as ``reasoning_content``
    and states the final number as its ``content``; raise ``SkipRow`` when the row has no usable solution."""
    problem = problem_from_row(row, specials=[])
    solution, final = row["answer"].rsplit(REFERENCE_MARK, 1)
    reasoning = _CALCULATOR_NOTE.sub("", solution).strip()
    if not reasoning:
        raise SkipRow("no worked solution before the final number")
    language = "zh" if _CJK.search(problem.question) else "en"
    answer = ANSWER_STATEMENT[language].format(final.strip())
    return [
        {"role": "user", "content": problem.question},
        {"role": "assistant", "content": answer, "reasoning_content": reasoning},
    ]
