"""Shared, bounded answer extraction for the rewards.

Model outputs are untrusted: every helper here runs in linear time on any string, never raises
on odd input and looks only at the tail of very long outputs (the final answer comes last).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

# max_new_tokens is 1024 (a few thousand characters); anything beyond this tail cannot be the
# final answer of a well-formed response, so we never scan it.
TAIL_CHARS = 8192
# Longest \boxed{...} content we will normalize or parse; longer contents score 0.
MAX_BOXED_CHARS = 1024

_BOXED_TOKENS = re.compile(r"\\boxed\s*\{|\{|\}")
_TEXT_WRAPPERS = ("\\text", "\\textbf", "\\textrm", "\\textit", "\\emph", "\\mathrm", "\\mathbf", "\\mbox")


def tail(text: str, n: int = TAIL_CHARS) -> str:
    """The last `n` characters of `text` without trailing whitespace (the only part the rewards inspect).

    Whitespace is stripped first, so an answer followed by a long run of spaces or newlines (a
    model that pads until max_new_tokens) is still inside the window."""
    text = text.rstrip()
    return text[-n:] if len(text) > n else text


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` (nested braces), or None.

    "Last" means the one that opens last (as in the Hendrycks MATH scorer), so
    `\\boxed{\\boxed{3}}` yields "3". Unbalanced trailing boxes are skipped in favour of an
    earlier complete one. One linear pass with a brace stack over the tail window.
    """
    if not isinstance(text, str):
        return None
    s = tail(text)
    stack: list[int] = []  # content start for \boxed{ openers, -1 for plain braces
    best: tuple[int, int] | None = None
    for m in _BOXED_TOKENS.finditer(s):
        tok = m.group(0)
        if tok == "}":
            if not stack:
                continue  # a stray closer (or one whose opener lies before the window)
            start = stack.pop()
            if start >= 0 and (best is None or start > best[0]):
                best = (start, m.start())
        elif tok == "{":
            stack.append(-1)
        else:
            stack.append(m.end())
    if best is None:
        return None
    return s[best[0] : best[1]]


def match_brace(s: str, open_idx: int) -> int:
    """Index of the `}` closing the `{` at `open_idx`, or -1 when unbalanced."""
    depth = 0
    for i in range(open_idx, len(s)):
        c = s[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def unwrap_text(s: str) -> str:
    """Replace `\\text{x}` (and \\mbox, \\mathrm, ...) by `x`; bounded by the input length."""
    for _ in range(len(s)):
        best = -1
        for w in _TEXT_WRAPPERS:
            i = s.find(w + "{")
            if i >= 0 and (best < 0 or i < best):
                best, wrapper = i, w
        if best < 0:
            return s
        open_idx = best + len(wrapper)
        close = match_brace(s, open_idx)
        if close < 0:
            return s[:best] + s[open_idx + 1 :]
        s = s[:best] + s[open_idx + 1 : close] + s[close + 1 :]
    return s


def safe_reward(fn: Callable[..., float]) -> Callable[..., float]:
    """Decorator: a reward returns exactly 1.0 or 0.0 and maps every failure (any exception,
    non-string input, recursion or memory errors) to 0.0.

    The undecorated function stays reachable as `.unchecked`: esgrpo's tasks call it, so that the one
    scoring path (tasks.base.score_responses) can count a failure before scoring it 0."""

    @functools.wraps(fn)
    def wrapper(text: Any, *args: Any, **kwargs: Any) -> float:
        if not isinstance(text, str):
            return 0.0
        try:
            return 1.0 if fn(text, *args, **kwargs) else 0.0
        except Exception:  # includes RecursionError and MemoryError
            return 0.0

    wrapper.unchecked = fn  # type: ignore[attr-defined]
    return wrapper
