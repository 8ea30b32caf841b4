"""Multiple-choice reward (Chemistry): the extracted letter equals the gold letter.

Extraction order, as in the paper: the last JSON-like `"answer": "C"` field; else the last
`answer: C` (case-insensitive key, optional markdown bold, quotes or parentheses); else the last
standalone capital A-D or parenthesized lowercase `(c)`.

Where the paper's scorer reads the first letter it meets, we read what the answer says:
- a hedge is not an answer and scores 0 for every gold: a JSON value naming two or more letters
  (`"A or B"`, `"C and D"`, `"B/C"`, `"A, B"`), `answer: A or B` (also `and`, `/`, `&`), and a last
  standalone letter written as an alternative (`... is A or B.`, `A/B`);
- a word is not a letter: `"answer": "Boron"` is not B, `answer: a mixture` is not A. A lowercase
  letter counts where it is unambiguous: alone in the JSON value, in parentheses (`The answer is (c).`),
  or after `answer:` / `answer is` when nothing but closing punctuation follows (`answer: b`,
  `the answer is c.`); a bare lowercase a-d elsewhere is the article or a word, not a choice.
"""

from __future__ import annotations

import re

from esgrpo.rewards.extract import safe_reward, tail

LETTERS = "ABCD"
_LETTER_SET = frozenset(LETTERS)
_HEDGE = "hedge"  # what a rule returns for a hedged answer: stop, score 0

# The value of a JSON-like field, bounded: a longer value is prose, not a choice.
_FIELD_RE = re.compile(r"\"answer\"\s*:\s*\"([^\"\n]{0,64})\"", re.IGNORECASE)
_WORD_RE = re.compile(r"[A-Za-z0-9]+")
_CONNECTIVES = frozenset({"or", "and", "either", "both"})
# Each `\s*` is separated from the next by a mandatory literal, so matching stays linear.
_KEY_RE = re.compile(r"(?i:answer)[\"']?\**\s*[:\uff1a]\s*(?:\*+\s*)?[\"']?\(?([A-D])(?![A-Za-z0-9])")
# A lowercase letter after the key only when it ends the response (closing punctuation aside).
_KEY_LOWER_END_RE = re.compile(
    r"(?i:answer)[\"']?\**(?:\s*[:\uff1a]|\s+is)\s*(?:\*+\s*)?[\"']?\(?([a-d])[)\].*\"'`]*$")
# After the key's letter: another letter joined by or / and / slash / ampersand.
_KEY_HEDGE_RE = re.compile(r"\)?(?:\s+(?i:or|and)\s+|\s*[/&]\s*)\(?[A-D](?![A-Za-z0-9])")
_STANDALONE_RE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])|\(([a-d])\)")
# Before the last standalone letter: another letter and `or` / a slash (`A or B`, `A/B`). `and` and
# commas are not hedges in prose ("Between B and C, ...", "I pick B, not C").
_PROSE_HEDGE_BEFORE_RE = re.compile(r"(?:(?<![A-Za-z0-9])\(?[A-D]\)?|\([a-d]\))(?:\s+or\s+|\s*/\s*)\(?$")


def _value_letters(value: str) -> set[str]:
    """The letters a JSON answer value names: any case when the value is only letters and connectives
    (`c`, `a or b`), else only its standalone capitals (`C) Iron` names C, `Boron` names none)."""
    words = _WORD_RE.findall(value)
    if words and all(w.upper() in _LETTER_SET or w.lower() in _CONNECTIVES for w in words):
        return {w.upper() for w in words if w.upper() in _LETTER_SET}
    return {w for w in words if w in _LETTER_SET}


def _json_choice(s: str) -> str | None:
    """The last JSON answer field that names a letter: its letter, or _HEDGE if it names several."""
    found = None
    for m in _FIELD_RE.finditer(s):
        letters = _value_letters(m.group(1))
        if letters:
            found = letters.pop() if len(letters) == 1 else _HEDGE
    return found


def _key_choice(s: str) -> str | None:
    """The letter of the last `answer: X`, or _HEDGE for `answer: X or Y`."""
    # A lowercase key answer at the very end is necessarily the last key answer.
    lower = _KEY_LOWER_END_RE.search(s[-64:])
    if lower:
        return lower.group(1).upper()
    last = None
    for m in _KEY_RE.finditer(s):
        last = m
    if last is None:
        return None
    return _HEDGE if _KEY_HEDGE_RE.match(s, last.end(), last.end() + 16) else last.group(1)


def _standalone_choice(s: str) -> str | None:
    """The last standalone capital or `(c)`, or _HEDGE when it is the second of `X or Y` / `X/Y`."""
    last = None
    for m in _STANDALONE_RE.finditer(s):
        last = m
    if last is None:
        return None
    if _PROSE_HEDGE_BEFORE_RE.search(s, max(0, last.start() - 16), last.start()):
        return _HEDGE
    return (last.group(1) or last.group(2)).upper()


def answer_field(text: str) -> str | None:
    """The letter of an explicit answer field (`"answer": "C"` or `answer: C`); None when there is none
    or it hedges."""
    if not isinstance(text, str):
        return None
    s = tail(text)
    letter = _json_choice(s) or _key_choice(s)
    return None if letter == _HEDGE else letter


def extract_choice(text: str) -> str | None:
    """The chosen letter (upper case) by the paper's three rules, or None (no choice, or a hedge)."""
    if not isinstance(text, str):
        return None
    s = tail(text)
    for rule in (_json_choice, _key_choice, _standalone_choice):
        letter = rule(s)
        if letter is not None:
            return None if letter == _HEDGE else letter
    return None


@safe_reward
def mcq_reward(text: str, answer: str) -> float:
    """1.0 iff the letter extracted from `text` equals the gold letter `answer`."""
    gold = str(answer).strip().upper()
    if gold not in LETTERS or len(gold) != 1:
        return 0.0
    return 1.0 if extract_choice(text) == gold else 0.0
