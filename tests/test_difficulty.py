"""Difficulty levels of the synthetic tasks (data.difficulty): level 1 is the original generator bit for bit,
higher levels have the properties their tables promise (checked here by hand, not read back from the tables),
every answer is right (an independent solver per task, and the task's own correct demonstration scores 1),
splits stay disjoint, pools hold the study's sizes, and bad levels are one-line errors."""

from __future__ import annotations

import random
import re
from itertools import product
from pathlib import Path

import pytest

from esgrpo.cli import main
from esgrpo.config import DataConfig, EvalConfig, identity, load_config
from esgrpo.config.schema import DIFFICULTY_LEVELS
from esgrpo.errors import ConfigError
from esgrpo.rewards.countdown import evaluate_expression
from esgrpo.tasks import TASK_NAMES, examples_hash, get_task, load_examples, load_task_examples
from esgrpo.tasks.hub import split_of

HARDER = [lv for lv in DIFFICULTY_LEVELS if lv != 1]

# examples_hash of today's generators, recorded before difficulty levels existed: (split, n, seed) -> task -> hash.
ORIGINAL = {
    ("pretrain", 1500, 0): {"countdown": "b4398e26ac8d2473", "math": "0c5175ab9b29d1e9",
                            "chemistry": "ad6ceb02c8d5a31a", "boolq": "7ccf2564970e178d"},
    ("train", 300, 1234): {"countdown": "49cf9110abd87b03", "math": "97efb3e97fe28f3e",
                           "chemistry": "9d672faf992ccd64", "boolq": "e314ed308008f61b"},
    ("test", 600, 1): {"countdown": "9d553cf6b75de44e", "math": "7085c8131768b79a",
                       "chemistry": "ba44540684505d64", "boolq": "cfa7097b01891199"},
}


def _key(task: str, example) -> str:
    """The canonical instance key each task hashes to pick a split."""
    if task == "countdown":
        return f"{','.join(map(str, sorted(example.target['nums'])))}:{example.target['target']}"
    return example.question


# --- level 1 is the original generator --------------------------------------------------------------------


@pytest.mark.parametrize(("split", "n", "seed"), list(ORIGINAL))
def test_level_1_is_the_original_generator(split, n, seed):
    for name in TASK_NAMES:
        task = get_task(name)
        default = task.synthetic(split, n, seed)
        assert examples_hash(default) == ORIGINAL[(split, n, seed)][name], name
        assert task.synthetic(split, n, seed, 1) == default
        if split != "pretrain":
            assert load_examples(name, "synthetic", split, n, seed=seed, level=1) == default
        assert all(re.fullmatch(rf"{name}-[0-9a-f]{{16}}", ex.uid) and "difficulty" not in ex.target
                   for ex in default)


def test_the_config_default_is_level_1_and_levels_reach_the_examples():
    data = DataConfig()
    assert data.difficulty == {} and all(data.level(t) == 1 for t in TASK_NAMES)
    original = load_task_examples(data, "test", 50)
    assert original == {t: load_examples(t, "synthetic", "test", 50, seed=data.seed) for t in TASK_NAMES}
    harder = load_task_examples(DataConfig(difficulty={"math": 3, "boolq": 2}), "test", 50)
    assert harder["countdown"] == original["countdown"] and harder["chemistry"] == original["chemistry"]
    for name, level in (("math", 3), ("boolq", 2)):
        assert all(ex.uid.startswith(f"{name}-L{level}-") and ex.target["difficulty"] == level for ex in harder[name])
        assert examples_hash(harder[name]) != examples_hash(original[name])
    # The level is part of a run's identity (a DataConfig field), so a run directory refuses another one.
    ident = identity(load_config(EvalConfig, None, {"data": {"difficulty": "{math: 3}"}}))
    assert ident["data.difficulty"] == {"math": 3} and identity(EvalConfig())["data.difficulty"] == {}


# --- every level: tables, pools, disjoint splits, right answers ----------------------------------------------


def test_every_task_has_the_levels_and_pools_for_the_study_sizes():
    for name in TASK_NAMES:
        levels = get_task(name).levels
        assert tuple(levels) == DIFFICULTY_LEVELS
        for spec in levels.values():
            assert spec.what and "\n" not in spec.what
            assert spec.capacity["train"] >= 200 and spec.capacity["test"] >= 2000 and spec.capacity["pretrain"] >= 5000


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("level", HARDER)
def test_harder_splits_are_disjoint_seeded_and_unique(name, level):
    task = get_task(name)
    splits = {split: task.synthetic(split, n, 1, level) for split, n in (("pretrain", 700), ("train", 200),
                                                                         ("test", 500))}
    keys = {split: {_key(name, e) for e in exs} for split, exs in splits.items()}
    for split, exs in splits.items():
        assert len(keys[split]) == len({e.uid for e in exs}) == len(exs)
        # Split by the task's own key hash, as at level 1: an instance is in the same split at every level.
        assert all(split_of(name, k) == split for k in keys[split])
        assert all(e.uid.startswith(f"{name}-L{level}-") and e.target["difficulty"] == level for e in exs)
    assert not keys["pretrain"] & keys["train"] and not keys["pretrain"] & keys["test"]
    assert not keys["train"] & keys["test"]
    assert task.synthetic("train", 200, 1, level) == splits["train"]
    assert task.synthetic("train", 200, 2, level) != splits["train"]
    original_pretrain = {_key(name, e) for e in task.synthetic("pretrain", 1500, 1)}
    assert not original_pretrain & (keys["train"] | keys["test"])


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("level", DIFFICULTY_LEVELS)
def test_every_demonstration_scores_as_intended_at_every_level(name, level):
    """The task's own correct demonstration scores 1 on every instance (so every instance is solvable and its
    answer is the one the reward checks); wrong answers and format slips score 0."""
    task = get_task(name)
    rng = random.Random(0)
    n = 40 if name == "countdown" else 150  # a 5-number Countdown solution is searched for (~30 ms)
    for split in ("pretrain", "test"):
        for ex in task.synthetic(split, n, 5, level):
            assert task.reward(task.demonstration(ex, rng, "correct"), ex) == 1.0, ex
            assert task.reward(task.worked_answer(ex), ex) == 1.0, ex
            assert task.reward(task.demonstration(ex, rng, "wrong"), ex) == 0.0, ex
            assert task.reward(task.demonstration(ex, rng, "slip"), ex) == 0.0, ex
            assert task.reward(task.demonstration(ex, rng, "mistake"), ex) == 0.0, ex


def test_every_level_fits_the_tiny_models_context():
    """Prompts of every level leave room for 48 new tokens in the tiny model's 256 positions."""
    from tokenizers import Tokenizer

    from esgrpo.models.tiny import render

    tok = Tokenizer.from_file(str(Path(__file__).parents[1] / "src/esgrpo/models/shipped/tiny/tokenizer.json"))
    for name in TASK_NAMES:
        task = get_task(name)
        for level in DIFFICULTY_LEVELS:
            longest = max(task.synthetic("test", 300, 0, level), key=lambda e: len(e.question))
            assert len(tok.encode(render(task.messages(longest))).ids) + 48 <= 256, (name, level)


# --- the properties each level promises, checked by hand ---------------------------------------------------

# Countdown: operand counts, number range, target range, what the target may not be.
COUNTDOWN = {2: ({4}, 25, (1, 200), "not the sum"), 3: ({4, 5}, 25, (10, 500), "needs * or /"),
             4: ({5}, 50, (100, 1000), "needs * or /")}


@pytest.mark.parametrize("level", HARDER)
def test_countdown_levels(level):
    counts, num_max, (low, high), rule = COUNTDOWN[level]
    exs = get_task("countdown").synthetic("test", 500, 0, level)
    assert {len(e.target["nums"]) for e in exs} == counts
    assert max(x for e in exs for x in e.target["nums"]) > num_max // 2  # the larger range is used
    for e in exs:
        nums, target = e.target["nums"], e.target["target"]
        assert all(1 <= x <= num_max for x in nums) and low <= target <= high
        assert e.question == f"Numbers: {' '.join(map(str, nums))}. Target: {target}."
        assert target != sum(nums)
        if rule == "needs * or /":  # no signed sum reaches it: + and - alone cannot solve it
            assert all(sum(s * x for s, x in zip(signs, nums, strict=True)) != target
                       for signs in product((1, -1), repeat=len(nums)))


# Math: operations per problem, + - operand bound, factor bound, largest answer.
MATH = {2: ({2}, 50, 12, 1000), 3: ({3}, 100, 15, 2000), 4: ({3, 4}, 500, 25, 10_000)}
FIRST = [(r"(\w+) has (\d+) (\w+) and buys (\d+) more\.", "+"), (r"(\w+) has (\d+) (\w+) and gives away (\d+)\.", "-"),
         (r"(\w+) buys (\d+) boxes of (\d+) (\w+)\.", "*"),
         (r"(\w+) splits (\d+) (\w+) into (\d+) equal piles and keeps one pile\.", "/")]
NEXT = [(r"Then (\w+) gets (\d+) more\.", "+"), (r"Then (\w+) gives away (\d+)\.", "-"),
        (r"Then (\w+) ends up with (\d+) times as many\.", "*"),
        (r"Then (\w+) splits them into (\d+) equal piles and keeps one pile\.", "/")]


def _apply(value: int, op: str, x: int) -> int:
    if op == "/":
        assert value % x == 0, (value, x)
        return value // x
    return {"+": value + x, "-": value - x, "*": value * x}[op]


def _solve_word_problem(question: str) -> tuple[int, list[tuple[str, int]]]:
    """The answer of a chained word problem, read sentence by sentence; and its (op, operand) steps."""
    sentences = re.split(r"(?<=[.?]) ", question)
    for pattern, op in FIRST:
        if m := re.fullmatch(pattern, sentences[0]):
            a, b = (int(m.group(2)), int(m.group(4))) if op != "*" else (int(m.group(2)), int(m.group(3)))
            break
    else:
        raise AssertionError(f"unknown first sentence {sentences[0]!r}")
    value, steps = _apply(a, op, b), [(op, a), (op, b)]
    for sentence in sentences[1:-1]:
        op, x = next((op, int(m.group(2))) for pattern, op in NEXT if (m := re.fullmatch(pattern, sentence)))
        value = _apply(value, op, x)
        assert value >= 0
        steps.append((op, x))
    assert re.fullmatch(r"How many \w+ does \w+ have now\?", sentences[-1]), sentences[-1]
    return value, steps


@pytest.mark.parametrize("level", HARDER)
def test_math_levels(level):
    n_steps, add_max, mul_max, max_answer = MATH[level]
    exs = get_task("math").synthetic("test", 500, 0, level)
    word = [e for e in exs if not e.question.startswith("Compute ")]
    assert 0.3 < len(word) / len(exs) < 0.7
    ops_seen = set()
    for e in exs:
        answer = int(e.target["answer"])
        assert 0 <= answer <= max_answer
        assert len(e.target["work"].split(", ")) in n_steps  # one worked step per operation
        if e in word:
            value, steps = _solve_word_problem(e.question)
            assert len(steps) - 1 in n_steps
            (first, a), *rest = steps
            assert 1 <= a <= {"+": add_max, "-": add_max, "*": mul_max, "/": mul_max * mul_max}[first]
            for op, x in rest:  # terms up to add_max, factors and divisors up to mul_max
                assert 1 <= x <= (add_max if op in "+-" else mul_max)
                ops_seen.add(op)
        else:
            expr = re.fullmatch(r"Compute (.+)\.", e.question).group(1)
            value, literals = evaluate_expression(expr)
            assert len(re.findall(r"[-+*/]", expr)) in n_steps
            assert all(1 <= x <= max(add_max, mul_max * mul_max) for x in literals)
        assert value == answer, e
    assert ops_seen == set("+-*/")


# Chemistry: the gold answer against periodictable itself, how many elements, how close the distractors are.
CHEMISTRY = {2: (86, 6), 3: (86, 6), 4: (103, 4)}  # elements, greatest |Z - Z_asked| of a distractor element


def _period(z: int) -> int:
    return 1 + sum(z > end for end in (2, 10, 18, 36, 54, 86))


@pytest.mark.parametrize("level", HARDER)
def test_chemistry_levels(level):
    from periodictable import elements

    n_elements, spread = CHEMISTRY[level]
    by_name = {el.name: el for el in elements if 1 <= el.number <= 118}
    families = {"noble gas": {2, 10, 18, 36, 54, 86}, "halogen": {9, 17, 35, 53, 85},
                "alkali metal": {3, 11, 19, 37, 55, 87}, "alkaline earth metal": {4, 12, 20, 38, 56, 88}}
    stems, lured, asked_symbol = set(), 0, 0
    for e in get_task("chemistry").synthetic("test", 800, 0, level):
        stem, *lines = e.question.split("\n")
        choices = [line[3:] for line in lines]
        assert [line[:3] for line in lines] == ["A. ", "B. ", "C. ", "D. "] and len(set(choices)) == 4
        gold = choices["ABCD".index(e.target["answer"])]
        named = [by_name[c] for c in choices if c in by_name]
        assert all(el.number <= n_elements for el in named)
        if m := re.fullmatch(r"Which element has the symbol (\w+)\?", stem):
            stems.add("symbol->name")
            assert by_name[gold].symbol == m.group(1)
        elif m := re.fullmatch(r"What is the symbol of (\w+)\?", stem):
            stems.add("name->symbol")
            assert gold == by_name[m.group(1)].symbol and not {"A", "B", "C", "D"} & set(choices)
        elif m := re.fullmatch(r"What is the atomic number of (\w+)\?", stem):
            stems.add("name->number")
            z = by_name[m.group(1)].number
            assert gold == str(z) and all(abs(int(c) - z) <= 3 for c in choices)
        elif m := re.fullmatch(r"Which element has atomic number (\d+)\?", stem):
            stems.add("number->name")
            assert by_name[gold].number == int(m.group(1))
        elif stem == "Which has the largest atomic number?":
            stems.add("largest number")
            assert by_name[gold].number == max(el.number for el in named)
        elif m := re.fullmatch(r"In which period of the periodic table is (\w+)\?", stem):
            stems.add("period")
            assert gold == str(_period(by_name[m.group(1)].number))
        elif m := re.fullmatch(r"Which of these is an? ([a-z ]+)\?", stem):
            stems.add("family")
            assert [el.number in families[m.group(1)] for el in named] == [c == gold for c in choices]
        elif m := re.fullmatch(r"What is the standard atomic weight of (\w+)\?", stem):
            stems.add("weight")
            assert gold == f"{by_name[m.group(1)].mass:.1f}"
        elif stem == "Which has the largest standard atomic weight?":
            stems.add("largest weight")
            assert by_name[gold].mass == max(el.mass for el in named)
        else:
            raise AssertionError(f"unknown question {stem!r}")
        if len(named) == 4 and not stem.startswith("Which of these"):
            # Close distractors: the four elements are neighbours in the table (around the asked one).
            assert max(el.number for el in named) - min(el.number for el in named) <= 2 * spread, e.question
            if stem.startswith(("Which element has the symbol", "Which element has atomic number")):
                assert all(abs(el.number - by_name[gold].number) <= spread for el in named), e.question
        if m := re.fullmatch(r"What is the symbol of (\w+)\?", stem):  # lures: symbols that start alike
            initials = {gold[0], m.group(1)[0].upper()}
            lured += all(c[0] in initials for c in choices)
            asked_symbol += 1
    original = {"symbol->name", "name->symbol", "name->number", "number->name", "largest number"}
    more = {2: set(), 3: {"period", "family", "weight"}, 4: {"period", "family", "weight", "largest weight"}}
    assert stems == original | more[level]
    assert lured / asked_symbol > 0.5


# BoolQ: a solver that reads every sentence of the passage into facts (refusing a contradiction) and answers.
FACT_PATTERNS = [
    (r"(\w+) has (\d+) (\w+) (\w+)s\.", lambda m: [(("count", m[1], m[4]), int(m[2]))]),
    (r"(\w+) has (\d+) (\w+)s\.", lambda m: [(("count", m[1], m[3]), int(m[2]))]),
    (r"(\w+) has (\d+) (\w+)s and (\w+) has (\d+)\.",
     lambda m: [(("count", m[1], m[3]), int(m[2])), (("count", m[4], m[3]), int(m[5]))]),
    (r"(\w+) has a (\w+) (\w+) and a (\w+) (\w+)\.",
     lambda m: [(("color", m[1], m[3]), m[2]), (("color", m[1], m[5]), m[4])]),
    (r"(\w+) has a (\w+) (\w+)\.", lambda m: [(("color", m[1], m[3]), m[2])]),
    (r"(\w+) lives in (\w+) and works on (\w+)s\.", lambda m: [(("home", m[1]), m[2])]),
    (r"(\w+) lives in (\w+)\.", lambda m: [(("home", m[1]), m[2])]),
    (r"(\w+) lives in the same city as (\w+)\.", lambda m: [(("same", m[1]), m[2])]),
    (r"(\w+) went to (\w+) with (\w+) on (\w+)\.", lambda m: [(("with", m[1]), m[3]), (("day", m[1]), m[4])]),
    (r"(\w+) went to (\w+) on (\w+)\.", lambda m: [(("day", m[1]), m[3])]),
]
# (question, the same question negated, its truth from the facts)
QUESTION_PATTERNS = [
    (r"Does (\w+) have (\d+) (\w+)s\?", r"Is it true that (\w+) does not have (\d+) (\w+)s\?",
     lambda f, p, x, t: f[("count", p, t)] == int(x)),
    (r"Is (\w+)'s (\w+) (\w+)\?", r"Is it true that (\w+)'s (\w+) is not (\w+)\?",
     lambda f, p, t, c: f[("color", p, t)] == c),
    (r"Does (\w+) live in (\w+)\?", r"Is it true that (\w+) does not live in (\w+)\?",
     lambda f, p, c: _home(f, p) == c),
    (r"Did (\w+) go on (\w+)\?", r"Is it true that (\w+) did not go on (\w+)\?", lambda f, p, d: f[("day", p)] == d),
    (r"Did (\w+) go with (\w+)\?", r"Is it true that (\w+) did not go with (\w+)\?",
     lambda f, p, q: f[("with", p)] == q),
    (r"Does (\w+) have more (\w+)s than (\w+)\?", r"Is it true that (\w+) does not have more (\w+)s than (\w+)\?",
     lambda f, p, t, q: f[("count", p, t)] > f[("count", q, t)]),
]


def _home(facts: dict, person: str) -> str:
    return facts[("home", person)] if ("home", person) in facts else facts[("home", facts[("same", person)])]


def _solve_boolq(question: str) -> tuple[bool, int, bool]:
    """(answer, sentences in the passage, negated?) from the text alone."""
    passage, asked = question.split("\nQuestion: ")
    sentences = re.split(r"(?<=\.) ", passage)
    facts: dict = {}
    for sentence in sentences:
        found = next((fn(m) for pattern, fn in FACT_PATTERNS if (m := re.fullmatch(pattern, sentence))), None)
        assert found is not None, f"unknown sentence {sentence!r}"
        for key, value in found:
            assert facts.setdefault(key, value) == value, f"the passage contradicts itself on {key}: {passage!r}"
    for positive, negative, truth in QUESTION_PATTERNS:
        if m := re.fullmatch(positive, asked):
            return truth(facts, *m.groups()), len(sentences), False
        if m := re.fullmatch(negative, asked):
            return not truth(facts, *m.groups()), len(sentences), True
    raise AssertionError(f"unknown question {asked!r}")


BOOLQ = {1: ({1}, 0.0), 2: ({2, 3}, 0.25), 3: ({3, 4}, 0.5), 4: ({5, 6, 7}, 0.5)}  # sentences, negated share


@pytest.mark.parametrize("level", DIFFICULTY_LEVELS)
def test_boolq_levels(level):
    lengths, negated_share = BOOLQ[level]
    exs = get_task("boolq").synthetic("test", 800, 0, level)
    negated = 0
    for e in exs:
        answer, sentences, was_negated = _solve_boolq(e.question)
        assert answer == e.target["answer"], e.question
        assert sentences in lengths or (level == 1 and sentences == 1), (sentences, e.question)
        negated += was_negated
    assert abs(negated / len(exs) - negated_share) < 0.06
    assert 0.42 < sum(e.target["answer"] for e in exs) / len(exs) < 0.58
    if level >= 3:  # a lure: another person holds the very value asked about, in about a third of the passages
        lured = sum(bool(re.search(r"\. \w+ (has \d+ \w+s|has a \w+ \w+|lives in \w+|went to \w+ on \w+)\.",
                                   " " + e.question.split("\n")[0])) for e in exs)
        assert lured / len(exs) > 0.3
    if level == 4:
        assert any("the same city as" in e.question for e in exs)


# --- errors -------------------------------------------------------------------------------------------------


def test_bad_levels_are_one_line_errors_naming_the_setting(tmp_path, capsys):
    cases = ["{countdown: 7}", "{countdown: 0}", "{gsm8k: 2}", "{countdown: two}", "{countdown: true}", "[2]",
             "{mymod:Task: 2}"]
    for value in cases:
        assert main(["eval", "tiny", "--set", f"data.difficulty={value}", "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "data.difficulty" in err, (value, err)
    assert main(["eval", "tiny", "--source", "hub", "--data.difficulty", "{boolq: 2}", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.difficulty" in err and "hub" in err
    assert not (tmp_path / "run").exists()
    assert load_config(EvalConfig, None, {"data": {"source": "hub", "difficulty": "{boolq: 1}"}})  # level 1: fine


def test_load_examples_refuses_levels_it_cannot_give(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="difficulty levels 1, 2, 3, 4; got 9"):
        load_examples("math", "synthetic", "test", 5, level=9)
    with pytest.raises(ConfigError, match="synthetic data only, and the source is hub"):
        load_examples("boolq", "hub", "test", 5, level=2)
    (tmp_path / "own_task.py").write_text("from esgrpo.tasks import Task\n\nclass Own(Task):\n    name = 'own'\n"
                                          "    system_prompt = 'x'\n\n    def reward(self, text, example):\n"
                                          "        return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="'own_task:Own' is not a built-in synthetic task"):
        load_examples("own_task:Own", "synthetic", "test", 5, level=2)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_a_size_beyond_a_levels_pool_names_the_level(name):
    task = get_task(name)
    too_many = task.levels[3].capacity["train"] + 1
    with pytest.raises(ConfigError, match=f"synthetic {name} at difficulty level 3 has about .* distinct train"):
        task.synthetic("train", too_many, 0, 3)


def test_training_and_the_prompt_shots_use_the_configured_level(monkeypatch, tmp_path):
    """Every path that loads data from a config (training, evaluation, worked examples) takes its level."""
    import esgrpo.run
    from esgrpo.config import DataConfig, PromptConfig, TrainConfig, from_dict
    from esgrpo.tasks.prompting import make_task

    data = from_dict(DataConfig, {"difficulty": {"math": 2}, "n_train": 8, "n_test": 4})
    shots = make_task("math", PromptConfig(shots=2), data).shots
    assert shots and all("-L2-" in ex.uid for ex in shots)

    seen = {}

    def capture(method, cfg, train, run, resume, init_optimizer):
        seen["train"] = train
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(esgrpo.run, "_train", capture)
    cfg = from_dict(TrainConfig, {"task": "math", "data": {"difficulty": {"math": 2}, "n_train": 8, "n_test": 4},
                                  "out": str(tmp_path / "run")})
    with pytest.raises(KeyboardInterrupt):
        esgrpo.run.run_training("es", cfg)
    assert len(seen["train"]) == 8 and all("-L2-" in ex.uid for ex in seen["train"])


def test_level_one_named_is_the_same_run_as_level_one_unnamed():
    from esgrpo.config import DataConfig, from_dict, identity

    assert identity(from_dict(DataConfig, {"difficulty": {"countdown": 1}})) == identity(DataConfig())
