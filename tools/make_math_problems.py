"""Our own arithmetic word problems in Chinese and English, with worked solutions and exact answers.

    python -m tools.make_math_problems                      # what mini_data/grpo holds (seeded: same files every run)
    python -m tools.make_math_problems --train 2000 --sft 500 --test 500 --output_dir data/grpo_synthetic

Each row has GSM8K's layout, so one reader serves both: ``question``, ``answer`` (the worked solution, then
``#### <number>`` on its last line), plus ``language`` (zh or en). The problems come from the templates below,
one to three operations on small whole numbers (divisions always come out even). Three disjoint sets: ``train/``
feeds the GRPO demo; ``sft/`` is a few dozen worked solutions from which the demo SFT learns the thinking layout
(a cold start: GRPO needs some replies in that layout to reward); ``test/`` is never trained on. The text is
written here, from scratch: none of it comes from a benchmark.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

NAMES = {
    "en": ["Tom", "Anna", "Lily", "Ben", "Mia", "Sam", "Leo", "Emma"],
    "zh": ["小明", "小红", "小华", "小丽", "小刚", "小芳", "小军", "小雨"],
}
# (singular, plural) in English; (noun, measure word) in Chinese.
ITEMS = {
    "en": [
        ("apple", "apples"),
        ("pencil", "pencils"),
        ("book", "books"),
        ("sticker", "stickers"),
        ("marble", "marbles"),
        ("cookie", "cookies"),
        ("card", "cards"),
        ("shell", "shells"),
    ],
    "zh": [
        ("苹果", "个"),
        ("铅笔", "支"),
        ("书", "本"),
        ("贴纸", "张"),
        ("弹珠", "颗"),
        ("饼干", "块"),
        ("卡片", "张"),
        ("贝壳", "个"),
    ],
}


@dataclass
class Problem:
    question: str
    steps: list[str]
    result: int


def _add(rng: random.Random, lang: str, name: str, item: tuple[str, str]) -> Problem:
    a, b = rng.randint(2, 50), rng.randint(2, 50)
    r = a + b
    if lang == "en":
        q = f"{name} has {a} {item[1]}. {name} gets {b} more. How many {item[1]} does {name} have now?"
        return Problem(q, [f"{name} starts with {a} {item[1]} and gets {b} more: {a} + {b} = {r}."], r)
    q = f"{name}有{a}{item[1]}{item[0]}，又得到了{b}{item[1]}。{name}现在有多少{item[1]}{item[0]}？"
    return Problem(q, [f"{name}原来有{a}{item[1]}，又得到{b}{item[1]}：{a} + {b} = {r}。"], r)


def _subtract(rng: random.Random, lang: str, name: str, item: tuple[str, str]) -> Problem:
    b = rng.randint(2, 40)
    a = b + rng.randint(2, 40)
    r = a - b
    if lang == "en":
        q = f"{name} had {a} {item[1]} and gave {b} of them to a friend. How many {item[1]} does {name} have left?"
        return Problem(q, [f"{name} gave away {b} of {a} {item[1]}: {a} - {b} = {r}."], r)
    q = f"{name}有{a}{item[1]}{item[0]}，送给朋友{b}{item[1]}。{name}还剩多少{item[1]}{item[0]}？"
    return Problem(q, [f"{name}从{a}{item[1]}中送出{b}{item[1]}：{a} - {b} = {r}。"], r)


def _multiply(rng: random.Random, lang: str, name: str, item: tuple[str, str]) -> Problem:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    r = a * b
    if lang == "en":
        q = f"{name} has {a} boxes with {b} {item[1]} in each box. How many {item[1]} does {name} have in all?"
        return Problem(q, [f"{a} boxes with {b} {item[1]} each: {a} × {b} = {r}."], r)
    q = f"{name}有{a}个盒子，每个盒子里有{b}{item[1]}{item[0]}。{name}一共有多少{item[1]}{item[0]}？"
    return Problem(q, [f"{a}个盒子，每个{b}{item[1]}：{a} × {b} = {r}。"], r)


def _divide(rng: random.Random, lang: str, name: str, item: tuple[str, str]) -> Problem:
    friends, r = rng.randint(2, 9), rng.randint(2, 12)
    total = friends * r
    if lang == "en":
        q = (
            f"{name} shares {total} {item[1]} equally among {friends} friends. How many {item[1]} does each "
            "friend get?"
        )
        return Problem(q, [f"{total} {item[1]} shared by {friends} friends: {total} ÷ {friends} = {r}."], r)
    q = f"{name}把{total}{item[1]}{item[0]}平均分给{friends}个朋友。每个朋友分到多少{item[1]}？"
    return Problem(q, [f"{total}{item[1]}平均分给{friends}人：{total} ÷ {friends} = {r}。"], r)


def _add_then_subtract(rng: random.Random, lang: str, name: str, item: tuple[str, str]) -> Problem:
    a, b = rng.randint(5, 40), rng.randint(2, 30)
    c = rng.randint(2, a + b - 1)
    s, r = a + b, a + b - c
    if lang == "en":
        q = (
            f"{name} has {a} {item[1]}, buys {b} more, and then gives away {c}. How many {item[1]} does {name} "
            "have now?"
        )
        return Problem(q, [f"After buying: {a} + {b} = {s}.", f"After giving {c} away: {s} - {c} = {r}."], r)
    q = f"{name}有{a}{item[1]}{item[0]}，又买了{b}{item[1]}，然后送出{c}{item[1]}。{name}现在有多少{item[1]}？"
    return Problem(q, [f"买了以后：{a} + {b} = {s}。", f"送出{c}{item[1]}以后：{s} - {c} = {r}。"], r)


def _price(rng: random.Random, lang: str, name: str, item: tuple[str, str]) -> Problem:
    price, count = rng.randint(2, 15), rng.randint(2, 9)
    r = price * count
    if lang == "en":
        q = f"One {item[0]} costs {price} dollars. How many dollars does {name} pay for {count} {item[1]}?"
        return Problem(q, [f"{count} {item[1]} at {price} dollars each: {count} × {price} = {r}."], r)
    q = f"一{item[1]}{item[0]}{price}元。{name}买{count}{item[1]}{item[0]}要付多少元？"
    return Problem(q, [f"{count}{item[1]}，每{item[1]}{price}元：{count} × {price} = {r}。"], r)


def _per_day(rng: random.Random, lang: str, name: str, item: tuple[str, str]) -> Problem:
    per_day, days, extra = rng.randint(2, 12), rng.randint(2, 7), rng.randint(1, 20)
    s = per_day * days
    r = s + extra
    if lang == "en":
        q = (
            f"{name} reads {per_day} pages every day for {days} days, and then {extra} more pages. How many pages "
            f"does {name} read in all?"
        )
        return Problem(
            q, [f"In {days} days: {per_day} × {days} = {s}.", f"With {extra} more: {s} + {extra} = {r}."], r
        )
    q = f"{name}每天读{per_day}页书，读了{days}天，后来又读了{extra}页。{name}一共读了多少页？"
    return Problem(q, [f"{days}天读了：{per_day} × {days} = {s}。", f"再加上{extra}页：{s} + {extra} = {r}。"], r)


def _keep_then_share(rng: random.Random, lang: str, name: str, item: tuple[str, str]) -> Problem:
    friends, each, keep = rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 10)
    rest = friends * each
    total = rest + keep
    if lang == "en":
        q = (
            f"{name} has {total} {item[1]}, keeps {keep}, and shares the rest equally among {friends} friends. "
            f"How many {item[1]} does each friend get?"
        )
        return Problem(
            q, [f"The rest: {total} - {keep} = {rest}.", f"Each friend: {rest} ÷ {friends} = {each}."], each
        )
    q = (
        f"{name}有{total}{item[1]}{item[0]}，自己留下{keep}{item[1]}，其余的平均分给{friends}个朋友。"
        f"每个朋友分到多少{item[1]}？"
    )
    return Problem(q, [f"其余的：{total} - {keep} = {rest}。", f"每个朋友：{rest} ÷ {friends} = {each}。"], each)


TEMPLATES: list[Callable[[random.Random, str, str, tuple[str, str]], Problem]] = [
    _add,
    _subtract,
    _multiply,
    _divide,
    _add_then_subtract,
    _price,
    _per_day,
    _keep_then_share,
]


def make_problems(count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """``count`` distinct problems, half Chinese and half English (alternating), none whose question is in
    ``exclude``; the same ``seed`` gives the same rows."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < count:
        lang = ("zh", "en")[len(rows) % 2]
        template = rng.choice(TEMPLATES)
        problem = template(rng, lang, rng.choice(NAMES[lang]), rng.choice(ITEMS[lang]))
        if problem.question in seen:
            continue
        seen.add(problem.question)
        solution = "\n".join(problem.steps)
        rows.append({"question": problem.question, "answer": f"{solution}\n#### {problem.result}", "language": lang})
    return rows


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    logger.info("Wrote %d problems to %s", len(rows), path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="mini_data/grpo", help="train/ and test/ go here.")
    parser.add_argument("--train", type=int, default=240, help="Problems for training.")
    parser.add_argument(
        "--sft",
        type=int,
        default=48,
        help="Other problems whose worked solutions SFT learns the thinking layout from.",
    )
    parser.add_argument("--test", type=int, default=60, help="Held-out problems (distinct from all the others).")
    parser.add_argument("--seed", type=int, default=2024, help="The same seed writes the same files.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out, seen = Path(args.output_dir), set()
    for offset, (split, count) in enumerate((("train", args.train), ("sft", args.sft), ("test", args.test))):
        rows = make_problems(count, args.seed + offset, exclude=seen)
        seen |= {row["question"] for row in rows}
        write(rows, out / split / "problems.parquet")


if __name__ == "__main__":
    main()
