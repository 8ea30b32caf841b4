"""Tasks: seeded synthetic data (deterministic, disjoint splits, balanced, short), demonstrations
that the rewards score as intended, and the hub loaders run on local fixtures in the hub schemas.

Nothing here touches the network: every test runs with the Hub in offline mode and a private
datasets cache.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest

from esgrpo.errors import ConfigError, DataSourceError
from esgrpo.tasks import TASK_NAMES, get_task, load_examples
from esgrpo.tasks.base import Task
from esgrpo.tasks.countdown import NUM_MAX, NUM_MIN, TARGET_MAX, TARGET_MIN, THREE_NUMBER_SHARE, find_solution
from esgrpo.tasks.countdown import _draw as _draw_countdown
from esgrpo.tasks.hub import split_of

FIXTURES = Path(__file__).parent / "fixtures"
HUB_FIXTURES = {
    "countdown": FIXTURES / "countdown.jsonl",
    "math": FIXTURES / "math",
    "chemistry": FIXTURES / "chemistry.jsonl",
    "boolq": FIXTURES / "boolq",
}
STANDALONE_LETTER = re.compile(r"(?<![A-Za-z0-9])[A-D](?![A-Za-z0-9])")


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """No network and a throwaway datasets cache for every test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def _key(task: str, example) -> str:
    """The canonical instance key each task hashes to pick a split."""
    if task == "countdown":
        return f"{','.join(map(str, sorted(example.target['nums'])))}:{example.target['target']}"
    return example.question


# --- registry --------------------------------------------------------------------------------


def test_task_registry():
    assert TASK_NAMES == ("countdown", "math", "chemistry", "boolq")
    for name in TASK_NAMES:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert len(task.system_prompt) < 120 and "\n" not in task.system_prompt


def test_unknown_task_names_allowed_values():
    with pytest.raises(ConfigError, match="countdown, math, chemistry, boolq"):
        get_task("gsm8k")


def test_load_examples_argument_errors():
    with pytest.raises(ConfigError, match="source"):
        load_examples("math", "web", "train", 5)
    with pytest.raises(ConfigError, match="split"):
        load_examples("math", "hub", "pretrain", 5, path=str(HUB_FIXTURES["math"]))
    with pytest.raises(ConfigError, match="split"):
        load_examples("math", "synthetic", "validation", 5)
    with pytest.raises(ConfigError):
        load_examples("math", "synthetic", "train", None)
    with pytest.raises(ConfigError):
        load_examples("math", "synthetic", "train", -1)


def test_messages_use_system_prompt_and_question():
    task = get_task("boolq")
    ex = task.synthetic("train", 1, 0)[0]
    assert task.messages(ex) == [
        {"role": "system", "content": task.system_prompt},
        {"role": "user", "content": ex.question},
    ]


# --- synthetic data --------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_NAMES)
def test_synthetic_is_deterministic_and_seeded(name):
    a = load_examples(name, "synthetic", "train", 40, seed=3)
    b = load_examples(name, "synthetic", "train", 40, seed=3)
    c = load_examples(name, "synthetic", "train", 40, seed=4)
    assert a == b
    assert [e.target for e in a] == [e.target for e in b]
    assert [e.uid for e in a] != [e.uid for e in c]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_synthetic_splits_are_disjoint_and_unique(name):
    task = get_task(name)
    splits = {
        split: task.synthetic(split, n, seed=1)
        for split, n in (("pretrain", 1500), ("train", 300), ("test", 600))
    }
    keys = {split: {_key(name, e) for e in exs} for split, exs in splits.items()}
    uids = {split: {e.uid for e in exs} for split, exs in splits.items()}
    for split, exs in splits.items():
        assert len(keys[split]) == len(exs)  # no duplicates within a split
        assert len(uids[split]) == len(exs)
        assert all(split_of(name, k) == split for k in keys[split])
    assert not keys["pretrain"] & keys["train"]
    assert not keys["pretrain"] & keys["test"]
    assert not keys["train"] & keys["test"]
    assert not uids["pretrain"] & uids["test"]
    # Different seeds draw different examples but never cross split boundaries.
    other = {_key(name, e) for e in task.synthetic("test", 600, seed=99)}
    assert not other & (keys["pretrain"] | keys["train"])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_synthetic_sizes_and_short_questions(name):
    task = get_task(name)
    assert task.synthetic("train", 0, 0) == []
    test = task.synthetic("test", 2000, 0)
    assert len(test) == 2000
    assert len({e.uid for e in test}) == 2000
    assert max(len(e.question) for e in test) < 160
    assert all(json.loads(json.dumps(e.target)) == e.target for e in test[:200])  # JSON-serializable


def test_countdown_synthetic_instances():
    rng = random.Random(0)
    drawn = Counter(len(_draw_countdown(rng)[2]["nums"]) for _ in range(1000))
    assert abs(drawn[3] / 1000 - THREE_NUMBER_SHARE) < 0.05  # the configured share of draws has three numbers ...
    exs = get_task("countdown").synthetic("train", 300, 0)
    sizes = Counter(len(e.target["nums"]) for e in exs)
    assert set(sizes) == {3, 4}  # ... fewer after de-duplication: there are fewer 3-number instances
    for e in exs:
        nums, target = e.target["nums"], e.target["target"]
        assert all(NUM_MIN <= x <= NUM_MAX and type(x) is int for x in nums)
        assert type(target) is int and TARGET_MIN <= target <= TARGET_MAX
        assert e.question == f"Numbers: {' '.join(map(str, nums))}. Target: {target}."
        assert find_solution(nums, target, random.Random(0)) is not None


def test_math_synthetic_mixes_expressions_and_word_problems():
    exs = get_task("math").synthetic("train", 300, 0)
    bare = sum(e.question.startswith("Compute ") for e in exs)
    assert 0.1 < bare / len(exs) < 0.7  # bare expressions are a smaller instance space: fewer survive de-duplication
    for e in exs:
        assert re.fullmatch(r"[0-9]+", e.target["answer"])


def test_chemistry_gold_letters_are_balanced():
    exs = get_task("chemistry").synthetic("test", 800, 0)
    counts = Counter(e.target["answer"] for e in exs)
    assert set(counts) == set("ABCD")
    assert all(0.18 < c / len(exs) < 0.32 for c in counts.values())
    for e in exs:
        lines = e.question.split("\n")
        assert [line[:3] for line in lines[1:]] == ["A. ", "B. ", "C. ", "D. "]
        assert len(set(lines[1:])) == 4


def test_boolq_answers_are_balanced():
    exs = get_task("boolq").synthetic("test", 800, 0)
    yes = sum(e.target["answer"] is True for e in exs)
    assert all(isinstance(e.target["answer"], bool) for e in exs)
    assert 0.42 < yes / len(exs) < 0.58
    assert all("\nQuestion: " in e.question and e.question.endswith("?") for e in exs)


# --- demonstrations --------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_NAMES)
def test_demonstrations_score_as_intended(name):
    task = get_task(name)
    rng = random.Random(0)
    for split in ("pretrain", "test"):
        for ex in task.synthetic(split, 150, seed=5):
            correct = task.demonstration(ex, rng, "correct")
            wrong = task.demonstration(ex, rng, "wrong")
            slip = task.demonstration(ex, rng, "slip")
            mistake = task.demonstration(ex, rng, "mistake")
            assert task.reward(correct, ex) == 1.0, (ex, correct)
            assert task.reward(wrong, ex) == 0.0, (ex, wrong)
            assert task.reward(slip, ex) == 0.0, (ex, slip)
            # the systematic mistake: wrong, in the right format, and the same whatever the random state
            assert task.reward(mistake, ex) == 0.0 and task.answer(mistake) is not None, (ex, mistake)
            assert task.demonstration(ex, random.Random(99), "mistake") == mistake
            assert max(len(correct), len(wrong), len(slip), len(mistake)) < 80
            if name == "chemistry":
                assert not STANDALONE_LETTER.search(slip), slip


@pytest.mark.parametrize("name", TASK_NAMES)
def test_demonstrations_on_hub_fixture_examples(name):
    task = get_task(name)
    rng = random.Random(0)
    for ex in task.from_hub("train", 20, str(HUB_FIXTURES[name])):
        assert task.reward(task.demonstration(ex, rng, "correct"), ex) == 1.0
        assert task.reward(task.demonstration(ex, rng, "wrong"), ex) == 0.0
        assert task.reward(task.demonstration(ex, rng, "slip"), ex) == 0.0
        assert task.reward(task.demonstration(ex, rng, "mistake"), ex) == 0.0


@pytest.mark.parametrize("question, target, mistake", [
    # by hand: Countdown's plain sum in the given order; when that is the target, the last number subtracted
    ("Numbers: 3 7 5. Target: 26.", {"nums": [3, 7, 5], "target": 26}, "3+7=10, 10+5=15. \\boxed{3+7+5}"),
    ("Numbers: 3 7 5. Target: 15.", {"nums": [3, 7, 5], "target": 15}, "3+7=10, 10-5=5. \\boxed{3+7-5}"),
])
def test_countdown_mistake_is_the_plain_sum(question, target, mistake):
    from esgrpo.tasks.base import Example

    ex = Example(uid="countdown-x", question=question, target=target)
    assert get_task("countdown").demonstration(ex, random.Random(0), "mistake") == mistake


def test_mistakes_of_math_chemistry_boolq_by_hand():
    from esgrpo.tasks.base import Example

    math_ex = Example(uid="math-x", question="Compute 2*3.", target={"answer": "6", "work": "2*3=6."})
    assert get_task("math").demonstration(math_ex, random.Random(0), "mistake") == "2*3=7. \\boxed{7}"
    chem_ex = Example(uid="chemistry-x", question="Which element has atomic number 1?",
                      target={"answer": "D", "choices": ["helium", "lithium", "boron", "hydrogen"],
                              "work": "Element 1 is hydrogen."})
    # the next choice after D is A, named in the work where the right one was
    assert get_task("chemistry").demonstration(chem_ex, random.Random(0), "mistake") == \
        'Element 1 is helium. "answer": "A"'
    boolq_ex = Example(uid="boolq-x", question="Ann has a red cup.\nQuestion: Is Ann's cup red?",
                       target={"answer": True, "evidence": "the cup is red"})
    assert get_task("boolq").demonstration(boolq_ex, random.Random(0), "mistake") == \
        "It says the cup is red. \\boxed{no}"


def test_demonstration_rejects_unknown_kind():
    task = get_task("math")
    ex = task.synthetic("train", 1, 0)[0]
    with pytest.raises(ValueError):
        task.demonstration(ex, random.Random(0), "funny")


def test_a_failing_reward_scores_zero_and_is_counted():
    """The one reward-failure policy (score_responses): a reward that raises, or returns a non-number,
    scores 0 and is counted; a good response next to it is scored normally."""
    from esgrpo.tasks import score_responses

    for name in TASK_NAMES:
        task = get_task(name)
        ex = task.synthetic("train", 1, 0)[0]
        broken = type(ex)(uid=ex.uid, question=ex.question, target={})
        good = task.demonstration(ex, random.Random(0), "correct")
        scores = score_responses(task, [good, good], [broken, ex])
        assert scores.rewards == [0.0, 1.0] and scores.errors == 1, name


# --- hub loaders on local fixtures -----------------------------------------------------------


def test_countdown_hub_selection(tmp_path):
    rows = [{"target": i, "nums": [i % 10 + 1, 2, 3]} for i in range(2300)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "countdown.parquet"))
    path = str(tmp_path / "countdown.parquet")
    train = load_examples("countdown", "hub", "train", None, path=path)
    test = load_examples("countdown", "hub", "test", None, path=path)
    assert [e.target["target"] for e in train] == list(range(200))
    assert [e.target["target"] for e in test] == list(range(300, 2300))
    assert [e.target["target"] for e in load_examples("countdown", "hub", "test", 5, path=path)] == list(
        range(300, 305)
    )
    assert not {e.uid for e in train} & {e.uid for e in test}
    assert train[7].question == "Numbers: 8 2 3. Target: 7."
    assert train[7].target == {"nums": [8, 2, 3], "target": 7}


def test_countdown_hub_small_file():
    exs = load_examples("countdown", "hub", "train", 5, path=str(HUB_FIXTURES["countdown"]))
    assert len(exs) == 5
    assert exs[0].target == {"nums": [1, 2, 3], "target": 6}


def test_math_hub_train_is_stratified_by_level():
    path = str(HUB_FIXTURES["math"])
    exs = load_examples("math", "hub", "train", 10, path=path)
    assert Counter(e.target["level"] for e in exs) == {1: 2, 2: 2, 3: 2, 4: 2, 5: 2}
    assert exs == load_examples("math", "hub", "train", 10, path=path)  # seeded
    everything = load_examples("math", "hub", "train", None, path=path)
    assert len(everything) == 60  # 40 per level requested, 12 per level available, "Level ?" skipped
    assert all("Unrated" not in e.question for e in everything)
    assert len({e.uid for e in everything}) == 60
    seven = load_examples("math", "hub", "train", 7, path=path)
    assert sorted(Counter(e.target["level"] for e in seven).values()) == [1, 1, 1, 2, 2]


def test_math_hub_int_levels_and_test_split(tmp_path):
    rows = [
        {
            "problem": f"p{i}",
            "solution": "s",
            "answer": str(i),
            "subject": "Algebra",
            "level": i % 5 + 1,
            "unique_id": f"u{i}",
        }
        for i in range(50)
    ]
    path = tmp_path / "math.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    train = load_examples("math", "hub", "train", 15, path=str(path))
    assert Counter(e.target["level"] for e in train) == {1: 3, 2: 3, 3: 3, 4: 3, 5: 3}
    test = load_examples("math", "hub", "test", None, path=str(HUB_FIXTURES["math"]))
    assert len(test) == 10 and all("level" in e.target for e in test)
    first = json.loads((HUB_FIXTURES["math"] / "test.jsonl").read_text().splitlines()[0])
    assert test[0].question == first["problem"] and test[0].target["answer"] == first["answer"]


def test_chemistry_hub_filters_and_shuffles():
    path = str(HUB_FIXTURES["chemistry"])
    train = load_examples("chemistry", "hub", "train", None, path=path)
    test = load_examples("chemistry", "hub", "test", None, path=path)
    assert len(train) == 200 and len(test) == 30  # 230 Chemistry mcq-4-choices rows in the fixture
    assert all(e.question.startswith("Chemistry question") for e in train + test)
    assert not {e.question for e in train} & {e.question for e in test}
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    kept = [r for r in rows if r["domain"] == "Chemistry" and r["type"] == "mcq-4-choices"]
    expected = datasets.Dataset.from_list(kept).shuffle(seed=42)
    assert [e.question.split("\n")[0] for e in train + test] == expected["question"]
    assert [e.target["answer"] for e in train + test] == expected["answerKey"]
    assert [e.question.split("\n")[0] for e in train] != [r["question"] for r in kept[:200]]  # shuffled
    assert train[0].question.split("\n")[1:] == [
        f"{lab}. {t}" for lab, t in zip("ABCD", expected[0]["choices"]["text"], strict=True)
    ]
    assert len(load_examples("chemistry", "hub", "test", 4, path=path)) == 4
    with pytest.raises(ConfigError):
        load_examples("chemistry", "hub", "train", 201, path=path)


def test_boolq_hub_splits():
    path = str(HUB_FIXTURES["boolq"])
    train = load_examples("boolq", "hub", "train", None, path=path)
    test = load_examples("boolq", "hub", "test", 5, path=path)
    assert len(train) == 12 and len(test) == 5
    assert all("train item" in e.question for e in train)
    assert all("validation item" in e.question for e in test)  # test = the validation split
    assert [e.target["answer"] for e in test] == [True, False, True, False, True]
    assert (
        test[0].question == "In the validation fixture, item 0 is even.\nQuestion: is validation item 0 even?"
    )


def test_hub_loader_reads_save_to_disk_and_csv(tmp_path):
    rows = [{"question": f"q{i}", "answer": bool(i % 2), "passage": f"p{i}."} for i in range(6)]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "validation": datasets.Dataset.from_list(rows[::-1])}
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    test = load_examples("boolq", "hub", "test", None, path=str(tmp_path / "saved"))
    assert [e.question for e in test][0] == "p5.\nQuestion: q5?"
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "boolq.csv"))
    train = load_examples("boolq", "hub", "train", None, path=str(tmp_path / "boolq.csv"))
    assert [e.target["answer"] for e in train] == [False, True, False, True, False, True]


def test_missing_file_is_a_clear_data_source_error(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataSourceError, match="nope.jsonl") as info:
        load_examples("boolq", "hub", "train", 5, path=str(missing))
    assert "synthetic" in str(info.value) and "data_path" in str(info.value)


def test_missing_column_names_column_and_file():
    with pytest.raises(DataSourceError, match="passage") as info:
        load_examples("boolq", "hub", "train", 5, path=str(HUB_FIXTURES["countdown"]))
    assert "countdown.jsonl" in str(info.value)


def test_unreadable_and_unsupported_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(DataSourceError, match="bad.jsonl"):
        load_examples("countdown", "hub", "train", 5, path=str(bad))
    txt = tmp_path / "data.txt"
    txt.write_text("hello")
    with pytest.raises(DataSourceError, match="unsupported"):
        load_examples("countdown", "hub", "train", 5, path=str(txt))


@pytest.mark.parametrize(
    ("name", "dataset_id"),
    [
        ("countdown", "Jiayi-Pan/Countdown-Tasks-3to4"),
        ("math", "nlile/hendrycks-MATH-benchmark"),
        ("chemistry", "hicai-zju/SciKnowEval"),
        ("boolq", "google/boolq"),
    ],
)
def test_unreachable_hub_is_a_clear_data_source_error(name, dataset_id):
    with pytest.raises(DataSourceError, match=re.escape(dataset_id)) as info:
        load_examples(name, "hub", "test", 5)
    assert "source: synthetic" in str(info.value)


def test_a_synthetic_pool_that_runs_dry_stops_instead_of_drawing_forever(monkeypatch):
    """Sizes beyond a generator's pool are refused before drawing (capacity), and a pool that runs dry below
    its stated capacity stops after STALL_DRAWS draws without a new instance."""
    import esgrpo.tasks.hub as hub

    def draw(rng):
        k = rng.randrange(40)  # a pool of 40 keys
        return str(k), f"q{k}", {}

    monkeypatch.setattr(hub, "STALL_DRAWS", 2000)
    n_train = sum(hub.split_of("toy", str(k)) == "train" for k in range(40))
    assert len(hub.collect_synthetic("toy", "train", n_train, 0, draw)) == n_train
    with pytest.raises(ConfigError, match="ran out of distinct train instances"):
        hub.collect_synthetic("toy", "train", n_train + 1, 0, draw)
    with pytest.raises(ConfigError, match="about 5 distinct train instances"):
        hub.collect_synthetic("toy", "train", 6, 0, draw, capacity={"pretrain": 30, "train": 5, "test": 5})
