"""Math: give the final answer as `\\boxed{...}` (Hendrycks MATH in the paper).

Synthetic instances (level 1, the default): short integer arithmetic (sums and differences up to
ADD_MAX, times tables up to MUL_MAX) with one or two operations, half bare expressions ("Compute 7+5.")
and half one-sentence word problems. Every intermediate is a non-negative integer. Canonical key: the
question text. The target also carries `work` (the worked steps) so demonstrations can show a
one-line derivation. Difficulty levels 2-4 (LEVELS): chains of 2-4 operations mixing + - * / over
larger numbers, as bare expressions or as word problems of one sentence per step.

Hub (nlile/hendrycks-MATH-benchmark): train = 40 rows per level 1-5 drawn with
random.Random(HUB_SEED) from the train split (rows whose level is not 1-5 are skipped), in
shuffled order; test = the 500 rows of the test split, in order. A given n replaces the size
(train: n spread evenly over the levels, the remainder to the lower levels; test: the first n).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from esgrpo.rewards.extract import last_boxed
from esgrpo.rewards.math import math_reward, normalize_answer, parse_number
from esgrpo.tasks.base import DemoKind, Example, Level, Split, Task, collect_level
from esgrpo.tasks.countdown import Node, combine, leaf
from esgrpo.tasks.hub import load_rows

NUM_MIN, ADD_MAX, MUL_MAX = 1, 12, 6  # sized for a few-million-parameter model
TWO_STEP_SHARE = 0.2
MAX_ANSWER = 400

HUB_ID = "nlile/hendrycks-MATH-benchmark"
# Distinct synthetic instances per split (measured: seed 0 drawn until 400,000 draws in a row brought nothing new).
SYNTHETIC_CAPACITY = {"pretrain": 218_066, "train": 31_144, "test": 62_227}
HUB_SEED = 42
HUB_TRAIN_SIZE = 200
HUB_TEST_SIZE = 500
HUB_LEVELS = (1, 2, 3, 4, 5)  # the levels of Hendrycks MATH (not data.difficulty)

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


@dataclass(frozen=True)
class MathLevel(Level):
    """A difficulty level: operand sizes, operations per problem and the largest answer. Level 1 is the original
    generator (`_bare`, `_word`: fixed templates of one or two steps); the others chain `steps` operations."""

    add_max: int  # terms of + and - up to this
    mul_max: int  # factors and divisors up to this (times tables)
    steps: tuple[int, int]  # operations per problem: at least, at most
    max_answer: int  # every intermediate and the answer are integers in 0..max_answer
    chain: bool  # chained steps (levels 2+) instead of the original templates


# Capacities of levels 2-4: the distinct instances per split found in 500,000 draws of seed 0, a lower bound
# (scripts/difficulty_levels.py --capacity 500000).
LEVELS: dict[int, MathLevel] = {
    1: MathLevel("1-2 steps (20% of bare, 33% of word problems have 2); + - up to 12, times tables to 6",
                 SYNTHETIC_CAPACITY, ADD_MAX, MUL_MAX, (1, 2), MAX_ANSWER, chain=False),
    2: MathLevel("2 steps of + - * /; + - up to 50, times tables to 12, answers up to 1,000",
                 {"pretrain": 237_000, "train": 34_000, "test": 67_000}, 50, 12, (2, 2), 1000, chain=True),
    3: MathLevel("3 steps of + - * /; + - up to 100, factors to 15, answers up to 2,000",
                 {"pretrain": 335_000, "train": 47_000, "test": 96_000}, 100, 15, (3, 3), 2000, chain=True),
    4: MathLevel("3-4 steps of + - * /; + - up to 500, factors to 25, answers up to 10,000",
                 {"pretrain": 348_000, "train": 49_000, "test": 99_000}, 500, 25, (3, 4), 10_000, chain=True),
}

# Word problems of the chained levels: the first step sets up what the person has, each further step is one
# more sentence ({x}: the step's operand).
FIRST_STEP = {
    "+": "{name} has {a} {obj} and buys {b} more.",
    "-": "{name} has {a} {obj} and gives away {b}.",
    "*": "{name} buys {a} boxes of {b} {obj}.",
    "/": "{name} splits {a} {obj} into {b} equal piles and keeps one pile.",
}
NEXT_STEP = {
    "+": "Then {name} gets {x} more.",
    "-": "Then {name} gives away {x}.",
    "*": "Then {name} ends up with {x} times as many.",
    "/": "Then {name} splits them into {x} equal piles and keeps one pile.",
}


def _ok(node: Node | None, max_answer: int = MAX_ANSWER) -> bool:
    return node is not None and node.value >= 0 and node.value.denominator == 1 and node.value <= max_answer


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


def _operand(op: str, value: int, spec: MathLevel, rng: random.Random) -> int | None:
    """The right operand of `value op x` at a level: a term, a factor, or an exact divisor (None: no divisor
    of `value` in range, or nothing left to subtract)."""
    if op == "+":
        return rng.randint(NUM_MIN, spec.add_max)
    if op == "-":
        return rng.randint(NUM_MIN, min(spec.add_max, value)) if value >= NUM_MIN else None
    if op == "*":
        return rng.randint(2, spec.mul_max)
    divisors = [d for d in range(2, spec.mul_max + 1) if value % d == 0]
    return rng.choice(divisors) if divisors else None


def _chain(rng: random.Random, spec: MathLevel, bare: bool) -> tuple[str, Node] | None:
    """A problem of `spec.steps` chained operations, as a bare expression or a word problem; None when a step
    leaves the integers in 0..max_answer (the caller draws again)."""
    ops = [rng.choice("+-*/") for _ in range(rng.randint(*spec.steps))]
    first = ops[0]
    if first == "/":
        b = rng.randint(2, spec.mul_max)
        a = b * rng.randint(2, spec.mul_max)
    else:
        a = rng.randint(NUM_MIN, spec.mul_max if first == "*" else spec.add_max)
        b = _operand(first, a, spec, rng)
    node = combine(leaf(a), first, leaf(b)) if b is not None else None
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    sentences = [FIRST_STEP[first].format(name=name, a=a, b=b, obj=obj)]
    for op in ops[1:]:
        if not _ok(node, spec.max_answer):
            return None
        x = _operand(op, int(node.value), spec, rng)
        if x is None:
            return None
        node = combine(node, op, leaf(x))
        sentences.append(NEXT_STEP[op].format(name=name, x=x))
    if not _ok(node, spec.max_answer):
        return None
    if bare:
        return f"Compute {node.expr}.", node
    return " ".join([*sentences, f"How many {obj} does {name} have now?"]), node


def _draw(rng: random.Random, spec: MathLevel = LEVELS[1]) -> tuple[str, str, dict[str, Any]]:
    while True:
        bare = rng.random() < 0.5  # half bare expressions, half word problems
        original = _bare if bare else _word
        made = _chain(rng, spec, bare) if spec.chain else original(rng)
        if made is not None:
            question, node = made
            work = ", ".join(node.steps) + "."
            return question, question, {"answer": str(node.value.numerator), "work": work}


def _level(value: Any) -> int | None:
    """Level as an int from 3 or "Level 3"; None for "Level ?" and the like."""
    s = str(value).strip()
    if s.startswith("Level"):
        s = s[len("Level") :].strip()
    return int(s) if s in {str(lv) for lv in HUB_LEVELS} else None


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
    levels = LEVELS

    def reward(self, text: str, example: Example) -> float:
        return math_reward.unchecked(text, str(example.target["answer"]))

    def answer_complete(self, text: str) -> bool:
        return last_boxed(text) is not None

    def answer(self, text: str) -> str | None:
        boxed = last_boxed(text)
        return None if boxed is None else normalize_answer(boxed)[:64]

    def gold(self, example: Example) -> str | None:
        return normalize_answer(str(example.target.get("answer", "")))[:64] or None

    def synthetic(self, split: Split, n: int, seed: int, level: int = 1) -> list[Example]:
        return collect_level(self.name, split, n, seed, level, LEVELS, _draw)

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
        if kind == "mistake":  # off by one: the result one more than the right one
            value = parse_number(answer.strip())
            wrong = str(value.numerator + 1) if value is not None and value.denominator == 1 else answer + "+1"
            if work and "=" in work:
                return f"{work.rsplit('=', 1)[0]}={wrong}. \\boxed{{{wrong}}}"
            return f"So the answer is {wrong}. \\boxed{{{wrong}}}"
        if kind == "slip":
            return f"{work} The answer is {answer}." if work else f"The answer is {answer}."
        raise ValueError(f"unknown demonstration kind {kind!r}")


def _stratified(levels: list[Any], n: int) -> list[int]:
    """Row indices: n split evenly over levels 1-5 (earlier levels take the remainder)."""
    rng = random.Random(HUB_SEED)
    by_level: dict[int, list[int]] = {lv: [] for lv in HUB_LEVELS}
    for i, value in enumerate(levels):
        lv = _level(value)
        if lv is not None:
            by_level[lv].append(i)
    chosen: list[int] = []
    for k, lv in enumerate(HUB_LEVELS):
        quota = n // len(HUB_LEVELS) + (1 if k < n % len(HUB_LEVELS) else 0)
        pool = by_level[lv]
        chosen.extend(rng.sample(pool, min(quota, len(pool))))
    rng.shuffle(chosen)
    return chosen
