"""Chemistry: 4-choice questions answered as `"answer": "C"` (SciKnowEval in the paper).

Synthetic instances are built from real periodic-table data (the `periodictable` package, the
first N_ELEMENTS elements at level 1): symbol <-> name, name <-> atomic number, and "which has the
largest atomic number". The gold position is drawn uniformly from A-D. Canonical key: the full question
text with its choices, so the same fact may recur across splits with other distractors or order;
no identical question does. Symbol choices never include the one-letter symbols B and C, so a
choice text can never be mistaken for a choice letter. Difficulty levels 2-4 (LEVELS): more elements,
distractors that are the answer's neighbours in the table (symbols sharing a letter with the answer),
and further facts: period, family, standard atomic weight, which of four neighbours is heaviest.

Hub (hicai-zju/SciKnowEval, config v2, its only split "test"): rows with domain "Chemistry" and
type "mcq-4-choices", shuffled with datasets' shuffle(seed=42); train = the first 200, test =
the next 2000. A given n replaces the size (train at most 200, so it never reaches the test rows).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from esgrpo.errors import ConfigError, DataSourceError
from esgrpo.rewards.mcq import LETTERS, answer_field, extract_choice, mcq_reward
from esgrpo.tasks.base import DemoKind, Example, Level, Split, Task, collect_level
from esgrpo.tasks.hub import load_rows

N_ELEMENTS = 54

HUB_ID = "hicai-zju/SciKnowEval"
# Distinct synthetic instances per split (found in 85M draws (15 min, not exhausted); more is never needed).
SYNTHETIC_CAPACITY = {"pretrain": 32_081_175, "train": 4_580_399, "test": 9_159_742}
HUB_CONFIG = "v2"
HUB_SEED = 42
HUB_TRAIN_SIZE = 200
HUB_TEST_SIZE = 2000

_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z0-9])[A-D](?![A-Za-z0-9])")


Element = tuple[int, str, str]  # (atomic number, symbol, lower-case name)


@functools.lru_cache(maxsize=8)
def _elements(count: int = N_ELEMENTS) -> tuple[Element, ...]:
    """(atomic number, symbol, lower-case name) for the first `count` elements."""
    from periodictable import elements

    return tuple((z, elements[z].symbol, elements[z].name) for z in range(1, count + 1))


@functools.lru_cache(maxsize=1)
def _masses() -> dict[int, float]:
    """Standard atomic weights: elements up to bismuth (83) but technetium (43) and promethium (61), which have
    none (periodictable lists the mass of an isotope for them, as for everything past bismuth)."""
    from periodictable import elements

    return {z: float(elements[z].mass) for z in range(1, 84) if z not in (43, 61)}


# Periods end at these atomic numbers (period p holds PERIOD_ENDS[p-2]+1 .. PERIOD_ENDS[p-1]).
PERIOD_ENDS = (2, 10, 18, 36, 54, 86, 118)
FAMILIES = {
    "noble gas": (2, 10, 18, 36, 54, 86),
    "halogen": (9, 17, 35, 53, 85),
    "alkali metal": (3, 11, 19, 37, 55, 87),
    "alkaline earth metal": (4, 12, 20, 38, 56, 88),
}


def period(z: int) -> int:
    return next(p for p, end in enumerate(PERIOD_ENDS, start=1) if z <= end)


def format_question(stem: str, choices: list[str], labels: str = LETTERS) -> str:
    """The stem followed by one `A. text` line per choice."""
    return stem + "".join(f"\n{label}. {text}" for label, text in zip(labels, choices, strict=False))


@dataclass(frozen=True)
class ChemistryLevel(Level):
    """A difficulty level: which elements, which kinds of question (KINDS, drawn uniformly) and how close the
    distractors are to the answer."""

    elements: int  # the first this many elements of the periodic table
    kinds: tuple[str, ...]
    near: int | None  # distractor elements among the answer's 2*near nearest (None: any element, level 1)
    number_near: int  # atomic-number distractors within +-this of the answer (at least 3)


ORIGINAL_KINDS = ("name_of_symbol", "symbol_of_name", "number_of_name", "name_of_number", "largest_number")
MORE_KINDS = ("period_of_name", "family_member", "mass_of_name")
# Capacities of levels 2-4: the distinct instances per split found in 500,000 draws of seed 0, a lower bound
# (scripts/difficulty_levels.py --capacity 500000).
LEVELS: dict[int, ChemistryLevel] = {
    1: ChemistryLevel("54 elements; symbol <-> name, name <-> atomic number, largest atomic number; "
                      "random distractors (numbers within 8)", SYNTHETIC_CAPACITY, N_ELEMENTS, ORIGINAL_KINDS,
                      near=None, number_near=8),
    2: ChemistryLevel("86 elements; the same questions with close distractors: the answer's 6 nearest "
                      "elements, symbols sharing a letter, numbers within 3",
                      {"pretrain": 121_000, "train": 17_000, "test": 34_000}, 86, ORIGINAL_KINDS,
                      near=3, number_near=3),
    3: ChemistryLevel("as 2, plus period, family (noble gas, halogen, alkali / alkaline earth metal) and "
                      "standard atomic weight questions", {"pretrain": 144_000, "train": 20_000, "test": 41_000},
                      86, ORIGINAL_KINDS + MORE_KINDS, near=3, number_near=3),
    4: ChemistryLevel("103 elements; as 3, plus the heaviest of 4 neighbours (Ar/K, Co/Ni, Te/I invert); "
                      "distractors among the 4 nearest", {"pretrain": 99_000, "train": 14_000, "test": 28_000},
                      103, (*ORIGINAL_KINDS, *MORE_KINDS, "largest_mass"), near=2, number_near=3),
}

# A question kind: (rng, level, table, drawn element) -> (stem, gold text, 3 wrong texts, worked line), or None
# when the drawn element does not fit (then the whole instance is drawn again).
Made = tuple[str, str, list[str], str] | None


def _nearest(table: tuple[Element, ...], z: int, k: int, keep: Callable[[Element], bool] = lambda e: True
             ) -> list[Element]:
    """The `k` elements nearest to atomic number `z` (z itself excluded; ties: the lower number first)."""
    return sorted((e for e in table if e[0] != z and keep(e)), key=lambda e: (abs(e[0] - z), e[0]))[:k]


def _wrong_elements(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], z: int) -> list[Element]:
    """Three distractor elements: any others (level 1), or among the 2*near nearest to the answer."""
    if spec.near is None:
        return rng.sample([e for e in table if e[0] != z], 3)
    return rng.sample(_nearest(table, z, 2 * spec.near), 3)


def _name_of_symbol(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], el: Element) -> Made:
    z, sym, name = el
    return (f"Which element has the symbol {sym}?", name, [e[2] for e in _wrong_elements(rng, spec, table, z)],
            f"{sym} is {name}.")


def _symbol_of_name(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], el: Element) -> Made:
    z, sym, name = el
    # Symbol choices exclude B and C: a one-letter choice text would read as a choice letter.
    while sym in LETTERS:
        z, sym, name = rng.choice(table)
    if spec.near is None:
        pool = [e[1] for e in table if e[0] != z and e[1] not in LETTERS]
        wrong = rng.sample(pool, 3)
    else:  # lures: symbols starting like the answer or like the name (potassium: K, P, Pt, Po)
        initials = {sym[0], name[0].upper()}
        lures = [e[1] for e in table if e[0] != z and e[1] not in LETTERS and e[1][0] in initials]
        fill = [e[1] for e in _nearest(table, z, 6, lambda e: e[1] not in LETTERS and e[1] not in lures)]
        wrong = rng.sample(lures, 3) if len(lures) >= 3 else lures + rng.sample(fill, 3 - len(lures))
    return f"What is the symbol of {name}?", sym, wrong, f"{name.capitalize()} is {sym}."


def _number_of_name(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], el: Element) -> Made:
    z, _, name = el
    near = [x for x in range(max(1, z - spec.number_near), min(spec.elements, z + spec.number_near) + 1) if x != z]
    return (f"What is the atomic number of {name}?", str(z), [str(x) for x in rng.sample(near, 3)],
            f"{name.capitalize()} is element {z}.")


def _name_of_number(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], el: Element) -> Made:
    z, _, name = el
    return (f"Which element has atomic number {z}?", name, [e[2] for e in _wrong_elements(rng, spec, table, z)],
            f"Element {z} is {name}.")


def _largest_number(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], el: Element) -> Made:
    pool = table if spec.near is None else [el, *_nearest(table, el[0], 2 * spec.near)]
    picks = sorted(rng.sample(pool, 4))
    z, _, name = picks[-1]
    wrong = [e[2] for e in picks[:-1]]
    rng.shuffle(wrong)
    return "Which has the largest atomic number?", name, wrong, f"{name.capitalize()} is element {z}."


def _period_of_name(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], el: Element) -> Made:
    z, _, name = el
    p = period(z)
    others = [q for q in range(1, period(spec.elements) + 1) if q != p]
    return (f"In which period of the periodic table is {name}?", str(p), [str(q) for q in rng.sample(others, 3)],
            f"{name.capitalize()} is element {z}, in period {p}.")


def _family_member(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], el: Element) -> Made:
    family = rng.choice(list(FAMILIES))
    members = [e for e in table if e[0] in FAMILIES[family]]
    z, _, name = rng.choice(members)
    wrong = [e[2] for e in rng.sample(_nearest(table, z, 2 * (spec.near or 3), lambda e: e not in members), 3)]
    article = "an" if family[0] in "aeiou" else "a"
    return f"Which of these is {article} {family}?", name, wrong, f"{name.capitalize()} is {article} {family}."


def _mass_of_name(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], el: Element) -> Made:
    z, _, name = el
    masses = _masses()
    if z not in masses:
        return None
    wrong = rng.sample(_nearest(table, z, 2 * (spec.near or 3), lambda e: e[0] in masses), 3)
    return (f"What is the standard atomic weight of {name}?", f"{masses[z]:.1f}",
            [f"{masses[e[0]]:.1f}" for e in wrong], f"{name.capitalize()} weighs {masses[z]:.1f}.")


def _largest_mass(rng: random.Random, spec: ChemistryLevel, table: tuple[Element, ...], el: Element) -> Made:
    masses = _masses()
    if el[0] not in masses:
        return None
    picks = [el, *rng.sample(_nearest(table, el[0], 2 * (spec.near or 3), lambda e: e[0] in masses), 3)]
    picks.sort(key=lambda e: masses[e[0]])
    z, _, name = picks[-1]
    wrong = [e[2] for e in picks[:-1]]
    rng.shuffle(wrong)
    return ("Which has the largest standard atomic weight?", name, wrong,
            f"{name.capitalize()} weighs {masses[z]:.1f}.")


KINDS: dict[str, Callable[[random.Random, ChemistryLevel, tuple[Element, ...], Element], Made]] = {
    "name_of_symbol": _name_of_symbol,
    "symbol_of_name": _symbol_of_name,
    "number_of_name": _number_of_name,
    "name_of_number": _name_of_number,
    "largest_number": _largest_number,
    "period_of_name": _period_of_name,
    "family_member": _family_member,
    "mass_of_name": _mass_of_name,
    "largest_mass": _largest_mass,
}


def _draw(rng: random.Random, spec: ChemistryLevel = LEVELS[1]) -> tuple[str, str, dict[str, Any]]:
    table = _elements(spec.elements)
    while True:
        el = rng.choice(table)
        made = KINDS[spec.kinds[rng.randrange(len(spec.kinds))]](rng, spec, table, el)
        if made is not None:
            break
    stem, gold, wrong, work = made
    pos = rng.randrange(4)
    choices = wrong[:pos] + [gold] + wrong[pos:]
    question = format_question(stem, choices)
    return question, question, {"answer": LETTERS[pos], "choices": choices, "work": work}


class ChemistryTask(Task):
    """4-choice chemistry questions with the `"answer": "X"` format."""

    builtin = True
    format_line = 'End your answer with "answer": "X", X being the letter of the right choice (A, B, C or D).'

    name = "chemistry"
    system_prompt = 'Think step by step, then end with "answer": "X", X being the letter of the right choice.'
    levels = LEVELS

    def reward(self, text: str, example: Example) -> float:
        return mcq_reward.unchecked(text, str(example.target["answer"]))

    def answer_complete(self, text: str) -> bool:
        """The answer field is there (a letter alone may be part of the reasoning)."""
        return answer_field(text) is not None

    def answer(self, text: str) -> str | None:
        return extract_choice(text)

    def gold(self, example: Example) -> str | None:
        letter = str(example.target.get("answer", "")).strip().upper()
        return letter if letter in LETTERS and len(letter) == 1 else None

    def synthetic(self, split: Split, n: int, seed: int, level: int = 1) -> list[Example]:
        return collect_level(self.name, split, n, seed, level, LEVELS, _draw)

    def from_hub(self, split: Literal["train", "test"], n: int | None, path: str | None) -> list[Example]:
        if split == "train":
            size = HUB_TRAIN_SIZE if n is None else n
            if size > HUB_TRAIN_SIZE:
                raise ConfigError(
                    f"chemistry hub train has at most {HUB_TRAIN_SIZE} rows (the next ones are the test set)"
                )
            start = 0
        else:
            start, size = HUB_TRAIN_SIZE, HUB_TEST_SIZE if n is None else n
        ds = load_rows(
            HUB_ID,
            config=HUB_CONFIG,
            split="test",
            columns=("question", "choices", "answerKey", "type", "domain"),
            path=path,
        )
        keep = [
            i
            for i, (domain, kind) in enumerate(zip(ds["domain"], ds["type"], strict=True))
            if domain == "Chemistry" and kind == "mcq-4-choices"
        ]
        # Same order as ds.filter(...).shuffle(seed=42): the permutation depends only on length and seed.
        pool = ds.select(keep).shuffle(seed=HUB_SEED)
        idx = list(range(min(start, len(pool)), min(start + size, len(pool))))
        out = []
        for i, row in zip(idx, pool.select(idx), strict=True):
            texts = [str(t) for t in row["choices"]["text"]]
            labels = [str(label) for label in row["choices"].get("label") or LETTERS[: len(texts)]]
            answer = str(row["answerKey"]).strip().upper()
            if answer not in labels or answer not in LETTERS:
                raise DataSourceError(f"{path or HUB_ID}: the row with question {str(row['question'])[:60]!r} has "
                                      f"answerKey {row['answerKey']!r}, not one of the choice letters {labels}")
            target = {"answer": answer, "choices": texts}
            question = format_question(str(row["question"]), texts, labels)
            out.append(Example(uid=f"chemistry-hub-{split}-{i}", question=question, target=target))
        return out

    def demonstration(self, example: Example, rng: random.Random, kind: DemoKind) -> str:
        letter = str(example.target["answer"]).strip().upper()
        choices = [str(c) for c in example.target.get("choices") or []]
        work = example.target.get("work") or ""
        gold_idx = LETTERS.index(letter)
        if kind == "correct":
            return f'{work} "answer": "{letter}"'.strip()
        if kind == "wrong":
            other = rng.choice([i for i in range(4) if i != gold_idx])
            said = f"It is {choices[other]}. " if other < len(choices) and len(choices[other]) <= 40 else ""
            return f'{said}"answer": "{LETTERS[other]}"'
        if kind == "mistake":  # the next choice (after D: A), named in the work where the right one was
            other = (gold_idx + 1) % max(1, min(4, len(choices)))
            if other < len(choices) and gold_idx < len(choices) and choices[gold_idx] in work:
                work = work.replace(choices[gold_idx], choices[other])
            else:
                work = ""
            return f'{work} "answer": "{LETTERS[other]}"'.strip()
        if kind == "slip":
            # The right choice's text instead of its letter; no standalone A-D may appear anywhere.
            text = choices[gold_idx] if gold_idx < len(choices) else ""
            candidates = [f"{work} answer: {text}", f"answer: {text}"] if text else []
            candidates.append(f"answer: choice {gold_idx + 1}")
            return next(c.strip() for c in candidates if not _STANDALONE_LETTER.search(c))
        raise ValueError(f"unknown demonstration kind {kind!r}")
