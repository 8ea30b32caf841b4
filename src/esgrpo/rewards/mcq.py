"""Multiple-choice reward (Chemistry): the extracted letter equals the gold letter.

Extraction order, as in the paper: the last JSON-like `"answer": "C"` field; else the last
`answer: C` (case-insensitive key, optional markdown bold or parentheses); else the last
standalone capital A-D. A lowercase letter counts only inside the quoted JSON form, where it is
unambiguous (`answer: a mixture` must not read as A).
"""

from __future__ import annotations

import re

from esgrpo.rewards.extract import safe_reward, tail

LETTERS = "ABCD"

_JSON_RE = re.compile(r"\"answer\"\s*:\s*\"\s*([A-Da-d])\s*\"", re.IGNORECASE)
# Each `\s*` is separated from the next by a mandatory literal, so matching stays linear.
_KEY_RE = re.compile(r"(?i:answer)\**\s*[:\uff1a]\s*(?:\*+\s*)?\(?([A-D])(?![A-Za-z0-9])")
_STANDALONE_RE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])")


def _last(pattern: re.Pattern[str], s: str) -> str | None:
    found = None
    for m in pattern.finditer(s):
        found = m.group(1)
    return found


def extract_choice(text: str) -> str | None:
    """The chosen letter (upper case) by the paper's three rules, or None."""
    if not isinstance(text, str):
        return None
    s = tail(text)
    for pattern in (_JSON_RE, _KEY_RE, _STANDALONE_RE):
        letter = _last(pattern, s)
        if letter is not None:
            return letter.upper()
    return None


@safe_reward
def mcq_reward(text: str, answer: str) -> float:
    """1.0 iff the letter extracted from `text` equals the gold letter `answer`."""
    gold = str(answer).strip().upper()
    if gold not in LETTERS or len(gold) != 1:
        return 0.0
    return 1.0 if extract_choice(text) == gold else 0.0
