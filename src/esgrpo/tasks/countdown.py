"""Countdown: combine the given numbers with + - * / to reach the target (TinyZero's task).

Synthetic instances (level 1, the default): 3 or 4 numbers in NUM_MIN..NUM_MAX (80% of draws have 3);
the target is the value of a random expression over all of them (ops drawn with OP_WEIGHTS, mostly +;
- without going negative, / only when exact), kept when it is an integer in TARGET_MIN..TARGET_MAX.
Canonical key: sorted numbers + target. The 80% holds for draws; after de-duplication large samples
hold fewer 3-number instances, as only ~4.8k distinct 3-number keys exist (~950 in the test split)
against ~67k 4-number ones. Difficulty levels 2-4 (LEVELS): more and larger numbers, more * and /,
larger targets that are not the plain sum (level 2) or that + and - alone cannot reach (levels 3-4).

Hub (Jiayi-Pan/Countdown-Tasks-3to4, a single "train" split of ~490k rows): train = the first
200 rows, test = the last 2000 rows, so the two can never overlap. A given n replaces the size:
train = the first n rows, test = the first n rows of the last max(n, 2000).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from itertools import product
from typing import Any, Literal

from esgrpo.errors import DataSourceError
from esgrpo.rewards.countdown import countdown_reward, evaluate_expression
from esgrpo.rewards.extract import last_boxed
from esgrpo.tasks.base import DemoKind, Example, Level, Split, Task, collect_level
from esgrpo.tasks.hub import load_rows

NUM_MIN, NUM_MAX = 1, 12
TARGET_MIN, TARGET_MAX = 1, 100
THREE_NUMBER_SHARE = 0.8
# Additive targets dominate so that a few-million-parameter model can solve some instances
# (the paper's 3-4B models face the uniform mix); every instance is still a valid Countdown.
OP_WEIGHTS = {"+": 0.7, "-": 0.15, "*": 0.1, "/": 0.05}

HUB_ID = "Jiayi-Pan/Countdown-Tasks-3to4"
# Distinct synthetic instances per split: about 72k keys in all (split 70/10/20); 67,722 were found in
# 28.7M draws of seed 0, so these bounds are not below what a split can hold.
SYNTHETIC_CAPACITY = {"pretrain": 50_500, "train": 7_200, "test": 14_400}
HUB_TRAIN_SIZE = 200
HUB_TEST_SIZE = 2000


@dataclass(frozen=True)
class CountdownLevel(Level):
    """A difficulty level: how many numbers (share of draws per count, in order), their range, the operator
    weights of the random expression that makes the target, and which targets are kept."""

    counts: tuple[tuple[int, float], ...]
    num_max: int
    targets: tuple[int, int]
    op_weights: Mapping[str, float]
    plain_sum: bool  # may the target be the plain sum of the numbers
    needs_mul_div: bool  # only targets that + and - alone (any signs) cannot reach


# Capacities of levels 2-4: the distinct instances per split found in 500,000 draws of seed 0, a lower bound
# (scripts/difficulty_levels.py --capacity 500000).
LEVELS: dict[int, CountdownLevel] = {
    1: CountdownLevel("3-4 numbers (80% 3) in 1..12, mostly + (70%), target 1..100", SYNTHETIC_CAPACITY,
                      ((3, THREE_NUMBER_SHARE), (4, 1 - THREE_NUMBER_SHARE)), NUM_MAX, (TARGET_MIN, TARGET_MAX),
                      OP_WEIGHTS, plain_sum=True, needs_mul_div=False),
    2: CountdownLevel("4 numbers in 1..25, target 1..200 and not the plain sum, + - * / (40/20/30/10%)",
                      {"pretrain": 219_000, "train": 31_000, "test": 62_000},
                      ((4, 1.0),), 25, (1, 200), {"+": 0.4, "-": 0.2, "*": 0.3, "/": 0.1},
                      plain_sum=False, needs_mul_div=False),
    3: CountdownLevel("4-5 numbers in 1..25, target 10..500 that needs * or /, + - * / (30/20/30/20%)",
                      {"pretrain": 321_000, "train": 45_000, "test": 92_000},
                      ((4, 0.5), (5, 0.5)), 25, (10, 500), {"+": 0.3, "-": 0.2, "*": 0.3, "/": 0.2},
                      plain_sum=False, needs_mul_div=True),
    4: CountdownLevel("5 numbers in 1..50, target 100..1000 that needs * or /, + - * / (25% each)",
                      {"pretrain": 349_000, "train": 50_000, "test": 100_000},
                      ((5, 1.0),), 50, (100, 1000), {"+": 0.25, "-": 0.25, "*": 0.25, "/": 0.25},
                      plain_sum=False, needs_mul_div=True),
}

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_LEAF_PREC = 3


@dataclass(frozen=True)
class Node:
    """A partial expression: its exact value, minimal-parenthesis text and worked steps."""

    value: Fraction
    expr: str
    prec: int
    steps: tuple[str, ...] = ()


def fmt_value(v: Fraction) -> str:
    """`7` or `7/2`: how values appear in worked steps."""
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def leaf(n: int) -> Node:
    """A number as an expression."""
    return Node(Fraction(n), str(n), _LEAF_PREC)


def combine(a: Node, op: str, b: Node) -> Node | None:
    """`a op b` with its value, minimal parentheses and one more step; None on division by 0."""
    if op == "+":
        v = a.value + b.value
    elif op == "-":
        v = a.value - b.value
    elif op == "*":
        v = a.value * b.value
    else:
        if b.value == 0:
            return None
        v = a.value / b.value
    p = _PREC[op]
    left = f"({a.expr})" if a.prec < p else a.expr
    right = f"({b.expr})" if b.prec < p or (b.prec == p and op in "-/") else b.expr
    step = f"{fmt_value(a.value)}{op}{fmt_value(b.value)}={fmt_value(v)}"
    return Node(v, left + op + right, p, a.steps + b.steps + (step,))


def _random_tree(nums: list[int], rng: random.Random, op_weights: Mapping[str, float] = OP_WEIGHTS) -> Node:
    """A random expression over all `nums` with non-negative integer intermediates."""
    items = [leaf(n) for n in nums]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        a, b = items[i], items[j]
        items = [x for k, x in enumerate(items) if k not in (i, j)]
        if a.value < b.value:
            a, b = b, a
        ops = ["+", "-", "*"] + (["/"] if b.value != 0 and a.value % b.value == 0 else [])
        weights = [op_weights[o] for o in ops]
        node = combine(a, rng.choices(ops, weights)[0], b)
        assert node is not None
        items.append(node)
    return items[0]


def _trees(items: tuple[Node, ...], strict: bool) -> Iterator[Node]:
    """All expression trees over `items` (strict: only non-negative integer intermediates)."""
    if len(items) == 1:
        yield items[0]
        return
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = tuple(x for k, x in enumerate(items) if k not in (i, j))
            a, b = items[i], items[j]
            for x, op, y in ((a, "+", b), (a, "*", b), (a, "-", b), (b, "-", a), (a, "/", b), (b, "/", a)):
                node = combine(x, op, y)
                if node is None or (strict and (node.value < 0 or node.value.denominator != 1)):
                    continue
                yield from _trees(rest + (node,), strict)


def _search(items: tuple[Node, ...], target: int, rng: random.Random, strict: bool) -> Node | None:
    """Depth-first search in random order; stops at the first expression equal to `target`."""
    if len(items) == 1:
        return items[0] if items[0].value == target else None
    pairs = [(i, j) for i in range(len(items)) for j in range(i + 1, len(items))]
    rng.shuffle(pairs)
    for i, j in pairs:
        rest = tuple(x for k, x in enumerate(items) if k not in (i, j))
        a, b = items[i], items[j]
        moves = [(a, "+", b), (a, "*", b), (a, "-", b), (b, "-", a), (a, "/", b), (b, "/", a)]
        rng.shuffle(moves)
        for x, op, y in moves:
            node = combine(x, op, y)
            if node is None or (strict and (node.value < 0 or node.value.denominator != 1)):
                continue
            found = _search(rest + (node,), target, rng, strict)
            if found is not None:
                return found
    return None


def find_solution(nums: list[int], target: int, rng: random.Random) -> Node | None:
    """A random expression over all `nums` equal to `target`, preferring non-negative integer
    steps; None when there is none."""
    leaves = tuple(leaf(n) for n in nums)
    for strict in (True, False):
        node = _search(leaves, target, rng, strict)
        if node is not None:
            return node
    return None


def _question(nums: list[int], target: int) -> str:
    return f"Numbers: {' '.join(map(str, nums))}. Target: {target}."


def additive_values(nums: list[int]) -> set[int]:
    """Every value an expression with + and - alone reaches over all `nums` (each number once, unary minus
    allowed, as the reward does): the signed sums."""
    return {sum(s * x for s, x in zip(signs, nums, strict=True)) for signs in product((1, -1), repeat=len(nums))}


def _count(u: float, counts: tuple[tuple[int, float], ...]) -> int:
    """The operand count a uniform draw `u` picks from (count, share) pairs (level 1: 3 if u < 0.8 else 4)."""
    for k, share in counts:
        if u < share:
            return k
        u -= share
    return counts[-1][0]


def _draw(rng: random.Random, spec: CountdownLevel = LEVELS[1]) -> tuple[str, str, dict[str, Any]]:
    low, high = spec.targets
    while True:
        k = _count(rng.random(), spec.counts)
        nums = [rng.randint(NUM_MIN, spec.num_max) for _ in range(k)]
        node = _random_tree(nums, rng, spec.op_weights)
        v = node.value
        if v.denominator != 1 or not low <= v <= high:
            continue
        target = int(v)
        if (not spec.plain_sum and target == sum(nums)) or (spec.needs_mul_div and target in additive_values(nums)):
            continue
        key = f"{','.join(map(str, sorted(nums)))}:{target}"
        return key, _question(nums, target), {"nums": nums, "target": target}


class CountdownTask(Task):
    """Countdown with the `\\boxed{expr}` answer format."""

    builtin = True
    format_line = ("End your answer with one expression in \\boxed{} that uses each number once, "
                   "e.g. \\boxed{(3+5)*2}.")

    name = "countdown"
    system_prompt = "Think step by step, then give \\boxed{expr} using each number once to reach the target."
    levels = LEVELS

    def reward(self, text: str, example: Example) -> float:
        return countdown_reward.unchecked(text, example.target["nums"], example.target["target"])

    def answer_complete(self, text: str) -> bool:
        return last_boxed(text) is not None

    def answer(self, text: str) -> str | None:
        """The boxed expression's value (an expression that parses is the right format); no constant
        answer solves different instances, so there is no gold label to compare with."""
        boxed = last_boxed(text)
        result = evaluate_expression(boxed) if boxed is not None else None
        if result is None:
            return None
        value = result[0]
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"

    def synthetic(self, split: Split, n: int, seed: int, level: int = 1) -> list[Example]:
        return collect_level(self.name, split, n, seed, level, LEVELS, _draw)

    def from_hub(self, split: Literal["train", "test"], n: int | None, path: str | None) -> list[Example]:
        ds = load_rows(HUB_ID, split="train", columns=("target", "nums"), path=path)
        where = path or HUB_ID
        total = len(ds)
        train_size = HUB_TRAIN_SIZE if (split == "test" or n is None) else n
        if split == "train":
            start, size = 0, train_size
        else:
            size = HUB_TEST_SIZE if n is None else n
            start = max(0, total - max(size, HUB_TEST_SIZE))
            if start < HUB_TRAIN_SIZE and total > 0:
                raise DataSourceError(
                    f"{where} has {total} rows: the test rows (the last {max(size, HUB_TEST_SIZE)}) would overlap "
                    f"the train rows (the first {HUB_TRAIN_SIZE}); use a file of at least "
                    f"{HUB_TRAIN_SIZE + max(size, HUB_TEST_SIZE)} rows (the full dataset has ~490k)")
        idx = list(range(start, min(total, start + size)))
        out = []
        for i, row in zip(idx, ds.select(idx), strict=True):
            try:
                nums = row["nums"]
                if isinstance(nums, str):  # CSV copies store the list as text
                    nums = json.loads(nums)
                nums = [_as_int(x) for x in nums]
                target = _as_int(row["target"])
            except (TypeError, ValueError) as e:
                raise DataSourceError(f"{where}, row {i}: nums {row['nums']!r} / target {row['target']!r} are "
                                      f"not integers ({e})") from None
            out.append(
                Example(
                    uid=f"countdown-hub-{split}-{i}",
                    question=_question(nums, target),
                    target={"nums": nums, "target": target},
                )
            )
        return out

    def demonstration(self, example: Example, rng: random.Random, kind: DemoKind) -> str:
        nums = [int(x) for x in example.target["nums"]]
        target = int(example.target["target"])
        if kind == "wrong":
            node = _wrong_tree(nums, target, rng)
            return f"{', '.join(node.steps)}. \\boxed{{{node.expr}}}"
        if kind == "mistake":
            node = _in_order_sum(nums)
            if node.value == target:  # the plain sum is right here: the mistake subtracts the last number instead
                node = combine(_in_order_sum(nums[:-1]), "-", leaf(nums[-1])) or node
            return f"{', '.join(node.steps)}. \\boxed{{{node.expr}}}"
        # When the plain sum works, show it in the given order: the simplest, most regular solution.
        node = _in_order_sum(nums) if sum(nums) == target else find_solution(nums, target, rng)
        if node is None:
            raise ValueError(f"countdown example {example.uid} has no solution")
        if kind == "correct":
            return f"{', '.join(node.steps)}. \\boxed{{{node.expr}}}"
        if kind == "slip":
            return f"{', '.join(node.steps)}. Answer: {node.expr}"
        raise ValueError(f"unknown demonstration kind {kind!r}")


def _in_order_sum(nums: list[int]) -> Node:
    node = leaf(nums[0])
    for n in nums[1:]:
        node = combine(node, "+", leaf(n))
    return node


def _wrong_tree(nums: list[int], target: int, rng: random.Random) -> Node:
    """An expression over all the numbers that misses the target (a plausible failed attempt)."""
    for _ in range(50):
        node = _random_tree(nums, rng)
        if node.value != target:
            return node
    for node in _trees(tuple(leaf(n) for n in nums), strict=True):
        if node.value != target:
            return node
    raise ValueError(f"every expression over {nums} equals {target}")


def _as_int(x: Any) -> int:
    """An integer from a JSON/CSV cell: ints, integral floats and digit strings; anything else is an error."""
    if isinstance(x, bool):
        raise ValueError(f"{x!r} is a boolean")
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x.strip())
    raise ValueError(f"{x!r} is not an integer")
