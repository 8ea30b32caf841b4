"""The four binary rewards: correct and wrong answers, and hostile model outputs.

Every reward must return exactly 0.0 or 1.0 on any input, never raise and never hang (the paper's
public Countdown scorer eval()s `9**9**9`). Hostile inputs are only required to come back with a
valid value; the suite itself finishing is the "does not hang" check.
"""

from __future__ import annotations

import pytest

from esgrpo.rewards import boolq_reward, countdown_reward, last_boxed, math_reward, mcq_reward
from esgrpo.rewards.countdown import MAX_ABS_VALUE, evaluate_expression
from esgrpo.rewards.extract import TAIL_CHARS
from esgrpo.rewards.math import normalize_answer, parse_number
from esgrpo.rewards.mcq import answer_field, extract_choice

ADVERSARIAL = [
    "",
    "9**9**9",
    r"\boxed{9**9**9}",
    r"\boxed{9**9**9**9**9}",
    r"\boxed{10**1000000}",
    r"\boxed{99999999999999999999*9999999999999999}",
    r"\boxed{" + "9" * 5000 + "}",
    r"\boxed{" + "9" * 200 + "*" + "9" * 50 + "}",
    r"\boxed{1e309}",
    r"\boxed{" + "(" * 10_000 + "1" + ")" * 10_000 + "}",
    "(" * 10_000,
    r"\boxed{" + "(" * 10_000 + "}",
    r"\boxed{" + "1+" * 5000 + "1}",
    r"\boxed{" + "-" * 10_000 + "1}",
    "x" * 100_000,
    "A" * 100_000,
    " " * 100_000 + r"\boxed{3}",
    r"\boxed{" * 50_000,
    "{" * 100_000,
    "}" * 100_000,
    r"\boxed{3",
    r"\boxed{3}}}}",
    r"\boxed{\boxed{3}}",
    r"\boxed{\boxed{\boxed{\boxed{yes}}}}",
    r"\boxed{}",
    r"\boxed{ }",
    r"\boxed{٣}",
    r"\boxed{３}",
    r"\boxed{٣+٥+٧}",
    "\\boxed{\u0663\u0665}",
    r"\boxed{1/0}",
    r"\boxed{7/(5-5)+3}",
    r"\boxed{(1)(2)}",
    r"\boxed{__import__('os').system('echo hi')}",
    r"\boxed{[1]*10**9}",
    r"\boxed{'a'*10**9}",
    r"\boxed{lambda: 1}",
    r"\boxed{True+True}",
    "\\boxed{\x00}\x00\x00",
    "\ud800\udfff",
    "answer:" * 20_000,
    '"answer": "' * 20_000,
    "answer:" + " " * 50_000,
    '"answer"' + " " * 50_000 + ":",
    r"\text{" * 30_000,
    r"\boxed{" + r"\text{" * 5_000 + "}",
    r"\boxed{" + r"\frac{" * 5_000 + "}",
    r"\boxed{\frac{1}{0}}",
    r"\boxed{" + "1," * 5_000 + "}",
    "A or " * 20_000,
    "(a) or " * 15_000,
    "answer: A or " * 8_000,
    '"answer": "' + "A or B " * 9 + '"' + ' "answer": "C' * 5_000,
    r"\boxed{" + "{" * 5_000 + "yes" + "}" * 5_000 + "}",
    r"\boxed{5" + r"\text{ cm}^2" * 2_000 + "}",
    r"\boxed{1e" + "9" * 5_000 + "}",
    r"\boxed{5\times10^{" + "9" * 5_000 + "}}",
    r"\boxed{" + "-+" * 120 + "(3*5+7)}",
    r"\boxed{" + "!" * 60 + "}",
]
JUNK = [None, 123, 1.5, b"\\boxed{3}", ["\\boxed{3}"], {"text": "\\boxed{3}"}, object()]


def _all_rewards(text):
    return [
        countdown_reward(text, [3, 5, 7], 22),
        countdown_reward(text, [9, 9, 9], 9),
        countdown_reward(text, [1], 1),
        math_reward(text, "3"),
        math_reward(text, "yes"),
        mcq_reward(text, "A"),
        boolq_reward(text, True),
        boolq_reward(text, False),
    ]


@pytest.mark.parametrize("text", ADVERSARIAL + JUNK, ids=lambda t: repr(t)[:40])
def test_adversarial_outputs_return_zero_or_one(text):
    for value in _all_rewards(text):
        assert value in (0.0, 1.0)
        assert isinstance(value, float)


def test_junk_and_empty_score_zero():
    for text in JUNK + ["", r"\boxed{}", "(" * 10_000, "{" * 100_000]:
        assert _all_rewards(text) == [0.0] * 8


def test_power_and_huge_numbers_are_rejected():
    for text in (r"\boxed{9**9**9}", r"\boxed{9**9}", "9**9**9"):
        assert countdown_reward(text, [9, 9, 9], 9) == 0.0
    assert countdown_reward(r"\boxed{99999999999999999999*9999999999999999}", [1], 1) == 0.0
    assert math_reward(r"\boxed{99999999999999999999*9999999999999999}", "1") == 0.0
    assert math_reward(r"\boxed{" + "9" * 5000 + "}", "9") == 0.0


def test_unicode_digits_are_not_numbers():
    assert math_reward(r"\boxed{٣}", "3") == 0.0
    assert math_reward(r"\boxed{３}", "3") == 0.0
    assert countdown_reward(r"\boxed{٣*٥+٧}", [3, 5, 7], 22) == 0.0
    assert parse_number("٣") is None
    assert mcq_reward('"answer": "Ｃ"', "C") == 0.0


# --- extraction ------------------------------------------------------------------------------


def test_last_boxed_nested_and_last():
    assert last_boxed(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert last_boxed(r"\boxed {7}") == "7"
    assert last_boxed(r"\boxed{\boxed{3}}") == "3"  # the box that opens last, as in Hendrycks' scorer
    assert last_boxed(r"\boxed{22} and a truncated \boxed{3") == "22"
    assert last_boxed(r"\boxed{3") is None
    assert last_boxed("no box") is None
    assert last_boxed(None) is None
    assert last_boxed(r"\boxed{}") == ""


def test_last_boxed_only_reads_the_tail():
    assert last_boxed(r"\boxed{1}" + "x" * (TAIL_CHARS + 10)) is None
    assert last_boxed("x" * 100_000 + r"\boxed{1}") == "1"


# --- countdown -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        r"3*5=15, 15+7=22. \boxed{3*5+7}",
        r"\boxed{ 7 + 3 * 5 }",
        r"\boxed{(3*5)+7}",
        r"\boxed{((3*5)+(7))}",
        "\\boxed{3*5\n+7}",
        r"\boxed{3+5+7} no wait \boxed{3*5+7}",
        r"\boxed{\boxed{3*5+7}}",
    ],
)
def test_countdown_correct(text):
    assert countdown_reward(text, [3, 5, 7], 22) == 1.0


def test_countdown_fractions_and_negative_intermediates_allowed():
    assert countdown_reward(r"\boxed{(8-2)/3*4}", [8, 2, 3, 4], 8) == 1.0
    assert countdown_reward(r"\boxed{3/2*4}", [3, 2, 4], 6) == 1.0
    assert countdown_reward(r"\boxed{(2-5)*(1-4)}", [2, 5, 1, 4], 9) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        r"\boxed{3+5+7}",  # wrong value
        r"\boxed{3*5+7+3}",  # a number used twice
        r"\boxed{3*5}",  # a number unused
        r"\boxed{3*5+7=22}",  # equation, not expression
        r"\boxed{-3+5*5}",  # a sign uses no number: 5 is still used twice, 7 not at all
        r"\boxed{-3*5+7}",  # -8
        r"\boxed{-(3*5+7)}",  # -22
        r"\boxed{3*5+7.0}",  # float
        r"\boxed{3 \times 5 + 7}",  # LaTeX operators are not accepted
        r"\boxed{x*5+7}",
        r"\boxed{22}",
        r"\boxed{3*5+7} then \boxed{3+5+7}",  # the last box counts
        "3*5+7",
        r"\boxed{3*5+7//1}",
        r"\boxed{3*5%7}",
        r"\boxed{True*5+7}",
        r"\boxed{0x3*5+7}",
        r"\boxed{3_0*5+7}",
    ],
)
def test_countdown_wrong(text):
    assert countdown_reward(text, [3, 5, 7], 22) == 0.0


@pytest.mark.parametrize(
    ("text", "nums", "target"),
    [
        (r"\boxed{-3+5*5}", [3, 5, 5], 22),
        (r"\boxed{-(2-9)+7}", [2, 7, 9], 14),
        (r"\boxed{7-(-(2-9))+14}", [2, 7, 9, 14], 14),
        (r"\boxed{--4+3}", [3, 4], 7),
        (r"\boxed{12+-5}", [5, 12], 7),
        (r"\boxed{+3*5+7}", [3, 5, 7], 22),
        (r"\boxed{-3*-5+7}", [3, 5, 7], 22),
    ],
)
def test_countdown_unary_signs_accepted(text, nums, target):
    """Decided: a unary minus (or plus) on a number or sub-expression is accepted, as the paper's eval()
    and TinyZero-style rewards do; each number must still be used exactly once."""
    assert countdown_reward(text, nums, target) == 1.0
    assert countdown_reward(text, nums, target + 1) == 0.0
    assert countdown_reward(text, nums + [1], target) == 0.0


def test_countdown_sign_chains_are_bounded():
    value, literals = evaluate_expression("-" * 255 + "1")
    assert value == -1 and literals == [1]
    assert evaluate_expression("-" * 300 + "1") is None  # longer than MAX_EXPR_CHARS
    assert countdown_reward(r"\boxed{" + "-" * 240 + "(3*5+7)}", [3, 5, 7], 22) == 1.0
    assert countdown_reward(r"\boxed{-+-+3*5+7}", [3, 5, 7], 22) == 1.0
    assert countdown_reward(r"\boxed{3*5+7-}", [3, 5, 7], 22) == 0.0  # a dangling sign is a syntax error


def test_countdown_division_by_zero_and_bounds():
    assert countdown_reward(r"\boxed{7/(5-5)+3}", [7, 5, 5, 3], 3) == 0.0
    assert evaluate_expression("100000*100000") is None  # intermediate above MAX_ABS_VALUE
    assert evaluate_expression(str(MAX_ABS_VALUE + 1)) is None
    assert evaluate_expression("1+" * 200 + "1") is None  # longer than MAX_EXPR_CHARS
    assert evaluate_expression("(" * 40 + "1" + ")" * 40) is None  # deeper than MAX_PAREN_DEPTH
    value, literals = evaluate_expression("(8-2)/3*4")
    assert value == 8 and literals == [8, 2, 3, 4]


def test_countdown_bad_target_types_score_zero():
    assert countdown_reward(r"\boxed{3*5+7}", None, 22) == 0.0
    assert countdown_reward(r"\boxed{3*5+7}", [3, 5, 7], "twenty-two") == 0.0
    assert countdown_reward(r"\boxed{3*5+7}", [3, 5, 7], 23) == 0.0


# --- math ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxed", "gold"),
    [
        ("22", "22"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\tfrac12", r"\frac{1}{2}"),
        (r"\frac12", r"\frac{1}{2}"),
        ("0.5", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"-\frac{3}{4}", "-0.75"),
        (r"\frac{-3}{4}", r"-\frac{3}{4}"),
        ("22.0", "22"),
        ("22.", "22"),
        (r"\left( 3, 4 \right)", "(3,4)"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"\text{(C)}", r"\text{(C)}"),
        (r"10\%", "10"),
        (r"\$5", "5"),
        ("$5$", "5"),
        ("x = 5", "5"),
        ("1,000", "1000"),
        (r"5\text{ cm}", "5"),
        (r"\sqrt2", r"\sqrt{2}"),
        (r"2\!\sqrt{3}", r"2\sqrt{3}"),
        (r"\text{Monday}", "Monday"),
        (r"\mbox{yes}", r"\text{yes}"),
        # exponent forms
        ("5.000000e-01", r"\frac{1}{2}"),
        ("1e3", "1000"),
        ("1.5E+2", "150"),
        ("-2.5e-1", r"-\frac{1}{4}"),
        (r"5 \times 10^{-1}", "0.5"),
        (r"3\cdot 10^3", "3000"),
        # a `\text{}` that is the answer is not a unit
        (r"\$\text{(B)}", r"\text{(B)}"),
        (r"\$ \text{(B)}", "(B)"),
        (r"5\text{ cm}^2", "5"),
        (r"12\text{ units}^{3}", r"12\text{ units}^3"),
        (r"\textit{Monday}", "Monday"),
    ],
)
def test_math_equivalent(boxed, gold):
    assert math_reward(rf"so \boxed{{{boxed}}}", gold) == 1.0


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        (r"\boxed{23}", "22"),
        (r"\boxed{(4,3)}", "(3,4)"),
        (r"\boxed{1/0}", "0"),
        (r"\boxed{\frac{1}{0}}", "0"),
        ("The answer is 22.", "22"),
        (r"\boxed{22} and then \boxed{23}", "22"),
        (r"\boxed{}", ""),
        (r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),  # no symbolic equivalence
        (r"\boxed{1,2}", "12"),
        (r"\boxed{5.1e-01}", r"\frac{1}{2}"),
        (r"\boxed{1e1000}", "1"),  # an exponent of more than three digits is not a number
        (r"\boxed{e5}", "100000"),
        (r"\boxed{5\times10^{-2}}", "0.5"),
        (r"\boxed{\$\text{(B)}}", r"\text{(C)}"),
        (r"\boxed{x^2}", "x"),  # `^2` goes only with a unit
    ],
)
def test_math_not_equivalent(text, gold):
    assert math_reward(text, gold) == 0.0


def test_math_last_box_wins_and_truncated_box_ignored():
    assert math_reward(r"\boxed{1} ... \boxed{22}", "22") == 1.0
    assert math_reward(r"\boxed{22} but a truncated \boxed{2", "22") == 1.0


def test_math_normalize_and_parse():
    assert normalize_answer(r" \left[ \dfrac{1}{2}, 3 \right). ") == r"[\frac{1}{2},3)"
    assert parse_number("-.5") == parse_number(r"-\frac{1}{2}")
    assert parse_number("1,234.5") == parse_number("2469/2")
    assert parse_number("1" * 100) is None
    assert parse_number("abc") is None
    assert parse_number("1e5") == 100_000 and parse_number("2.5e-1") == parse_number("1/4")
    assert parse_number("1e999") == 10**999 and parse_number("1e1000") is None
    assert parse_number(r"5\times10^{-1}") == parse_number("0.5")
    assert normalize_answer(r"\$\text{(B)}") == "(B)"
    assert normalize_answer(r"7\text{ cm}^2") == "7"


# --- chemistry MCQ ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ('Fe is iron. "answer": "C"', "C"),
        ('{"answer":"C"}', "C"),
        ('"Answer" : " c "', "C"),
        ('"answer": "B" and later Answer: C', "B"),  # the JSON field wins
        ('"answer": "A" then "answer": "D"', "D"),  # its last occurrence
        ("Answer: C", "C"),
        ("so the ANSWER: (C)", "C"),
        ("**Answer:** C", "C"),
        ("answer: B. D is tempting", "B"),  # the key beats a later standalone letter
        ("I pick B, not C.", "C"),  # else the last standalone letter
        ("C", "C"),
    ],
)
def test_mcq_extraction(text, letter):
    assert extract_choice(text) == letter
    assert mcq_reward(text, letter) == 1.0
    assert mcq_reward(text, "A" if letter != "A" else "B") == 0.0


@pytest.mark.parametrize(
    "text",
    ["answer: iron", "The answer is Boron.", "answer: a mixture", "ABCD", "E", "answer: E", "", "c", "it is a metal",
     '"answer": "Boron"', '"answer": "a mixture"'],
)
def test_mcq_no_choice(text):
    assert extract_choice(text) is None
    for gold in "ABCD":
        assert mcq_reward(text, gold) == 0.0


@pytest.mark.parametrize(("text", "letter"), [("answer: b", "B"), ("Answer: (c).", "C"), ("answer: **d**", "D"),
                                             ("answer: B, or rather answer: c", "C")])
def test_mcq_lowercase_letter_that_ends_the_answer_counts(text, letter):
    """`answer: b` with gold B scored 0: a lone lowercase letter that ends the response is the choice."""
    assert extract_choice(text) == letter
    assert mcq_reward(text, letter) == 1.0


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is (c).", "C"),
        ("So (d)", "D"),
        ("the answer is c.", "C"),
        ("(a) is a gas, (b) a metal. The answer is (b).", "B"),
        ('"answer": "c"', "C"),
        ('"answer": "(C)"', "C"),
        ('"answer": "C) Iron"', "C"),
        ('"answer": "D. None of the above"', "D"),
        ('"answer": C', "C"),
        ("'answer': 'b'", "B"),
        ("Between B and C, the second fits. So C", "C"),  # `and` in prose is not a hedge
        ("Between B and C, the second fits.", "C"),
        ("A or B? Neither: the answer is C.", "C"),
    ],
)
def test_mcq_letter_forms(text, letter):
    assert extract_choice(text) == letter
    for gold in "ABCD":
        assert mcq_reward(text, gold) == (1.0 if gold == letter else 0.0)


@pytest.mark.parametrize(
    "text",
    [
        '"answer": "A or B"',
        '"answer": "C and D"',
        '"answer": "B/C"',
        '"answer": "A, B"',
        '"answer": "a or b"',
        '"answer": "Both A and B"',
        '"answer": "C" ... on reflection "answer": "C or D"',  # the last field hedges
        "Answer: A or B",
        "answer: C and D",
        "**Answer:** B/C",
        "The answer is A or B.",
        "It is either (a) or (b).",
        "A/B",
    ],
)
def test_mcq_hedge_scores_zero_for_every_gold(text):
    """A hedge credited its last letter (`"answer": "A or B"` for B, `"C and D"` for D); the paper's
    code credits its first. A hedge is not an answer."""
    assert extract_choice(text) is None
    for gold in "ABCD":
        assert mcq_reward(text, gold) == 0.0


def test_mcq_answer_field_of_a_hedge_is_none():
    assert answer_field('"answer": "A or B"') is None
    assert answer_field("Answer: A or B") is None
    assert answer_field('"answer": "B"') == "B"
    assert answer_field("answer: B, not C") == "B"


def test_mcq_lowercase_word_after_the_key_is_not_a_choice():
    assert extract_choice("answer: a mixture") is None
    assert extract_choice("answer: b is wrong, I think") is None


def test_answers_followed_by_long_whitespace_still_score():
    """An answer followed by 100k spaces fell out of the 8,192-character tail window and scored 0."""
    pad = " " * 100_000 + "\n" * 10
    assert math_reward(r"\boxed{5}" + pad, "5") == 1.0
    assert boolq_reward(r"\boxed{yes}" + pad, True) == 1.0
    assert mcq_reward('"answer": "B"' + pad, "B") == 1.0
    assert countdown_reward(r"\boxed{1+2}" + pad, [1, 2], 3) == 1.0


def test_mcq_gold_letter_validation():
    assert mcq_reward('"answer": "C"', "c") == 1.0
    assert mcq_reward('"answer": "C"', " C ") == 1.0
    assert mcq_reward('"answer": "E"', "E") == 0.0
    assert mcq_reward("C", None) == 0.0


# --- BoolQ -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        (r"The passage says so. \boxed{yes}", True),
        (r"\boxed{No}", False),
        (r"\boxed{ TRUE }", True),
        (r"\boxed{false}", False),
        (r"\boxed{\text{yes}}", True),
        (r"\boxed{yes.}", True),
        (r"\boxed{no} hmm, actually \boxed{yes}", True),
        (r"\boxed{\boxed{no}}", False),
        # the paper's synonym set, punctuation ignored
        (r"\boxed{No!}", False),
        (r"\boxed{YES!}", True),
        (r"\boxed{yes?}", True),
        (r'\boxed{"no"}', False),
        (r"\boxed{(no)}", False),
        (r"\boxed{**yes**}", True),
        (r"\boxed{correct}", True),
        (r"\boxed{Right}", True),
        (r"\boxed{incorrect}", False),
        (r"\boxed{wrong.}", False),
        (r"\boxed{1}", True),
        (r"\boxed{0}", False),
        (r"\boxed{{no}}", False),
        (r"\boxed{{{yes}}}", True),
        (r"\boxed{yes .}", True),
        (r"\boxed{\text{No!}}", False),
        (r"\boxed{\textbf{yes}}", True),
        (r"\boxed{\textit{no}}", False),
        ("\\boxed{¡no!}", False),
    ],
)
def test_boolq_correct(text, gold):
    assert boolq_reward(text, gold) == 1.0
    assert boolq_reward(text, not gold) == 0.0


@pytest.mark.parametrize(
    "text",
    ["yes", "Answer: yes", r"\boxed{maybe}", r"\boxed{yes and no}", r"\boxed{y}", r"\boxed{yes} \boxed{no}",
     r"\boxed{1.0}", r"\boxed{10}", r"\boxed{yes no}", r"\boxed{not correct}", r"\boxed{yes, because}",
     r"\boxed{2}", r"\boxed{affirmative}", r"\boxed{\text{yes}\text{no}}", r"\boxed{-1}", r"\boxed{+1}",
     "\\boxed{\u22121}"],
)
def test_boolq_wrong(text):
    assert boolq_reward(text, True) == 0.0


def test_boolq_a_signed_zero_is_not_no():
    assert boolq_reward(r"\boxed{-0}", False) == 0.0 and boolq_reward(r"\boxed{0}", False) == 1.0


def test_boolq_gold_coerced_like_the_other_rewards():
    """A numpy bool or an integer 0/1 gold scored 0; other integers stay unscorable."""
    import numpy as np
    import torch

    assert boolq_reward(r"\boxed{yes}", np.bool_(True)) == 1.0
    assert boolq_reward(r"\boxed{no}", np.bool_(False)) == 1.0
    assert boolq_reward(r"\boxed{yes}", 1) == 1.0
    assert boolq_reward(r"\boxed{no}", 0) == 1.0
    assert boolq_reward(r"\boxed{no}", np.int64(0)) == 1.0
    assert boolq_reward(r"\boxed{yes}", torch.tensor(True)) == 1.0
    assert boolq_reward(r"\boxed{yes}", 2) == 0.0 and boolq_reward(r"\boxed{no}", 2) == 0.0


def test_boolq_gold_as_text():
    assert boolq_reward(r"\boxed{yes}", "true") == 1.0
    assert boolq_reward(r"\boxed{no}", "False") == 1.0
    assert boolq_reward(r"\boxed{yes}", None) == 0.0
