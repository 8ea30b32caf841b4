"""BoolQ: a passage and a yes/no question, answered as `\\boxed{yes}` / `\\boxed{no}`.

Synthetic instances: a one- or two-clause passage from templates (names, objects, colors,
counts, places, days) and a question the passage decides; the answer is drawn first (50/50) and
the queried value chosen to match. Canonical key: the full question text. The target carries
`evidence` (a short restatement) for the demonstrations.

Hub (google/boolq): train = the first 200 rows of "train", test = the first 2000 rows of
"validation" (BoolQ's test labels are not public). A given n replaces the size (first n rows).
"""

from __future__ import annotations

import random
from typing import Any, Literal

from esgrpo.errors import DataSourceError
from esgrpo.rewards.boolq import boolq_reward, gold_bool, parse_yes_no
from esgrpo.rewards.extract import last_boxed
from esgrpo.tasks.base import DemoKind, Example, Split, Task
from esgrpo.tasks.hub import collect_synthetic, load_rows
from esgrpo.tasks.math import NAMES  # the same cast of people across tasks

HUB_ID = "google/boolq"
# Distinct synthetic instances per split (measured: seed 0 drawn until 400,000 draws in a row brought nothing new).
SYNTHETIC_CAPACITY = {"pretrain": 994_769, "train": 140_999, "test": 283_563}
HUB_TRAIN_SIZE = 200
HUB_TEST_SIZE = 2000

THINGS = ("cup", "hat", "pen", "book", "bike", "kite", "ball", "car", "bag", "lamp")
COLORS = ("red", "blue", "green", "black", "white", "yellow", "pink", "brown")
PLACES = ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Delhi", "Quito", "Seoul", "Madrid")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _other(rng: random.Random, options: tuple[Any, ...], value: Any) -> Any:
    return rng.choice([o for o in options if o != value])


def format_question(passage: str, question: str) -> str:
    """Passage, then the question on its own line."""
    q = question.strip()
    return f"{passage.strip()}\nQuestion: {q if q.endswith('?') else q + '?'}"


def _draw(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    yes = rng.random() < 0.5
    name = rng.choice(NAMES)
    other = _other(rng, NAMES, name)
    thing, color, place, day = rng.choice(THINGS), rng.choice(COLORS), rng.choice(PLACES), rng.choice(DAYS)
    kind = rng.randrange(5)
    if kind == 0:
        k = rng.randint(2, 9)
        asked = k if yes else rng.choice([x for x in range(2, 13) if x != k])
        passage = f"{name} has {k} {color} {thing}s."
        question = f"Does {name} have {asked} {thing}s?"
        evidence = f"{name} has {k} {thing}s"
    elif kind == 1:
        asked = color if yes else _other(rng, COLORS, color)
        passage = (
            f"{name} has a {color} {thing} and a {_other(rng, COLORS, color)} {_other(rng, THINGS, thing)}."
        )
        question = f"Is {name}'s {thing} {asked}?"
        evidence = f"the {thing} is {color}"
    elif kind == 2:
        asked = place if yes else _other(rng, PLACES, place)
        passage = f"{name} lives in {place} and works on {day}s."
        question = f"Does {name} live in {asked}?"
        evidence = f"{name} lives in {place}"
    elif kind == 3:
        if rng.random() < 0.5:
            asked = day if yes else _other(rng, DAYS, day)
            question = f"Did {name} go on {asked}?"
            evidence = f"{name} went on {day}"
        else:
            asked = other if yes else _other(rng, NAMES, other)
            question = f"Did {name} go with {asked}?"
            evidence = f"{name} went with {other}"
        passage = f"{name} went to {place} with {other} on {day}."
    else:
        a, b = rng.sample(range(2, 13), 2)
        a, b = (max(a, b), min(a, b)) if yes else (min(a, b), max(a, b))
        passage = f"{name} has {a} {thing}s and {other} has {b}."
        question = f"Does {name} have more {thing}s than {other}?"
        evidence = f"{a} is {'more' if yes else 'less'} than {b}"
    text = format_question(passage, question)
    return text, text, {"answer": yes, "evidence": evidence}


def _word(answer: bool) -> str:
    return "yes" if answer else "no"


class BoolQTask(Task):
    """Reading comprehension yes/no questions with the `\\boxed{yes|no}` format."""

    builtin = True
    format_line = "End your answer with \\boxed{yes} or \\boxed{no}."

    name = "boolq"
    system_prompt = "Think step by step, then answer \\boxed{yes} or \\boxed{no}."

    def reward(self, text: str, example: Example) -> float:
        return boolq_reward.unchecked(text, example.target["answer"])

    def answer_complete(self, text: str) -> bool:
        return last_boxed(text) is not None

    def answer(self, text: str) -> str | None:
        value = parse_yes_no(last_boxed(text))
        return None if value is None else _word(value)

    def gold(self, example: Example) -> str | None:
        value = gold_bool(example.target.get("answer"))
        return None if value is None else _word(value)

    def synthetic(self, split: Split, n: int, seed: int) -> list[Example]:
        return collect_synthetic(self.name, split, n, seed, _draw, SYNTHETIC_CAPACITY)

    def from_hub(self, split: Literal["train", "test"], n: int | None, path: str | None) -> list[Example]:
        hub_split = "train" if split == "train" else "validation"
        size = (HUB_TRAIN_SIZE if split == "train" else HUB_TEST_SIZE) if n is None else n
        ds = load_rows(HUB_ID, split=hub_split, columns=("question", "answer", "passage"), path=path)
        idx = list(range(min(size, len(ds))))
        out = []
        for i, row in zip(idx, ds.select(idx), strict=True):
            answer = gold_bool(row["answer"])
            if answer is None:
                raise DataSourceError(f"{path or HUB_ID}, row {i}: answer {row['answer']!r} is not a yes/no label "
                                      "(true/false, yes/no, 1/0)")
            out.append(Example(uid=f"boolq-hub-{split}-{i}",
                               question=format_question(str(row["passage"]), str(row["question"])),
                               target={"answer": answer}))
        return out

    def demonstration(self, example: Example, rng: random.Random, kind: DemoKind) -> str:
        gold = bool(example.target["answer"])
        evidence = example.target.get("evidence")

        def said(answer: bool) -> str:
            if evidence:
                return f"It says {evidence}."
            return "The passage says so." if answer else "The passage says otherwise."

        if kind == "correct":
            return f"{said(gold)} \\boxed{{{_word(gold)}}}"
        if kind == "wrong":
            return f"{said(not gold)} \\boxed{{{_word(not gold)}}}"
        if kind == "slip":
            return f"{said(gold)} Answer: {_word(gold)}"
        raise ValueError(f"unknown demonstration kind {kind!r}")

