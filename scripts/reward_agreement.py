"""How often esgrpo's four rewards agree with the `compute_reward` of the paper's public code on near-misses.

    .venv/bin/python scripts/reward_agreement.py --paper-code DIR [--n 1500] [--seed 0] [--samples 3]

DIR is a checkout (or an extract) of github.com/Bhoy1/ESvsGRPO: its root, or that `tasks/` folder
itself, or a bare git directory of it (its HEAD's `src/es_vs_grpo/tasks/` is then extracted to a
temporary folder outside the project), e.g.

    mkdir -p /tmp/paper && git --git-dir=MIRROR archive HEAD src/es_vs_grpo/tasks | tar -x -C /tmp/paper

The paper's code is imported from DIR at run time and never copied into this project. Its task
modules import `datasets` (only to load data); a stub stands in for it while they load, so nothing
heavy is imported. The corpus is generated here, seeded: for every task `--n` answers that sit on the
edge of the format (punctuation, synonyms, hedges, nested braces, units, numeric forms, unary minus,
wrong numbers, extra text, ...), each with its gold answer and a kind. Both rewards score each answer;
the script prints per-task agreement and, per kind, how many disagree and a few examples.

The public Countdown reward eval()s the boxed expression; `**` passes its character filter and
`9**9**9` never finishes (Python computes a power in one step, so no timer can interrupt it). Answers
containing `**` are therefore never handed to the paper's Countdown code: they are counted apart
("not compared") and only our score is shown.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import io
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from esgrpo.rewards import boolq_reward, countdown_reward, math_reward, mcq_reward

TASKS = ("countdown", "math", "chemistry", "boolq")


@dataclass(frozen=True)
class Case:
    """One answer to score: the response text, its gold, and the kind of near-miss it is."""

    kind: str
    text: str
    gold: Any  # countdown: (nums, target); math: str; chemistry: letter; boolq: bool


# --- loading the paper's rewards ---------------------------------------------------------------


def _tasks_dir(root: Path) -> Path:
    if (root / "HEAD").is_file() and (root / "objects").is_dir():  # a bare git directory
        cmd = ["git", f"--git-dir={root}", "archive", "--format=tar", "HEAD", "src/es_vs_grpo/tasks"]
        archive = subprocess.run(cmd, check=True, capture_output=True).stdout
        root = Path(tempfile.mkdtemp(prefix="paper-tasks-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
    for cand in (root / "src" / "es_vs_grpo" / "tasks", root / "es_vs_grpo" / "tasks", root):
        if (cand / "boolq.py").is_file() and (cand / "base.py").is_file():
            return cand
    raise SystemExit(f"--paper-code {root}: no es_vs_grpo/tasks/ with boolq.py and base.py below it")


def load_paper_rewards(root: Path) -> dict[str, Callable[[Case], float]]:
    """The paper's four compute_reward functions, adapted to a Case. The tasks package's __init__
    (which imports the registry) is not run: a bare package object points at the folder."""
    folder = _tasks_dir(root)
    saved = sys.modules.get("datasets")
    stub = types.ModuleType("datasets")

    def load_dataset(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("datasets is stubbed in reward_agreement.py: the paper's load_data is not used")

    stub.load_dataset = load_dataset  # type: ignore[attr-defined]
    pkg = types.ModuleType("_paper_tasks")
    pkg.__path__ = [str(folder)]
    sys.modules["datasets"] = stub
    sys.modules["_paper_tasks"] = pkg
    try:
        boolq = importlib.import_module("_paper_tasks.boolq").BoolQTask({})
        chem = importlib.import_module("_paper_tasks.chemistry").SciKnowEvalChemistryTask({})
        count = importlib.import_module("_paper_tasks.countdown").CountdownTaskNew({})
        math = importlib.import_module("_paper_tasks.math").MATHTask({})
    finally:
        if saved is None:
            sys.modules.pop("datasets", None)
        else:
            sys.modules["datasets"] = saved

    def score(task: Any, item: dict[str, Any]) -> Callable[[str], float]:
        return lambda text: float(task.compute_reward("", text, item)["reward"])

    return {
        "countdown": lambda c: score(count, {"numbers": list(c.gold[0]), "target": c.gold[1]})(c.text),
        "math": lambda c: score(math, {"answer": c.gold})(c.text),
        "chemistry": lambda c: score(chem, {"answer": c.gold})(c.text),
        "boolq": lambda c: score(boolq, {"answer": c.gold})(c.text),
    }


OURS: dict[str, Callable[[Case], float]] = {
    "countdown": lambda c: countdown_reward(c.text, c.gold[0], c.gold[1]),
    "math": lambda c: math_reward(c.text, c.gold),
    "chemistry": lambda c: mcq_reward(c.text, c.gold),
    "boolq": lambda c: boolq_reward(c.text, c.gold),
}


def eval_hazard(task: str, case: Case) -> bool:
    """Answers the paper's Countdown eval() might never finish on (see the module docstring)."""
    return task == "countdown" and "**" in case.text


# --- corpus: shared pieces ---------------------------------------------------------------------

LEADS = ("", "Let me think step by step. ", "So the final answer is ", "Therefore, ", "The answer: ",
         "After checking the passage carefully, I conclude ")
TAILS = ("", ".", " .", "\n", " Done.", "$", " I hope this helps!", "\n\nFinal answer above.")


def _box(rng: random.Random, content: str) -> str:
    """`content` in a \\boxed{}, sometimes inside $...$ or with a lead-in and trailing text."""
    boxed = rf"\boxed{{{content}}}"
    if rng.random() < 0.25:
        boxed = f"${boxed}$"
    return rng.choice(LEADS) + boxed + rng.choice(TAILS)


def _pick(rng: random.Random, kinds: dict[str, Callable[[random.Random], Case]], n: int) -> list[Case]:
    names = sorted(kinds)
    return [kinds[rng.choice(names)](rng) for _ in range(n)]


# --- countdown ---------------------------------------------------------------------------------


def _tree(rng: random.Random, nums: list[int], neg: float = 0.0) -> tuple[str, Fraction] | None:
    """A random fully parenthesized expression over `nums` (each once) and its exact value; a leaf or
    sub-expression is negated with probability `neg` (unary minus)."""
    if len(nums) == 1:
        s, v = str(nums[0]), Fraction(nums[0])
    else:
        k = rng.randint(1, len(nums) - 1)
        left, right = _tree(rng, nums[:k], neg), _tree(rng, nums[k:], neg)
        if left is None or right is None:
            return None
        (ls, lv), (rs, rv) = left, right
        op = rng.choice("+-*/")
        if op == "/" and rv == 0:
            return None
        v = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else Fraction(0)}[op]
        ls = ls if len(nums[:k]) == 1 else f"({ls})"
        rs = rs if len(nums[k:]) == 1 else f"({rs})"
        s = f"{ls}{op}{rs}"
    if neg and rng.random() < neg:
        s, v = (f"-{s}" if len(nums) == 1 else f"-({s})"), -v
    return s, v


def _instance(rng: random.Random, neg: float = 0.0) -> tuple[list[int], str, int]:
    """Numbers, an expression over them, and its value as a positive integer target."""
    while True:
        nums = [rng.randint(1, rng.choice((12, 50, 99))) for _ in range(rng.choice((3, 4)))]
        made = _tree(rng, nums, neg)
        if made is None:
            continue
        expr, value = made
        if value.denominator == 1 and 0 < value <= 1000 and (not neg or "-" in expr.replace(")-", ")")):
            return sorted(nums), expr, int(value)


def _spaced(rng: random.Random, expr: str) -> str:
    return "".join(f" {c} " if c in "+*/" and rng.random() < 0.5 else c for c in expr).strip()


def _countdown_kinds() -> dict[str, Callable[[random.Random], Case]]:
    def case(kind: str, text_of: Callable[[random.Random, str], str], neg: float = 0.0,
             target_shift: int = 0) -> Callable[[random.Random], Case]:
        def make(rng: random.Random) -> Case:
            nums, expr, target = _instance(rng, neg)
            return Case(kind, text_of(rng, expr), (nums, target + target_shift))
        return make

    def wrong_number(rng: random.Random, expr: str) -> str:
        digits = [i for i, c in enumerate(expr) if c.isdigit() and (i + 1 == len(expr) or not expr[i + 1].isdigit())]
        i = rng.choice(digits)
        return _box(rng, expr[:i] + str((int(expr[i]) + 1) % 10) + expr[i + 1:])

    def reuse(rng: random.Random, expr: str) -> str:
        return _box(rng, f"{expr}+{expr[0] if expr[0].isdigit() else '1'}-{expr[0] if expr[0].isdigit() else '1'}")

    return {
        "correct": case("correct", lambda r, e: _box(r, _spaced(r, e))),
        "correct, extra parentheses": case("correct, extra parentheses", lambda r, e: _box(r, f"(({e}))")),
        "unary minus": case("unary minus", lambda r, e: _box(r, _spaced(r, e)), neg=0.35),
        "double minus": case("double minus", lambda r, e: _box(r, f"--{e}" if not e.startswith("-") else e[1:])),
        "unary plus": case("unary plus", lambda r, e: _box(r, f"+{e}")),
        "wrong target": case("wrong target", lambda r, e: _box(r, e), target_shift=1),
        "wrong number": case("wrong number", wrong_number),
        "number reused": case("number reused", reuse),
        "number dropped": case("number dropped", lambda r, e: _box(r, e.split("+")[0] if "+" in e else e + "*0")),
        "power **": case("power **", lambda r, e: _box(r, e.replace("*", "**", 1) if "*" in e else f"{e}**1")),
        "floor division //": case("floor division //", lambda r, e: _box(r, e.replace("/", "//", 1)
                                                                          if "/" in e else f"{e}//1")),
        "latex operators": case("latex operators", lambda r, e: _box(r, e.replace("*", r" \times ").replace(
            "/", r" \div ") if any(c in e for c in "*/") else e.replace("+", r" \cdot "))),
        "equation": case("equation", lambda r, e: _box(r, f"{e} = {_value(e)}")),
        "newline inside": case("newline inside", lambda r, e: _box(r, e.replace("+", "\n+").replace("-", "\n-"))),
        "tab inside": case("tab inside", lambda r, e: _box(r, e.replace("+", "\t+"))),
        "float literal": case("float literal", lambda r, e: _box(r, e + "+0.0") if "+" not in e else _box(
            r, e.replace("+", ".0+", 1))),
        "nested box": case("nested box", lambda r, e: rf"\boxed{{\boxed{{{e}}}}}"),
        "space before brace": case("space before brace", lambda r, e: rf"\boxed {{{e}}}"),
        "earlier box, last wrong": case("earlier box, last wrong", lambda r, e: rf"\boxed{{{e}}} or \boxed{{{e}+1}}"),
        "earlier wrong, last right": case("earlier wrong, last right",
                                          lambda r, e: rf"\boxed{{1+1}} no, \boxed{{{e}}}"),
        "truncated last box": case("truncated last box", lambda r, e: rf"\boxed{{{e}}} so \boxed{{{e[:3]}"),
        "leading zero": case("leading zero", lambda r, e: _box(r, _leading_zero(e))),
        "implicit multiplication": case("implicit multiplication", lambda r, e: _box(r, e.replace(")*(", ")(")
                                                                                      if ")*(" in e else f"({e})(1)")),
        "words in box": case("words in box", lambda r, e: _box(r, f"{e} which is the target")),
        "unicode digits": case("unicode digits", lambda r, e: _box(r, e.translate(str.maketrans(
            "0123456789", "٠١٢٣٤٥٦٧٨٩")))),
        "division by zero": case("division by zero", lambda r, e: _box(r, f"{e}+1/(1-1)")),
        "no box": case("no box", lambda r, e: f"The expression {e} reaches the target."),
    }


def _value(expr: str) -> str:
    from esgrpo.rewards.countdown import evaluate_expression

    result = evaluate_expression(expr)
    return str(result[0]) if result else "?"


def _leading_zero(expr: str) -> str:
    for i, c in enumerate(expr):
        if c.isdigit() and (i == 0 or not expr[i - 1].isdigit()):
            return expr[:i] + "0" + expr[i:]
    return expr


# --- math --------------------------------------------------------------------------------------


def _gold_number(rng: random.Random) -> tuple[str, Fraction]:
    """A MATH-style numeric gold (integer, decimal, fraction, negative) and its value."""
    k = rng.randrange(5)
    if k == 0:
        v = Fraction(rng.randint(0, 200))
        return str(v), v
    if k == 1:
        v = Fraction(rng.randint(1000, 999_999))
        return (f"{int(v):,}" if rng.random() < 0.3 else str(v)), v
    if k == 2:
        v = Fraction(rng.randint(1, 999), rng.choice((2, 4, 5, 8, 10, 100)))
        return (str(float(v)) if v.denominator != 1 else str(v)), v
    while True:
        a, b = rng.randint(1, 30), rng.randint(2, 30)
        v = Fraction(a, b) * (-1 if k == 4 else 1)
        if v.denominator != 1:
            sign = "-" if v < 0 else ""
            return rf"{sign}\frac{{{abs(v.numerator)}}}{{{v.denominator}}}", v


def _decimal(v: Fraction) -> str | None:
    """Exact terminating decimal of v, else None."""
    d = v.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return None
    s = f"{float(v):.10f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


SYMBOLIC = (r"2\sqrt{3}", r"3\pi", r"\frac{\sqrt{2}}{2}", "(3,4)", "[1,5)", r"x^2+1", r"\text{(B)}", r"\text{(D)}",
            "30^\\circ", r"25\%", r"\$5.50", r"\infty", r"(-\infty,2]", r"\{1,2,3\}", "2x+3", r"\frac{\pi}{4}",
            r"\text{Monday}", "12\\text{ cm}", r"5\sqrt{2}", r"\dfrac{3}{5}")


def _math_kinds() -> dict[str, Callable[[random.Random], Case]]:
    def numeric(kind: str, pred: Callable[[random.Random, str, Fraction], str | None]) -> Callable[[random.Random],
                                                                                                   Case]:
        def make(rng: random.Random) -> Case:
            while True:
                gold, v = _gold_number(rng)
                p = pred(rng, gold, v)
                if p is not None:
                    return Case(kind, _box(rng, p), gold)
        return make

    def symbolic(kind: str, pred: Callable[[random.Random, str], str | None]) -> Callable[[random.Random], Case]:
        def make(rng: random.Random) -> Case:
            while True:
                gold = rng.choice(SYMBOLIC)
                p = pred(rng, gold)
                if p is not None:
                    return Case(kind, _box(rng, p), gold)
        return make

    def frac_of(v: Fraction, cmd: str = r"\frac") -> str:
        sign = "-" if v < 0 else ""
        return rf"{sign}{cmd}{{{abs(v.numerator)}}}{{{v.denominator}}}"

    def shorthand(v: Fraction) -> str | None:
        n, d = abs(v.numerator), v.denominator
        return (("-" if v < 0 else "") + rf"\frac{n}{d}") if n < 10 and 1 < d < 10 else None

    def rounded(v: Fraction) -> str | None:
        return None if _decimal(v) is not None else f"{float(v):.{random.Random(str(v)).choice((2, 3, 6))}f}"

    def text_choice(rng: random.Random, gold: str) -> str | None:
        if not gold.startswith(r"\text{("):
            return None
        letter = gold[7]
        return rng.choice((rf"\$\text{{({letter})}}", rf"\textbf{{({letter})}}", f"({letter})", letter,
                           rf"\text{{ ({letter}) }}", rf"\mathrm{{({letter})}}"))

    return {
        "exact copy": numeric("exact copy", lambda r, g, v: g),
        "exact copy, symbolic": symbolic("exact copy, symbolic", lambda r, g: g),
        "spaces": symbolic("spaces", lambda r, g: re.sub(r"([,+=]|\\pi|\\sqrt)", r" \1 ", g) + " "),
        "dfrac": numeric("dfrac", lambda r, g, v: g.replace(r"\frac", r"\dfrac") if r"\frac" in g else None),
        "frac shorthand \\frac12": numeric("frac shorthand \\frac12", lambda r, g, v: shorthand(v)),
        "decimal of a fraction": numeric("decimal of a fraction", lambda r, g, v: _decimal(v) if r"\frac" in g
                                         else None),
        "slash fraction a/b": numeric("slash fraction a/b", lambda r, g, v: f"{v.numerator}/{v.denominator}"
                                      if v.denominator != 1 else None),
        "fraction for a decimal gold": numeric("fraction for a decimal gold", lambda r, g, v: frac_of(v)
                                               if "." in g else None),
        "rounded decimal": numeric("rounded decimal", lambda r, g, v: rounded(v)),
        "exponent form": numeric("exponent form", lambda r, g, v: f"{float(v):{r.choice(('e', 'E'))}}"
                                 if Fraction(f"{float(v):e}") == v else None),
        "trailing zeros": numeric("trailing zeros", lambda r, g, v: (g + r.choice((".0", ".00"))) if g.isdigit()
                                  else None if _decimal(v) is None else _decimal(v) + "0"),
        "thousands commas": numeric("thousands commas", lambda r, g, v: f"{int(v):,}" if v.denominator == 1
                                    and v >= 1000 else None),
        "comma not thousands": numeric("comma not thousands", lambda r, g, v: f"{int(v) // 10},{int(v) % 10}"
                                       if v.denominator == 1 and v >= 10 else None),
        "dollar signs": numeric("dollar signs", lambda r, g, v: r.choice((rf"\${g}", f"${g}$", rf"{g}\$"))),
        "percent / degree": numeric("percent / degree", lambda r, g, v: g + r.choice((r"\%", "%", r"^\circ",
                                                                                     r"^{\circ}"))),
        "unit text": numeric("unit text", lambda r, g, v: g + r.choice((r"\text{ cm}", r"\text{ dollars}",
                                                                       r"\mbox{ inches}", r"\text{ units}^2"))),
        "variable = value": numeric("variable = value", lambda r, g, v: r.choice(("x = ", "n=", "a = ", "y_1 = "))
                                    + g),
        "\\left( \\right)": symbolic("\\left( \\right)", lambda r, g: g.replace("(", r"\left(").replace(
            ")", r"\right)").replace("[", r"\left[").replace("]", r"\right]") if "(" in g or "[" in g else None),
        "trailing period": numeric("trailing period", lambda r, g, v: g + "."),
        "text wrapper": numeric("text wrapper", lambda r, g, v: rf"\text{{{g}}}" if "\\" not in g else None),
        "choice letter forms": symbolic("choice letter forms", text_choice),
        "wrong by one": numeric("wrong by one", lambda r, g, v: str(v + 1) if v.denominator == 1 else frac_of(v + 1)),
        "sign flipped": numeric("sign flipped", lambda r, g, v: frac_of(-v) if v.denominator != 1 else str(-v)
                                if v else None),
        "prefix trap \\frac{a}{b}x": numeric("prefix trap \\frac{a}{b}x", lambda r, g, v: g + r"\pi"
                                             if r"\frac" in g else None),
        "double slash a/b/c": numeric("double slash a/b/c", lambda r, g, v: f"{v.numerator}/{v.denominator}/2"
                                      if v.denominator != 1 and v > 0 else None),
        "unicode digits": numeric("unicode digits", lambda r, g, v: g.translate(str.maketrans(
            "0123456789", "٠١٢٣٤٥٦٧٨٩")) if g.isdigit() else None),
        "nested box": numeric("nested box", lambda r, g, v: rf"\boxed{{{g}}}"),
        "space before brace": lambda r: (lambda g: Case("space before brace", rf"\boxed {{{g}}}", g))(
            _gold_number(r)[0]),
        "earlier box, last wrong": numeric("earlier box, last wrong", lambda r, g, v: rf"{g}}} or \boxed{{{v + 1}"),
        "truncated last box": numeric("truncated last box", lambda r, g, v: rf"{g}}} hmm \boxed{{\frac{{1"),
        "words in box": numeric("words in box", lambda r, g, v: rf"{g} apples" if r.random() < 0.5
                                else rf"\text{{the answer is }}{g}"),
        "symbolic variant": symbolic("symbolic variant", lambda r, g: {
            r"2\sqrt{3}": r"\sqrt{12}", r"3\pi": r"\pi\cdot3", r"\frac{\sqrt{2}}{2}": r"\frac{1}{\sqrt{2}}",
            "(3,4)": "(4,3)", "[1,5)": "[1,5]", r"\infty": "inf", r"\frac{\pi}{4}": r"\frac14\pi",
            r"\dfrac{3}{5}": "0.6", "30^\\circ": "30", r"25\%": "0.25", r"\$5.50": "5.5", "2x+3": "3+2x",
            r"5\sqrt{2}": r"5\sqrt2", r"\text{Monday}": "monday"}.get(g)),
    }


# --- chemistry ---------------------------------------------------------------------------------

WORDS = ("Boron", "Carbon dioxide", "Dinitrogen", "a mixture", "an alkali metal", "both", "Argon", "covalent")


def _chemistry_kinds() -> dict[str, Callable[[random.Random], Case]]:
    def kind(name: str, text: Callable[[random.Random, str, str], str]) -> Callable[[random.Random], Case]:
        def make(rng: random.Random) -> Case:
            gold = rng.choice("ABCD")
            # Half the answers name the gold, half another letter: agreement is tested both ways.
            said = gold if rng.random() < 0.5 else rng.choice([x for x in "ABCD" if x != gold])
            reasoning = rng.choice(("", "Iron has 26 protons. ", "Option A is a gas, so not A. ",
                                    "Between B and C, the second fits. ", "Let me check each option.\n"))
            return Case(name, reasoning + text(rng, said, gold), gold)
        return make

    def other(x: str) -> str:
        return "ABCD"[("ABCD".index(x) + 1) % 4]

    return {
        "json": kind("json", lambda r, x, g: r.choice((f'"answer": "{x}"', f'{{"answer": "{x}"}}',
                                                       f'"answer":"{x}"', f'"Answer" : " {x} "'))),
        "json lowercase": kind("json lowercase", lambda r, x, g: f'"answer": "{x.lower()}"'),
        "json unquoted value": kind("json unquoted value", lambda r, x, g: f'"answer": {x}'),
        "json value with text": kind("json value with text", lambda r, x, g: r.choice((
            f'"answer": "{x}) Iron"', f'"answer": "{x}. Iron"', f'"answer": "({x})"', f'"answer": "{x} (Iron)"'))),
        "json then more text": kind("json then more text", lambda r, x, g: f'"answer": "{x}". Note that {other(x)} '
                                    "is wrong."),
        "key form": kind("key form", lambda r, x, g: r.choice((f"Answer: {x}", f"answer: ({x})", f"**Answer:** {x}",
                                                               f"ANSWER: {x}.", f"Final answer: {x}"))),
        "key form lowercase": kind("key form lowercase", lambda r, x, g: r.choice((
            f"answer: {x.lower()}", f"Answer: ({x.lower()}).", f"answer: {x.lower()} is right"))),
        "the answer is": kind("the answer is", lambda r, x, g: r.choice((f"The answer is {x}.", f"The answer is ({x}).",
                                                                         f"So the correct option is **{x}**."))),
        "the answer is (lowercase)": kind("the answer is (lowercase)", lambda r, x, g: r.choice((
            f"The answer is ({x.lower()}).", f"So ({x.lower()})", f"The answer is {x.lower()}."))),
        "hedge in json": kind("hedge in json", lambda r, x, g: r.choice((
            f'"answer": "{x} or {other(x)}"', f'"answer": "{other(x)} or {x}"', f'"answer": "{x} and {other(x)}"',
            f'"answer": "{other(x)}/{x}"', f'"answer": "{x}, {other(x)}"'))),
        "hedge in key form": kind("hedge in key form", lambda r, x, g: r.choice((
            f"Answer: {x} or {other(x)}", f"Answer: {other(x)} or {x}", f"answer: {x} and {other(x)}"))),
        "hedge in prose": kind("hedge in prose", lambda r, x, g: r.choice((
            f"The answer is {x} or {other(x)}.", f"It is either {other(x)} or {x}."))),
        "word instead of letter": kind("word instead of letter", lambda r, x, g: r.choice((
            f'"answer": "{r.choice(WORDS)}"', f"answer: {r.choice(WORDS)}", f"The answer is {r.choice(WORDS)}."))),
        "letter E / none": kind("letter E / none", lambda r, x, g: r.choice(('"answer": "E"', "answer: E",
                                                                             "None of the options.", ""))),
        "json beats key": kind("json beats key", lambda r, x, g: f'"answer": "{x}" and later Answer: {other(x)}'),
        "two json fields": kind("two json fields", lambda r, x, g: f'"answer": "{other(x)}" then "answer": "{x}"'),
        "last standalone": kind("last standalone", lambda r, x, g: r.choice((f"I pick {other(x)}, not {x}.",
                                                                             f"{x}", f"**{x}**", f"Option {x}"))),
        "single quotes": kind("single quotes", lambda r, x, g: f"'answer': '{x}'"),
        "fullwidth colon": kind("fullwidth colon", lambda r, x, g: f"Answer\uff1a{x}"),
        "boxed letter": kind("boxed letter", lambda r, x, g: rf"\boxed{{{x}}}"),
        "article a": kind("article a", lambda r, x, g: f"{x} looks plausible, but it is a {r.choice(WORDS)}."),
    }


# --- boolq -------------------------------------------------------------------------------------

YES_WORDS = ("yes", "Yes", "YES", "true", "True")
NO_WORDS = ("no", "No", "NO", "false", "False")


def _boolq_kinds() -> dict[str, Callable[[random.Random], Case]]:
    def kind(name: str, content: Callable[[random.Random, bool], str], boxed: bool = True) -> Callable[
            [random.Random], Case]:
        def make(rng: random.Random) -> Case:
            gold = rng.random() < 0.5
            said = gold if rng.random() < 0.5 else not gold
            c = content(rng, said)
            return Case(name, _box(rng, c) if boxed else c, gold)
        return make

    def word(r: random.Random, said: bool) -> str:
        return r.choice(YES_WORDS if said else NO_WORDS)

    return {
        "plain": kind("plain", word),
        "spaces": kind("spaces", lambda r, s: f" {word(r, s)} "),
        "trailing punctuation": kind("trailing punctuation", lambda r, s: word(r, s) + r.choice(".!?;,:")),
        "space then punctuation": kind("space then punctuation", lambda r, s: word(r, s) + " ."),
        "quotes / brackets / bold": kind("quotes / brackets / bold", lambda r, s: r.choice(('"{}"', "'{}'", "({})",
                                         "[{}]", "**{}**", "*{}*", "`{}`")).format(word(r, s))),
        "synonym 1/0": kind("synonym 1/0", lambda r, s: "1" if s else "0"),
        "synonym correct/incorrect": kind("synonym correct/incorrect", lambda r, s: r.choice(
            ("correct", "right", "Correct") if s else ("incorrect", "wrong", "Wrong"))),
        "doubled braces": kind("doubled braces", lambda r, s: "{" + word(r, s) + "}"),
        "text wrapper": kind("text wrapper", lambda r, s: r.choice((r"\text{{{}}}", r"\textbf{{{}}}", r"\mathrm{{{}}}",
                                                                    r"\text{{ {} }}")).format(word(r, s))),
        "nested box": kind("nested box", lambda r, s: rf"\boxed{{{word(r, s)}}}"),
        "inner punctuation": kind("inner punctuation", lambda r, s: r.choice(("y.e.s", "ye-s", "Y-E-S") if s else
                                                                             ("n.o", "n-o", "N.O."))),
        "sentence in box": kind("sentence in box", lambda r, s: word(r, s) + r.choice((
            ", the passage says so", " because of the passage", " and no", " or no"))),
        "other words": kind("other words", lambda r, s: r.choice(("maybe", "y", "n", "unknown", "yes/no", "T", "F",
                                                                  "not sure", "1.0", "affirmative"))),
        "signed number": kind("signed number", lambda r, s: r.choice(("-1", "+1", "-0", "+0"))),
        "unboxed": kind("unboxed", lambda r, s: r.choice(("Answer: {}", "**{}**", "{}")).format(word(r, s)),
                        boxed=False),
        "earlier box, last differs": kind("earlier box, last differs", lambda r, s: f"{word(r, not s)}}} no wait "
                                          rf"\boxed{{{word(r, s)}"),
        "truncated last box": kind("truncated last box", lambda r, s: f"{word(r, s)}}} or maybe \\boxed{{{word(r, s)}"),
        "space before brace": kind("space before brace", lambda r, s: rf"\boxed {{{word(r, s)}}}", boxed=False),
    }


CORPUS: dict[str, Callable[[], dict[str, Callable[[random.Random], Case]]]] = {
    "countdown": _countdown_kinds, "math": _math_kinds, "chemistry": _chemistry_kinds, "boolq": _boolq_kinds,
}


def corpus(task: str, n: int, seed: int) -> list[Case]:
    """`n` seeded near-miss answers for `task` (the same on every run and machine)."""
    return _pick(random.Random(f"{seed}:{task}"), CORPUS[task](), n)


# Disagreements we keep on purpose, as (kind, ours, paper) -> why; README "Where we differ from the paper's
# public code" lists the same. Any other disagreement is printed as UNEXPECTED.
DELIBERATE: dict[str, dict[tuple[str, float, float], str]] = {
    "countdown": {
        ("space before brace", 1, 0): "`\\boxed {x}` is a box (all tasks)",
        ("nested box", 1, 0): "the innermost box counts (all tasks)",
        ("newline inside", 1, 0): "whitespace inside the expression is ignored",
        ("tab inside", 1, 0): "whitespace inside the expression is ignored",
        ("floor division //", 0, 1): "// is not one of the four operations",
    },
    "math": {
        ("space before brace", 1, 0): "`\\boxed {x}` is a box",
        ("\\left( \\right)", 1, 0): "\\left / \\right are dropped",
        ("variable = value", 1, 0): "`x = 4` is 4",
        ("truncated last box", 1, 0): "an unclosed last box is skipped for the last complete one",
        ("frac shorthand \\frac12", 1, 0): "\\frac12 is \\frac{1}{2}",
        ("symbolic variant", 1, 0): "\\sqrt2 is \\sqrt{2}",
        ("slash fraction a/b", 1, 0): "a/b equals \\frac{a}{b} (the paper's a/b check needs a plain-number gold)",
        ("unit text", 1, 0): "a trailing \\text{ unit} after a number is dropped",
        ("trailing period", 1, 0): "a trailing period is dropped",
        ("choice letter forms", 1, 0): "\\textbf / \\mathrm wrappers are unwrapped like \\text",
        ("unicode digits", 0, 1): "only ASCII digits are numbers (float() accepts any Unicode digit)",
        ("comma not thousands", 0, 1): "a comma is a thousands separator only in 1,000-style groups",
        ("double slash a/b/c", 0, 1): "a/b/c is not a number (the paper reads it as a/b)",
        ("prefix trap \\frac{a}{b}x", 0, 1): "\\frac{a}{b}\\pi is not a/b (the paper matches a \\frac prefix)",
        ("words in box", 0, 1): "\\frac{a}{b} apples is not a/b (same prefix match)",
        ("rounded decimal", 0, 1): "numbers compare exactly: a rounded decimal is not the fraction",
    },
    "chemistry": {
        ("hedge in json", 0, 1): "a hedge is not an answer (the paper takes the first letter)",
        ("hedge in key form", 0, 1): "a hedge is not an answer",
        ("hedge in prose", 0, 1): "`X or Y` is not an answer",
        ("word instead of letter", 0, 1): "a word is not a letter (the paper reads `Boron` as B)",
        ("word instead of letter", 1, 0): "a word is not a letter (ours falls back to the last standalone capital)",
        ("key form lowercase", 0, 1): "a lowercase letter followed by words is not a choice (`answer: a mixture`)",
        ("article a", 0, 1): "a bare lowercase a-d is a word, not a choice",
        ("article a", 1, 0): "a bare lowercase a-d is a word, not a choice",
    },
    "boolq": {
        ("space before brace", 1, 0): "`\\boxed {x}` is a box",
        ("text wrapper", 1, 0): "\\text{yes} is yes",
        ("nested box", 1, 0): "the innermost box counts",
        ("space then punctuation", 1, 0): "`yes .` is yes (the paper keeps the space)",
        ("signed number", 0, 1): "`-1` is a number, not yes (the paper strips the sign as punctuation)",
    },
}


def why_deliberate(task: str, case: Case, ours: float, theirs: float) -> str | None:
    """The reason a disagreement is deliberate, or None when it is not listed."""
    if task == "math" and (ours, theirs) == (1, 0) and str(case.gold).startswith("-\\frac"):
        return "the paper's numeric check cannot read a negative \\frac gold (float('-\\frac{1}{2}') fails)"
    return DELIBERATE[task].get((case.kind, ours, theirs))


# --- comparison --------------------------------------------------------------------------------


def compare(task: str, cases: list[Case], paper: Callable[[Case], float], samples: int) -> float:
    """Print the agreement on `cases` and the disagreements by kind; return the agreement in %."""
    agree, compared = 0, 0
    hazards: list[Case] = []
    diff: dict[tuple[str, float, float, str], list[Case]] = defaultdict(list)
    for case in cases:
        if eval_hazard(task, case):
            hazards.append(case)
            continue
        ours, theirs = OURS[task](case), paper(case)
        compared += 1
        if ours == theirs:
            agree += 1
        else:
            diff[(case.kind, ours, theirs, why_deliberate(task, case, ours, theirs) or "")].append(case)
    pct = 100.0 * agree / compared if compared else 100.0
    print(f"\n== {task}: agreement {pct:.1f}% ({agree}/{compared} compared)"
          + (f"; {len(hazards)} not compared (contain `**`, which the paper's eval() may never finish;"
             f" ours scored {sum(OURS[task](c) for c in hazards):.0f} of them 1)" if hazards else ""))
    unexpected = 0
    for (kind, ours, theirs, why), group in sorted(diff.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        unexpected += 0 if why else len(group)
        print(f"  {len(group):4d}  {kind}: ours={ours:.0f} paper={theirs:.0f}  "
              + (f"[deliberate: {why}]" if why else "[UNEXPECTED]"))
        for c in group[:samples]:
            print(f"          gold={c.gold!r:<16} {c.text[-90:]!r}")
    print(f"  disagreements not listed as deliberate: {unexpected}")
    return pct


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--paper-code", type=Path, required=True, help="checkout or extract of Bhoy1/ESvsGRPO")
    ap.add_argument("--n", type=int, default=1500, help="near-miss answers per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=2, help="examples shown per kind of disagreement")
    ap.add_argument("--task", choices=TASKS, action="append", help="only these tasks (repeatable)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=SyntaxWarning)  # the paper's eval() of `(3)(4)` warns
    paper = load_paper_rewards(args.paper_code)
    results = {}
    for task in args.task or TASKS:
        cases = corpus(task, args.n, args.seed)
        print(f"\n{task}: {len(cases)} answers of {len(Counter(c.kind for c in cases))} kinds", end="")
        results[task] = compare(task, cases, paper[task], args.samples)
    print("\nagreement: " + ", ".join(f"{t} {p:.1f}%" for t, p in results.items()) + f" on {args.n} near-misses each")


if __name__ == "__main__":
    main()
