"""BoolQ reward: the last `\\boxed{yes}` / `\\boxed{no}` equals the gold boolean.

`true`/`false` are accepted as synonyms; case, surrounding whitespace, `\\text{}` wrappers,
quotes and a trailing period are ignored. Anything else in the box scores 0.
"""

from __future__ import annotations

from esgrpo.rewards.extract import last_boxed, safe_reward, unwrap_text

_YES = frozenset({"yes", "true"})
_NO = frozenset({"no", "false"})


def parse_yes_no(s: str | None) -> bool | None:
    """True for yes/true, False for no/false (normalized), None for anything else."""
    if s is None or len(s) > 64:
        return None
    word = unwrap_text(s).strip().strip("\"'`*").strip().rstrip(".").strip().lower()
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
