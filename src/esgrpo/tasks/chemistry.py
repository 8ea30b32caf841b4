"""Chemistry: 4-choice questions answered as `"answer": "C"` (SciKnowEval in the paper).

Synthetic instances are built from real periodic-table data (the `periodictable` package, the
first N_ELEMENTS elements): symbol <-> name, name <-> atomic number, and "which has the largest
atomic number". The gold position is drawn uniformly from A-D. Canonical key: the full question
text with its choices, so the same fact may recur across splits with other distractors or order;
no identical question does. Symbol choices never include the one-letter symbols B and C, so a
choice text can never be mistaken for a choice letter.

Hub (hicai-zju/SciKnowEval, config v2, its only split "test"): rows with domain "Chemistry" and
type "mcq-4-choices", shuffled with datasets' shuffle(seed=42); train = the first 200, test =
the next 2000. A given n replaces the size (train at most 200, so it never reaches the test rows).
"""

from __future__ import annotations

import functools
import random
import re
from typing import Any, Literal

from esgrpo.errors import ConfigError, DataSourceError
from esgrpo.rewards.mcq import LETTERS, answer_field, extract_choice, mcq_reward
from esgrpo.tasks.base import DemoKind, Example, Split, Task
from esgrpo.tasks.hub import collect_synthetic, load_rows

N_ELEMENTS = 54

HUB_ID = "hicai-zju/SciKnowEval"
# Distinct synthetic instances per split (found in 85M draws (15 min, not exhausted); more is never needed).
SYNTHETIC_CAPACITY = {"pretrain": 32_081_175, "train": 4_580_399, "test": 9_159_742}
HUB_CONFIG = "v2"
HUB_SEED = 42
HUB_TRAIN_SIZE = 200
HUB_TEST_SIZE = 2000

_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z0-9])[A-D](?![A-Za-z0-9])")


@functools.lru_cache(maxsize=1)
def _elements() -> tuple[tuple[int, str, str], ...]:
    """(atomic number, symbol, lower-case name) for the first N_ELEMENTS elements."""
    from periodictable import elements

    return tuple((z, elements[z].symbol, elements[z].name) for z in range(1, N_ELEMENTS + 1))


def format_question(stem: str, choices: list[str], labels: str = LETTERS) -> str:
    """The stem followed by one `A. text` line per choice."""
    return stem + "".join(f"\n{label}. {text}" for label, text in zip(labels, choices, strict=False))


def _draw(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    table = _elements()
    z, sym, name = rng.choice(table)
    others = [e for e in table if e[0] != z]
    kind = rng.randrange(5)
    if kind == 0:
        stem, gold, wrong = (
            f"Which element has the symbol {sym}?",
            name,
            [e[2] for e in rng.sample(others, 3)],
        )
        work = f"{sym} is {name}."
    elif kind == 1:
        # Symbol choices exclude B and C: a one-letter choice text would read as a choice letter.
        while sym in LETTERS:
            z, sym, name = rng.choice(table)
        pool = [e[1] for e in table if e[0] != z and e[1] not in LETTERS]
        stem, gold, wrong = f"What is the symbol of {name}?", sym, rng.sample(pool, 3)
        work = f"{name.capitalize()} is {sym}."
    elif kind == 2:
        near = [x for x in range(max(1, z - 8), min(N_ELEMENTS, z + 8) + 1) if x != z]
        stem, gold, wrong = (
            f"What is the atomic number of {name}?",
            str(z),
            [str(x) for x in rng.sample(near, 3)],
        )
        work = f"{name.capitalize()} is element {z}."
    elif kind == 3:
        stem, gold, wrong = (
            f"Which element has atomic number {z}?",
            name,
            [e[2] for e in rng.sample(others, 3)],
        )
        work = f"Element {z} is {name}."
    else:
        picks = sorted(rng.sample(table, 4))
        z, sym, name = picks[-1]
        stem, gold, wrong = "Which has the largest atomic number?", name, [e[2] for e in picks[:-1]]
        rng.shuffle(wrong)
        work = f"{name.capitalize()} is element {z}."
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

    def synthetic(self, split: Split, n: int, seed: int) -> list[Example]:
        return collect_synthetic(self.name, split, n, seed, _draw, SYNTHETIC_CAPACITY)

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
        if kind == "slip":
            # The right choice's text instead of its letter; no standalone A-D may appear anywhere.
            text = choices[gold_idx] if gold_idx < len(choices) else ""
            candidates = [f"{work} answer: {text}", f"answer: {text}"] if text else []
            candidates.append(f"answer: choice {gold_idx + 1}")
            return next(c.strip() for c in candidates if not _STANDALONE_LETTER.search(c))
        raise ValueError(f"unknown demonstration kind {kind!r}")
