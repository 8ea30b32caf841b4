"""Math reward: the last `\\boxed{...}` matches the gold answer after normalization.

Two ways to match: equal normalized strings (LaTeX noise such as spaces, `\\left`, `\\!`, `$`,
`\\text{}`, `\\dfrac`, degrees, percent signs and a trailing period removed), or equal numbers
under a small safe parser (integers, decimals, `a/b`, `\\frac{a}{b}`, signs, thousands commas),
compared exactly as Fractions. No eval and no sympy: symbolic equivalence is not attempted.
"""

from __future__ import annotations

import re
from fractions import Fraction

from esgrpo.rewards.extract import MAX_BOXED_CHARS, last_boxed, match_brace, safe_reward, unwrap_text

MAX_NUMBER_CHARS = 64

# ASCII digits only: `\d` would accept unicode digits such as '٣' or '３'.
_NUM = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_NUM_RE = re.compile(_NUM)
_THOUSANDS_RE = re.compile(r"[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_FRAC_RE = re.compile(r"([+-]?)\\frac\{(" + _NUM + r")\}\{(" + _NUM + r")\}")
_SLASH_RE = re.compile(r"(" + _NUM + r")/(" + _NUM + r")")
_FRAC_SHORT_RE = re.compile(r"\\frac([0-9])([0-9])")
_FRAC_HALF_SHORT_RE = re.compile(r"\\frac\{([^{}]*)\}([0-9a-zA-Z])")
_SQRT_SHORT_RE = re.compile(r"\\sqrt([0-9a-zA-Z])")
_LHS_RE = re.compile(r"[a-zA-Z](?:_[0-9a-zA-Z])?=")

_REMOVE = (
    "\\left",
    "\\right",
    "\\displaystyle",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "^{\\circ}",
    "^\\circ",
    "\\circ",
    "\\%",
    "%",
    "\\$",
    "$",
)


def _strip_trailing_unit(s: str) -> str:
    """Drop a trailing `\\text{...}` unit group (`5\\text{ cm}` -> `5`) if something remains."""
    for w in ("\\text{", "\\mbox{", "\\mathrm{"):
        i = s.rfind(w)
        if i > 0 and match_brace(s, i + len(w) - 1) == len(s) - 1:
            return s[:i]
    return s


def normalize_answer(s: str) -> str:
    """Canonical string form of a LaTeX answer for exact comparison."""
    s = s.strip().replace("\n", " ")
    s = _strip_trailing_unit(s.rstrip(". ").strip())
    s = unwrap_text(s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for token in _REMOVE:
        s = s.replace(token, "")
    s = s.replace(" ", "").replace("\t", "")
    s = s.rstrip(".")
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    m = _LHS_RE.match(s)
    if m and s.count("=") == 1:
        s = s[m.end() :]
    return s


def parse_number(s: str) -> Fraction | None:
    """Exact value of a normalized plain number, `a/b` or `\\frac{a}{b}`, else None."""
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if _NUM_RE.fullmatch(s):
        return Fraction(s)
    m = _FRAC_RE.fullmatch(s)
    if m:
        den = Fraction(m.group(3))
        if den == 0:
            return None
        value = Fraction(m.group(2)) / den
        return -value if m.group(1) == "-" else value
    m = _SLASH_RE.fullmatch(s)
    if m:
        den = Fraction(m.group(2))
        return None if den == 0 else Fraction(m.group(1)) / den
    return None


def answers_match(pred: str, gold: str) -> bool:
    """Normalized string equality, or numeric equality when both sides parse as numbers."""
    if len(pred) > MAX_BOXED_CHARS:
        return False
    p, g = normalize_answer(pred), normalize_answer(str(gold))
    if not p or not g:
        return False
    if p == g:
        return True
    pv, gv = parse_number(p), parse_number(g)
    return pv is not None and gv is not None and pv == gv


@safe_reward
def math_reward(text: str, answer: str) -> float:
    """1.0 iff the last `\\boxed{...}` in `text` matches the gold `answer`."""
    pred = last_boxed(text)
    if pred is None:
        return 0.0
    return 1.0 if answers_match(pred, answer) else 0.0
