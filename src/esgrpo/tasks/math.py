"""Math: give the final answer as `\\boxed{...}` (Hendrycks MATH in the paper).

Synthetic instances: short integer arithmetic (sums and differences up to ADD_MAX, times tables up
to MUL_MAX) with one or two operations, half bare expressions ("Compute 7+5.") and half
one-sentence word problems. Every intermediate is a non-negative integer. Canonical key: the
question text. The target also carries `work` (the worked steps) so demonstrations can show a
one-line derivation.

Hub (nlile/hendrycks-MATH-benchmark): train = 40 rows per level 1-5 drawn with
random.Random(HUB_SEED) from the train split (rows whose level is not 1-5 are skipped), in
shuffled order; test = the 500 rows of the test split, in order. A given n replaces the size
(train: n spread evenly over the levels, the remainder to the lower levels; test: the first n).
"""

from __future__ import annotations

import random
from typing import Any, Literal

from esgrpo.rewards.extract import last_boxed
from esgrpo.rewards.math import math_reward, normalize_answer, parse_number
from esgrpo.tasks.base import DemoKind, Example, Split, Task
from esgrpo.tasks.countdown import Node, combine, leaf
from esgrpo.tasks.hub import collect_synthetic, load_rows

NUM_MIN, ADD_MAX, MUL_MAX = 1, 12, 6  # sized for a few-million-parameter model
TWO_STEP_SHARE = 0.2
MAX_ANSWER = 400

HUB_ID = "nlile/hendrycks-MATH-benchmark"
# Distinct synthetic instances per split (measured: seed 0 drawn until 400,000 draws in a row brought nothing new).
SYNTHETIC_CAPACITY = {"pretrain": 218_066, "train": 31_144, "test": 62_227}
HUB_SEED = 42
HUB_TRAIN_SIZE = 200
HUB_TEST_SIZE = 500
LEVELS = (1, 2, 3, 4, 5)

NAMES = (
    "Ann",
    "Ben",
    "Cal",
    "Dee",
    "Eva",
    "Finn",
    "Gus",
    "Ivy",
    "Jo",
    "Kim",
    "Leo",
    "Max",
    "Nia",
    "Ray",
    "Sue",
    "Tom",
)
OBJECTS = ("apples", "pens", "books", "cards", "eggs", "coins", "cups", "shells", "stamps", "marbles")


def _ok(node: Node | None) -> bool:
    return node is not None and node.value >= 0 and node.value.denominator == 1 and node.value <= MAX_ANSWER


def _operands(op: str, rng: random.Random) -> tuple[int, int]:
    """Operands a tiny model can handle: sums/differences up to ADD_MAX, times tables up to MUL_MAX."""
    if op in "+-":
        a, b = rng.randint(NUM_MIN, ADD_MAX), rng.randint(NUM_MIN, ADD_MAX)
        return (max(a, b), min(a, b)) if op == "-" else (a, b)
    a, b = rng.randint(2, MUL_MAX), rng.randint(2, MUL_MAX)
    return (a * b, b) if op == "/" else (a, b)


def _bare(rng: random.Random) -> tuple[str, Node] | None:
    op = rng.choice("+-*/")
    a, b = _operands(op, rng)
    node = combine(leaf(a), op, leaf(b))
    if rng.random() < TWO_STEP_SHARE:  # (a op b) +/- c
        op2 = rng.choice("+-")
        node = combine(node, op2, leaf(rng.randint(NUM_MIN, ADD_MAX))) if node is not None else None
    if not _ok(node):
        return None
    return f"Compute {node.expr}.", node


def _word(rng: random.Random) -> tuple[str, Node] | None:
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    c = rng.randint(2, ADD_MAX)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = _operands("+", rng)
        q, node = f"{name} has {a} {obj} and buys {b} more. How many {obj} now?", combine(leaf(a), "+", leaf(b))
    elif kind == 1:
        a, b = _operands("-", rng)
        q, node = f"{name} has {a} {obj} and gives away {b}. How many are left?", combine(leaf(a), "-", leaf(b))
    elif kind == 2:
        a, b = _operands("*", rng)
        q, node = f"{name} buys {a} boxes of {b} {obj}. How many {obj}?", combine(leaf(a), "*", leaf(b))
    elif kind == 3:
        ab, b = _operands("/", rng)
        q = f"{name} splits {ab} {obj} into {b} equal piles. How many per pile?"
        node = combine(leaf(ab), "/", leaf(b))
    elif kind == 4:
        a, b = _operands("+", rng)
        q = f"{name} has {a} {obj}, buys {b} more and gives away {c}. How many now?"
        node = combine(combine(leaf(a), "+", leaf(b)), "-", leaf(c))
    else:
        a, b = _operands("*", rng)
        q = f"{name} buys {a} boxes of {b} {obj} and {c} more. How many {obj}?"
        node = combine(combine(leaf(a), "*", leaf(b)), "+", leaf(c))
    return (q, node) if _ok(node) else None


def _draw(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    while True:
        made = _bare(rng) if rng.random() < 0.5 else _word(rng)
        if made is not None:
            question, node = made
            work = ", ".join(node.steps) + "."
            return question, question, {"answer": str(node.value.numerator), "work": work}


def _level(value: Any) -> int | None:
    """Level as an int from 3 or "Level 3"; None for "Level ?" and the like."""
    s = str(value).strip()
    if s.startswith("Level"):
        s = s[len("Level") :].strip()
    return int(s) if s in {str(lv) for lv in LEVELS} else None


def _wrong_answer(answer: str, rng: random.Random) -> str:
    value = parse_number(answer.strip())
    if value is not None and value.denominator == 1:
        return str(value.numerator + rng.choice((-2, -1, 1, 2)))
    return answer + "+1"


class MathTask(Task):
    """Arithmetic / competition math with the `\\boxed{answer}` format."""

    builtin = True
    format_line = "End your answer with the final result in \\boxed{}, e.g. \\boxed{12}."

    name = "math"
    system_prompt = "Think step by step, then put the final answer in \\boxed{}."

    def reward(self, text: str, example: Example) -> float:
        return math_reward.unchecked(text, str(example.target["answer"]))

    def answer_complete(self, text: str) -> bool:
        return last_boxed(text) is not None

    def answer(self, text: str) -> str | None:
        boxed = last_boxed(text)
        return None if boxed is None else normalize_answer(boxed)[:64]

    def gold(self, example: Example) -> str | None:
        return normalize_answer(str(example.target.get("answer", "")))[:64] or None

    def synthetic(self, split: Split, n: int, seed: int) -> list[Example]:
        return collect_synthetic(self.name, split, n, seed, _draw, SYNTHETIC_CAPACITY)

    def from_hub(self, split: Literal["train", "test"], n: int | None, path: str | None) -> list[Example]:
        ds = load_rows(HUB_ID, split=split, columns=("problem", "answer", "level"), path=path)
        if split == "train":
            idx = _stratified(ds["level"], HUB_TRAIN_SIZE if n is None else n)
        else:
            idx = list(range(min(len(ds), HUB_TEST_SIZE if n is None else n)))
        has_subject = "subject" in ds.column_names
        out = []
        for i, row in zip(idx, ds.select(idx), strict=True):
            target = {"answer": str(row["answer"]), "level": _level(row["level"])}
            if has_subject:
                target["subject"] = row["subject"]
            out.append(Example(uid=f"math-hub-{split}-{i}", question=str(row["problem"]), target=target))
        return out

    def demonstration(self, example: Example, rng: random.Random, kind: DemoKind) -> str:
        answer = str(example.target["answer"])
        work = example.target.get("work")
        if kind == "correct":
            return (
                f"{work} \\boxed{{{answer}}}" if work else f"So the answer is {answer}. \\boxed{{{answer}}}"
            )
        if kind == "wrong":
            wrong = _wrong_answer(answer, rng)
            if work and "=" in work:
                return f"{work.rsplit('=', 1)[0]}={wrong}. \\boxed{{{wrong}}}"
            return f"So the answer is {wrong}. \\boxed{{{wrong}}}"
        if kind == "slip":
            return f"{work} The answer is {answer}." if work else f"The answer is {answer}."
        raise ValueError(f"unknown demonstration kind {kind!r}")


def _stratified(levels: list[Any], n: int) -> list[int]:
    """Row indices: n split evenly over levels 1-5 (earlier levels take the remainder)."""
    rng = random.Random(HUB_SEED)
    by_level: dict[int, list[int]] = {lv: [] for lv in LEVELS}
    for i, value in enumerate(levels):
        lv = _level(value)
        if lv is not None:
            by_level[lv].append(i)
    chosen: list[int] = []
    for k, lv in enumerate(LEVELS):
        quota = n // len(LEVELS) + (1 if k < n % len(LEVELS) else 0)
        pool = by_level[lv]
        chosen.extend(rng.sample(pool, min(quota, len(pool))))
    rng.shuffle(chosen)
    return chosen
