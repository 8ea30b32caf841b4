"""Math reward: the last `\\boxed{...}` matches the gold answer after normalization.

Two ways to match: equal normalized strings (LaTeX noise such as spaces, `\\left`, `\\!`, `$`,
`\\text{}`, `\\dfrac`, degrees, percent signs, a trailing unit after a number and a trailing period
removed), or equal numbers under a small safe parser (integers, decimals, exponent forms `5e-01` and
`5\\times10^{-1}`, `a/b`, `\\frac{a}{b}`, signs, thousands commas), compared exactly as Fractions.
No eval and no sympy: symbolic equivalence is not attempted.
"""

from __future__ import annotations

import re
from fractions import Fraction

from esgrpo.rewards.extract import MAX_BOXED_CHARS, last_boxed, match_brace, safe_reward, unwrap_text

MAX_NUMBER_CHARS = 64

# ASCII digits only: `\d` would accept unicode digits such as '٣' or '３'. An exponent has at most three
# digits, so the exact Fraction of any accepted number stays small (10**999 at most).
_NUM = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?"
_NUM_RE = re.compile(_NUM)
# `5\times10^{-1}`, `5\cdot 10^3` (spaces are already removed by normalize_answer).
_TIMES_TEN_RE = re.compile(r"(" + _NUM + r")\\(?:times|cdot)10\^(?:\{([+-]?[0-9]{1,3})\}|([0-9]))")
_THOUSANDS_RE = re.compile(r"[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_FRAC_RE = re.compile(r"([+-]?)\\frac\{(" + _NUM + r")\}\{(" + _NUM + r")\}")
_SLASH_RE = re.compile(r"(" + _NUM + r")/(" + _NUM + r")")
_FRAC_SHORT_RE = re.compile(r"\\frac([0-9])([0-9])")
_FRAC_HALF_SHORT_RE = re.compile(r"\\frac\{([^{}]*)\}([0-9a-zA-Z])")
_SQRT_SHORT_RE = re.compile(r"\\sqrt([0-9a-zA-Z])")
_LHS_RE = re.compile(r"[a-zA-Z](?:_[0-9a-zA-Z])?=")
_UNIT_POWER_RE = re.compile(r"\^(?:[23]|\{[23]\})$")

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
    """Drop a trailing `\\text{...}` unit group, squared or cubed or not (`5\\text{ cm}`, `5\\text{ cm}^2`
    -> `5`), when more than LaTeX noise precedes it: in `\\$\\text{(B)}` the group is the answer."""
    core = _UNIT_POWER_RE.sub("", s)
    for w in ("\\text{", "\\mbox{", "\\mathrm{"):
        i = core.rfind(w)
        if i > 0 and match_brace(core, i + len(w) - 1) == len(core) - 1 and _strip_noise(core[:i]):
            return core[:i]
    return s


def _strip_noise(s: str) -> str:
    for token in _REMOVE:
        s = s.replace(token, "")
    return s.replace(" ", "").replace("\t", "")


def normalize_answer(s: str) -> str:
    """Canonical string form of a LaTeX answer for exact comparison."""
    s = s.strip().replace("\n", " ")
    s = _strip_trailing_unit(s.rstrip(". ").strip())
    s = unwrap_text(s)
    s = _strip_noise(s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"))
    s = s.rstrip(".")
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    m = _LHS_RE.match(s)
    if m and s.count("=") == 1:
        s = s[m.end() :]
    return s


def parse_number(s: str) -> Fraction | None:
    """Exact value of a normalized plain number (`5e-01` too), `a/b`, `\\frac{a}{b}` or `a\\times10^{n}`, else
    None."""
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
    m = _TIMES_TEN_RE.fullmatch(s)
    if m:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2) or m.group(3))
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
