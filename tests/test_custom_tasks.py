"""Bring your own task (defined outside the package), our rewards as TRL reward functions, the answer
statistics beside every accuracy, and tracking to TensorBoard."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from esgrpo.cli import main
from esgrpo.errors import ConfigError
from esgrpo.tasks import get_task, load_examples

MODULE = textwrap.dedent('''
    """A task of a user's own, outside esgrpo: is the number even? Data in JSONL, a TRL-style reward."""
    from esgrpo.tasks import JsonlTask


    def says_parity(prompts, completions, answer, **columns):
        return [1.0 if ("\\\\boxed{" + a + "}") in c else 0.0 for c, a in zip(completions, answer)]


    class Parity(JsonlTask):
        name = "parity"
        system_prompt = "Think step by step, then answer \\\\boxed{yes} or \\\\boxed{no}."
        files = {"train": "{DIR}/train.jsonl", "test": "{DIR}/test.jsonl"}
        reward_function = staticmethod(says_parity)

        def answer(self, text):
            import re
            m = re.findall(r"\\\\boxed\\{(yes|no)\\}", text)
            return m[-1] if m else None

        def gold(self, example):
            return example.target["answer"]
''')


@pytest.fixture
def parity(tmp_path, monkeypatch):
    """The module byo_parity.py, written outside the package and importable, with its data files."""
    for split, numbers in (("train", range(0, 40)), ("test", range(100, 124))):
        rows = [{"question": f"Is {k} an even number?\nQuestion: is it even?", "answer": "yes" if k % 2 == 0 else "no"}
                for k in numbers]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "byo_parity.py").write_text(MODULE.replace("{DIR}", str(tmp_path)))
    monkeypatch.syspath_prepend(str(tmp_path))
    # each test imports its own copy: one cached by an earlier test points at that test's (deleted) directory
    monkeypatch.delitem(sys.modules, "byo_parity", raising=False)
    return "byo_parity:Parity"


def test_a_task_of_your_own_loads_by_module_and_class(parity):
    task = get_task(parity)
    test = load_examples(parity, "synthetic", "test", 10)
    assert task.name == "parity" and len(test) == 10 and test[0].target == {"answer": "yes"}
    assert task.reward("so \\boxed{yes}", test[0]) == 1.0 and task.reward("\\boxed{no}", test[0]) == 0.0
    with pytest.raises(ConfigError, match="cannot import Nope"):
        get_task("byo_parity:Nope")
    with pytest.raises(ConfigError, match="package.module:ClassName"):
        get_task("not a task")


@pytest.mark.slow
def test_a_task_of_your_own_through_es_grpo_and_the_report(parity, tmp_path, capsys):
    out = tmp_path / "study"
    code = main(["study", "--out", str(out), "--data.tasks", parity, "--data.n_train", "12", "--data.n_test", "8",
                 "--generation.max_new_tokens", "24", "--es.population", "4", "--es.iterations", "2",
                 "--es.batch_size", "6", "--es.sigma", "0.02", "--es.alpha", "0.02", "--es.max_new_tokens", "24",
                 "--grpo.steps", "2", "--grpo.prompts_per_step", "3", "--grpo.group_size", "4",
                 "--grpo.max_new_tokens", "24", "--extra_models", "", "--es_long_factor", "2",
                 "--analysis.n_examples", "4", "--analysis.alphas", "3", "--analysis.probe_points", "2",
                 "--analysis.probe_n_examples", "4", "--analysis.kl_prompts", "3", "--analysis.kl_samples", "1",
                 "--analysis.heldout_docs", "10", "--report_to", "tensorboard"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["tasks"][parity]["accuracy"]) == {"es_short", "es_long", "grpo"}
    assert res["constant_baseline"][parity] == {"answer": "no", "accuracy": 0.5}  # 100..107: 4 even, 4 odd
    md = (out / "report.md").read_text()
    assert f"| {parity} |" in md
    # tracking: each training run wrote TensorBoard events with the rewards of every iteration / step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run, tag, steps in (("es", "es/reward_mean", 4), ("grpo", "grpo/reward_mean", 2)):
        events = EventAccumulator(str(out / "runs" / f"{parity}-{run}" / "tensorboard"))
        events.Reload()
        assert tag in events.Tags()["scalars"]
        assert [e.step for e in events.Scalars(tag)] == list(range(1, steps + 1))


def test_our_rewards_as_trl_reward_functions():
    from esgrpo.rewards import trl

    completions = ["so \\boxed{yes}", [{"role": "assistant", "content": "\\boxed{no}"}], None]
    assert trl.boolq(prompts=[""] * 3, completions=completions, answer=[True, True, "no"]) == [1.0, 0.0, 0.0]
    assert trl.math(prompts=[""], completions=["\\boxed{1/2}"], answer=["0.5"]) == [1.0]
    assert trl.chemistry(prompts=[""], completions=['"answer": "C"'], answer=["C"]) == [1.0]
    assert trl.countdown(prompts=[""] * 2, completions=["\\boxed{3*4}", "\\boxed{9**9**9}"], nums=[[3, 4], [9, 9]],
                         target=[12, 81]) == [1.0, 0.0]
    assert trl.math(prompts=[""], completions=["\\boxed{1}"]) == [0.0]  # a missing column scores 0, never raises
    assert set(trl.REWARDS) == {"countdown", "math", "chemistry", "boolq"}


def test_evaluation_reports_the_answer_distribution_and_the_constant_baseline():
    from esgrpo.evaluate import answer_statistics

    task = get_task("boolq")
    examples = load_examples("boolq", "synthetic", "test", 10, seed=1)
    golds = [task.gold(e) for e in examples]
    given = ["yes"] * 6 + [None] * 4
    rewards = [float(g == "yes") for g in golds[:6]] + [0.0] * 4
    stats = answer_statistics(task, examples, given, rewards)
    assert stats["right_format"] == 0.6 and stats["answers"] == {"yes": 6, "(none)": 4}
    best = max(("no", "yes"), key=lambda a: (golds.count(a), a))
    assert stats["constant_baseline"] == {"answer": best, "accuracy": golds.count(best) / 10}
    assert stats["accuracy_right_format"] == pytest.approx(sum(rewards) / 6)
    assert answer_statistics(get_task("countdown"), load_examples("countdown", "synthetic", "test", 3, seed=1),
                             [None] * 3, [0.0] * 3)["constant_baseline"] is None
