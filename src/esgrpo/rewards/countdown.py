"""Countdown reward: `\\boxed{expr}` uses each given number exactly once and equals the target.

The public code of the paper eval()s model output; `9**9**9` then hangs the trainer. Here the
expression is parsed with `ast` and walked with a whitelist, evaluated exactly with Fractions
under a length bound and a magnitude bound on every intermediate value.

Accepted grammar: non-negative integer literals (not bool), binary + - * /, unary - and + on a
number or a parenthesized sub-expression (`-3+5*5`, `7-(-(2-9))`, `--4`: the paper's scorer and
TinyZero-style Countdown rewards accept them, their character filters let a sign through and eval()
computes it; a sign uses no number, so "each number exactly once" still holds), parentheses and
whitespace. Rejected: `**`, `//`, `%`, names, calls, floats, `\\times`-style LaTeX, `=`. Division by
zero, or a number used a wrong number of times, scores 0. Intermediate values may be negative or
fractional (`(8-2)/3*...`).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from esgrpo.rewards.extract import last_boxed, safe_reward

MAX_EXPR_CHARS = 256
MAX_ABS_VALUE = 10**9
MAX_PAREN_DEPTH = 32

_ALLOWED_CHARS = re.compile(r"[0-9+\-*/() \t\n]+")
_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_SIGNS = (ast.USub, ast.UAdd)


class _Reject(Exception):
    """The expression is outside the accepted grammar or bounds."""


def _paren_depth_ok(expr: str) -> bool:
    depth = 0
    for c in expr:
        if c == "(":
            depth += 1
            if depth > MAX_PAREN_DEPTH:
                return False
        elif c == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _walk(node: ast.AST, literals: list[int]) -> Fraction:
    if isinstance(node, ast.Constant):
        v = node.value
        if type(v) is not int or v > MAX_ABS_VALUE:
            raise _Reject("literal")
        literals.append(v)
        return Fraction(v)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, _SIGNS):
        # A chain of signs is bounded by MAX_EXPR_CHARS (ast.parse nests 255 of them without trouble).
        v = _walk(node.operand, literals)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, _OPS):
        a = _walk(node.left, literals)
        b = _walk(node.right, literals)
        if isinstance(node.op, ast.Add):
            r = a + b
        elif isinstance(node.op, ast.Sub):
            r = a - b
        elif isinstance(node.op, ast.Mult):
            r = a * b
        else:
            if b == 0:
                raise _Reject("division by zero")
            r = a / b
        # Bound numerator and denominator so Fractions stay small on any input.
        if abs(r.numerator) > MAX_ABS_VALUE or r.denominator > MAX_ABS_VALUE:
            raise _Reject("magnitude")
        return r
    raise _Reject(type(node).__name__)


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]] | None:
    """Exact value and the integer literals of a whitelisted arithmetic expression, else None."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS or not _ALLOWED_CHARS.fullmatch(expr):
        return None
    if "**" in expr or "//" in expr or not _paren_depth_ok(expr):
        return None
    try:
        tree = ast.parse(" ".join(expr.split()), mode="eval")  # a newline would end the expression
        literals: list[int] = []
        value = _walk(tree.body, literals)
    except (_Reject, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return value, literals


@safe_reward
def countdown_reward(text: str, nums: Sequence[int], target: int) -> float:
    """1.0 iff the last `\\boxed{expr}` uses each of `nums` exactly once and equals `target`."""
    expr = last_boxed(text)
    if expr is None:
        return 0.0
    result = evaluate_expression(expr)
    if result is None:
        return 0.0
    value, literals = result
    if Counter(literals) != Counter(int(n) for n in nums):
        return 0.0
    return 1.0 if value == int(target) else 0.0
