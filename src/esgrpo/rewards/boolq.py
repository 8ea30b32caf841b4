"""BoolQ reward: the last `\\boxed{yes}` / `\\boxed{no}` equals the gold boolean.

The synonym set is the paper's: yes/true/1/correct/right and no/false/0/incorrect/wrong. As in the
paper's scorer, case and all punctuation are ignored (`No!`, `"yes."`, `(no)`, `**yes**`, `{no}` from
`\\boxed{{no}}`); unlike it, `\\text{}`-style wrappers are unwrapped first (`\\text{yes}` is yes) and
whitespace left where punctuation was removed is stripped (`yes .`), and a signed number is not a
synonym (`-1` and `+0` score 0, where the paper's code strips the sign). Anything else scores 0.
"""

from __future__ import annotations

import re

from esgrpo.rewards.extract import last_boxed, safe_reward, unwrap_text

_YES = frozenset({"yes", "true", "1", "correct", "right"})
_NO = frozenset({"no", "false", "0", "incorrect", "wrong"})
# Unicode-aware like the paper's `[^\w\s]`: `¡no!` and `yes。` lose their punctuation too.
_PUNCTUATION_RE = re.compile(r"[^\w\s]")
_SIGNED_NUMBER_RE = re.compile(r"\s*[-+\u2212]\s*\d")


def parse_yes_no(s: str | None) -> bool | None:
    """True for a yes synonym, False for a no synonym (punctuation, case, wrappers ignored), else None."""
    if s is None or len(s) > 64:
        return None
    text = unwrap_text(s)
    if _SIGNED_NUMBER_RE.match(text):  # `-1` is a number, not a "1" with punctuation around it
        return None
    word = _PUNCTUATION_RE.sub("", text).strip().lower()
    if word in _YES:
        return True
    if word in _NO:
        return False
    return None


def gold_bool(answer: object) -> bool | None:
    """The gold label as a bool: bools (numpy's too), the integers 0/1, or yes/no/true/false text;
    None for anything else (then no response can score)."""
    if hasattr(answer, "item") and callable(answer.item):  # numpy / torch scalars
        try:
            answer = answer.item()
        except (TypeError, ValueError):
            return None
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, int):
        return bool(answer) if answer in (0, 1) else None
    if isinstance(answer, str):
        word = answer.strip().lower()
        return True if word == "1" else False if word == "0" else parse_yes_no(word)
    return None


@safe_reward
def boolq_reward(text: str, answer: bool) -> float:
    """1.0 iff the last boxed yes/no in `text` equals the gold `answer`."""
    gold = gold_bool(answer)
    pred = parse_yes_no(last_boxed(text))
    return 1.0 if gold is not None and pred is not None and pred == gold else 0.0
