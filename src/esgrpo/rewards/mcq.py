"""Multiple-choice reward (Chemistry): the extracted letter equals the gold letter.

Extraction order, as in the paper: the last JSON-like `"answer": "C"` field; else the last
`answer: C` (case-insensitive key, optional markdown bold or parentheses); else the last
standalone capital A-D. A lowercase letter counts inside the quoted JSON form, where it is
unambiguous, and after `answer:` when nothing but closing punctuation follows it (`answer: b`,
`answer: (c).`), but not when words follow (`answer: a mixture` must not read as A).
"""

from __future__ import annotations

import re

from esgrpo.rewards.extract import safe_reward, tail

LETTERS = "ABCD"

_JSON_RE = re.compile(r"\"answer\"\s*:\s*\"\s*([A-Da-d])\s*\"", re.IGNORECASE)
# Each `\s*` is separated from the next by a mandatory literal, so matching stays linear.
_KEY_RE = re.compile(r"(?i:answer)\**\s*[:\uff1a]\s*(?:\*+\s*)?\(?([A-D])(?![A-Za-z0-9])")
# A lowercase letter after the key only when it ends the response (closing punctuation aside).
_KEY_LOWER_END_RE = re.compile(r"(?i:answer)\**\s*[:\uff1a]\s*(?:\*+\s*)?\(?([a-d])[)\].*\"'`]*$")
_STANDALONE_RE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])")


def _last(pattern: re.Pattern[str], s: str) -> str | None:
    found = None
    for m in pattern.finditer(s):
        found = m.group(1)
    return found


def answer_field(text: str) -> str | None:
    """The letter of an explicit answer field (`"answer": "C"` or `answer: C`), or None."""
    if not isinstance(text, str):
        return None
    s = tail(text)
    letter = _last(_JSON_RE, s) or _last(_KEY_RE, s)
    return letter.upper() if letter else None


def extract_choice(text: str) -> str | None:
    """The chosen letter (upper case) by the paper's three rules, or None."""
    if not isinstance(text, str):
        return None
    s = tail(text)
    letter = _last(_JSON_RE, s)
    if letter is None:
        # A lowercase key answer at the very end is necessarily the last key answer.
        lower = _KEY_LOWER_END_RE.search(s[-64:])
        letter = lower.group(1) if lower else _last(_KEY_RE, s)
    if letter is None:
        letter = _last(_STANDALONE_RE, s)
    return letter.upper() if letter is not None else None


@safe_reward
def mcq_reward(text: str, answer: str) -> float:
    """1.0 iff the letter extracted from `text` equals the gold letter `answer`."""
    gold = str(answer).strip().upper()
    if gold not in LETTERS or len(gold) != 1:
        return 0.0
    return 1.0 if extract_choice(text) == gold else 0.0
