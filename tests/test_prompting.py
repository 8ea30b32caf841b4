"""Prompts for real chat models: format line, balanced worked examples, assistant prefill, stop rule."""

from __future__ import annotations

from esgrpo.config import DataConfig, ModelConfig, PromptConfig
from esgrpo.models import load_policy
from esgrpo.tasks import get_task, load_examples
from esgrpo.tasks.prompting import PromptedTask, balanced_shots, make_task

DATA = DataConfig(n_train=40)


def test_default_prompts_are_the_tasks_own():
    task = make_task("boolq", PromptConfig(), DATA)
    ex = load_examples("boolq", "synthetic", "test", 1, seed=1)[0]
    assert not isinstance(task, PromptedTask) and task.messages(ex) == get_task("boolq").messages(ex)


def test_format_line_and_balanced_worked_examples():
    task = make_task("boolq", PromptConfig(format_line=True, shots=4), DATA)
    ex = load_examples("boolq", "synthetic", "test", 1, seed=1)[0]
    msgs = task.messages(ex)
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 4 + ["user"]
    assert msgs[-1]["content"] == ex.question + "\n" + get_task("boolq").format_line
    answers = [m["content"] for m in msgs if m["role"] == "assistant"]
    assert sum("\\boxed{yes}" in a for a in answers) == 2 and sum("\\boxed{no}" in a for a in answers) == 2
    train_questions = {e.question for e in load_examples("boolq", "synthetic", "train", 40, seed=DATA.seed)}
    assert all(m["content"].split("\n" + get_task("boolq").format_line)[0] in train_questions
               for m in msgs[1:-1] if m["role"] == "user")  # worked examples come from the training split


def test_balanced_shots_cycle_the_answer_letters():
    task = get_task("chemistry")
    pool = load_examples("chemistry", "synthetic", "train", 60, seed=1)
    shots = balanced_shots(task, pool, 8, seed=0)
    assert sorted(task.gold(s) for s in shots) == ["A", "A", "B", "B", "C", "C", "D", "D"]


def test_prefill_reaches_the_prompt_and_the_reward():
    policy = load_policy(ModelConfig())
    plain = make_task("math", PromptConfig(), DATA)
    pre = make_task("math", PromptConfig(prefill="So the answer is"), DATA)
    ex = load_examples("math", "synthetic", "test", 1, seed=1)[0]
    ids_plain, ids_pre = plain.prompt_ids(policy, [ex])[0], pre.prompt_ids(policy, [ex])[0]
    assert ids_pre[:len(ids_plain)] == ids_plain and len(ids_pre) > len(ids_plain)
    answer = f" \\boxed{{{ex.target['answer']}}}"
    assert pre.reward(answer, ex) == 1.0 and pre.answer(answer) is not None


def test_stop_rule_ends_responses_right_after_the_answer():
    policy = load_policy(ModelConfig())
    examples = load_examples("boolq", "synthetic", "test", 16, seed=1)
    stop = make_task("boolq", PromptConfig(stop=True), DATA)
    plain = make_task("boolq", PromptConfig(), DATA)
    a = policy.generate(plain.prompt_ids(policy, examples), max_new_tokens=32)
    b = policy.generate(stop.prompt_ids(policy, examples), max_new_tokens=32, stop=stop.stop)
    for full, cut, done in zip(a.texts, b.texts, b.finished, strict=True):
        assert full.startswith(cut)  # the same response, ended earlier
        if "\\boxed{" in full and full.rstrip().endswith("}"):
            assert cut.rstrip().endswith("}") and done
    assert any(len(x) < len(y) for x, y in zip(b.response_ids, a.response_ids, strict=True)) or \
        all(t.rstrip().endswith("}") for t in a.texts)
