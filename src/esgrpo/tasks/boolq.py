"""BoolQ: a passage and a yes/no question, answered as `\\boxed{yes}` / `\\boxed{no}`.

Synthetic instances (level 1, the default): a one- or two-clause passage from templates (names,
objects, colors, counts, places, days) and a question the passage decides; the answer is drawn first
(50/50) and the queried value chosen to match. Canonical key: the full question text. The target
carries `evidence` (a short restatement) for the demonstrations. Difficulty levels 2-4 (LEVELS): the
fact hidden among distractor sentences about other people (lures that give someone else the asked
value), questions asked in the negative, and a two-hop kind (lives in the same city as ...).

Hub (google/boolq): train = the first 200 rows of "train", test = the first 2000 rows of
"validation" (BoolQ's test labels are not public). A given n replaces the size (first n rows).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from esgrpo.errors import DataSourceError
from esgrpo.rewards.boolq import boolq_reward, gold_bool, parse_yes_no
from esgrpo.rewards.extract import last_boxed
from esgrpo.tasks.base import DemoKind, Example, Level, Split, Task, collect_level
from esgrpo.tasks.hub import load_rows
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


@dataclass(frozen=True)
class BoolQLevel(Level):
    """A difficulty level: which kinds of fact (the first `kinds` of KINDS), how many distractor sentences about
    other people surround it, whether one of them is a lure, and how often the question is negated."""

    kinds: int
    distractors: tuple[int, int]  # distractor sentences: at least, at most (level 1: none, no draws)
    lures: bool  # one distractor gives another person the value the question asks about
    negated: float  # share of questions asked as "Is it true that ... not ...?" (level 1: 0, no draws)


# Capacities of levels 2-4: the distinct instances per split found in 500,000 draws of seed 0, a lower bound
# (scripts/difficulty_levels.py --capacity 500000).
LEVELS: dict[int, BoolQLevel] = {
    1: BoolQLevel("one fact of 1-2 clauses (count, color, home, trip, comparison)", SYNTHETIC_CAPACITY,
                  kinds=5, distractors=(0, 0), lures=False, negated=0.0),
    2: BoolQLevel("the fact among 1-2 distractor sentences about other people; 25% negated questions",
                  {"pretrain": 349_000, "train": 50_000, "test": 100_000},
                  kinds=5, distractors=(1, 2), lures=False, negated=0.25),
    3: BoolQLevel("2-3 distractor sentences, one a lure (someone else has the asked value); 50% negated",
                  {"pretrain": 349_000, "train": 50_000, "test": 99_000},
                  kinds=5, distractors=(2, 3), lures=True, negated=0.5),
    4: BoolQLevel("4-5 distractor sentences with a lure, 50% negated, plus a two-hop fact (lives in the same "
                  "city as ...)", {"pretrain": 350_000, "train": 49_000, "test": 99_000},
                  kinds=6, distractors=(4, 5), lures=True, negated=0.5),
}


@dataclass(frozen=True)
class Fact:
    """What a kind of fact makes: the passage, the question (true or false as asked), the same question
    negated, the evidence for demonstrations, and a lure: the asked value given to someone else ({who})."""

    passage: str
    question: str
    negated: str
    evidence: str
    lure: str | None = None


@dataclass(frozen=True)
class Cast:
    """What one instance is about: its person, a second person, and the values a fact may use."""

    name: str
    other: str
    thing: str
    color: str
    place: str
    day: str


def _count(rng: random.Random, truth: bool, c: Cast) -> Fact:
    k = rng.randint(2, 9)
    asked = k if truth else rng.choice([x for x in range(2, 13) if x != k])
    return Fact(f"{c.name} has {k} {c.color} {c.thing}s.", f"Does {c.name} have {asked} {c.thing}s?",
                f"Is it true that {c.name} does not have {asked} {c.thing}s?", f"{c.name} has {k} {c.thing}s",
                f"{{who}} has {asked} {c.thing}s.")


def _color(rng: random.Random, truth: bool, c: Cast) -> Fact:
    asked = c.color if truth else _other(rng, COLORS, c.color)
    passage = f"{c.name} has a {c.color} {c.thing} and a {_other(rng, COLORS, c.color)} {_other(rng, THINGS, c.thing)}."
    return Fact(passage, f"Is {c.name}'s {c.thing} {asked}?", f"Is it true that {c.name}'s {c.thing} is not {asked}?",
                f"the {c.thing} is {c.color}", f"{{who}} has a {asked} {c.thing}.")


def _home(rng: random.Random, truth: bool, c: Cast) -> Fact:
    asked = c.place if truth else _other(rng, PLACES, c.place)
    return Fact(f"{c.name} lives in {c.place} and works on {c.day}s.", f"Does {c.name} live in {asked}?",
                f"Is it true that {c.name} does not live in {asked}?", f"{c.name} lives in {c.place}",
                f"{{who}} lives in {asked}.")


def _trip(rng: random.Random, truth: bool, c: Cast) -> Fact:
    passage = f"{c.name} went to {c.place} with {c.other} on {c.day}."
    if rng.random() < 0.5:
        asked = c.day if truth else _other(rng, DAYS, c.day)
        return Fact(passage, f"Did {c.name} go on {asked}?", f"Is it true that {c.name} did not go on {asked}?",
                    f"{c.name} went on {c.day}", f"{{who}} went to {c.place} on {asked}.")
    asked = c.other if truth else _other(rng, NAMES, c.other)
    return Fact(passage, f"Did {c.name} go with {asked}?", f"Is it true that {c.name} did not go with {asked}?",
                f"{c.name} went with {c.other}", f"{{who}} went to {c.place} with {asked} on {c.day}.")


def _more(rng: random.Random, truth: bool, c: Cast) -> Fact:
    a, b = rng.sample(range(2, 13), 2)
    a, b = (max(a, b), min(a, b)) if truth else (min(a, b), max(a, b))
    return Fact(f"{c.name} has {a} {c.thing}s and {c.other} has {b}.",
                f"Does {c.name} have more {c.thing}s than {c.other}?",
                f"Is it true that {c.name} does not have more {c.thing}s than {c.other}?",
                f"{a} is {'more' if truth else 'less'} than {b}", None)


def _same_city(rng: random.Random, truth: bool, c: Cast) -> Fact:
    """Two hops: where the person lives is only said through the second person."""
    asked = c.place if truth else _other(rng, PLACES, c.place)
    return Fact(f"{c.name} lives in the same city as {c.other}. {c.other} lives in {c.place}.",
                f"Does {c.name} live in {asked}?", f"Is it true that {c.name} does not live in {asked}?",
                f"{c.name} lives where {c.other} lives, in {c.place}", f"{{who}} lives in {asked}.")


# Level 1 draws the first five (the original generator's kinds, in its order); level 4 adds the two-hop one.
KINDS: tuple[Callable[[random.Random, bool, Cast], Fact], ...] = (_count, _color, _home, _trip, _more, _same_city)


def _distractor(rng: random.Random, people: list[str]) -> str:
    """A sentence about people of no concern to the question (taken from `people`, so none recurs)."""
    who = people.pop()
    thing, color, place, day = rng.choice(THINGS), rng.choice(COLORS), rng.choice(PLACES), rng.choice(DAYS)
    form = rng.randrange(4)
    if form == 0:
        return f"{who} has {rng.randint(2, 9)} {color} {thing}s."
    if form == 1:
        return f"{who} has a {color} {thing} and a {_other(rng, COLORS, color)} {_other(rng, THINGS, thing)}."
    if form == 2:
        return f"{who} lives in {place} and works on {day}s."
    return f"{who} went to {place} with {people.pop()} on {day}."


def _draw(rng: random.Random, spec: BoolQLevel = LEVELS[1]) -> tuple[str, str, dict[str, Any]]:
    yes = rng.random() < 0.5
    negate = spec.negated > 0 and rng.random() < spec.negated
    name = rng.choice(NAMES)
    other = _other(rng, NAMES, name)
    cast = Cast(name, other, rng.choice(THINGS), rng.choice(COLORS), rng.choice(PLACES), rng.choice(DAYS))
    fact = KINDS[rng.randrange(spec.kinds)](rng, yes != negate, cast)  # a negated question flips the truth asked
    passage = fact.passage
    if spec.distractors[1]:  # level 1 adds nothing and draws nothing more
        mentioned = {name, other, *fact.question.rstrip("?").split()}  # incl. a person asked about
        people = [p for p in NAMES if p not in mentioned]
        rng.shuffle(people)
        sentences = [fact.passage]
        if spec.lures and fact.lure is not None:
            sentences.append(fact.lure.format(who=people.pop()))
        sentences += [_distractor(rng, people) for _ in range(rng.randint(*spec.distractors) - len(sentences) + 1)]
        rng.shuffle(sentences)
        passage = " ".join(sentences)
    text = format_question(passage, fact.negated if negate else fact.question)
    return text, text, {"answer": yes, "evidence": fact.evidence}


def _word(answer: bool) -> str:
    return "yes" if answer else "no"


class BoolQTask(Task):
    """Reading comprehension yes/no questions with the `\\boxed{yes|no}` format."""

    builtin = True
    format_line = "End your answer with \\boxed{yes} or \\boxed{no}."

    name = "boolq"
    system_prompt = "Think step by step, then answer \\boxed{yes} or \\boxed{no}."
    levels = LEVELS

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

    def synthetic(self, split: Split, n: int, seed: int, level: int = 1) -> list[Example]:
        return collect_level(self.name, split, n, seed, level, LEVELS, _draw)

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
        if kind in ("wrong", "mistake"):  # two answers: the one wrong answer is also the systematic mistake
            return f"{said(not gold)} \\boxed{{{_word(not gold)}}}"
        if kind == "slip":
            return f"{said(gold)} Answer: {_word(gold)}"
        raise ValueError(f"unknown demonstration kind {kind!r}")

