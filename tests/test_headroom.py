"""The headroom measurement (analysis/headroom.py, scripts/headroom.py) on the shipped tiny model, by hand."""

from __future__ import annotations

import pytest

from esgrpo.analysis.headroom import headroom
from esgrpo.config import ModelConfig
from esgrpo.models import load_policy
from esgrpo.tasks import get_task, load_examples
from esgrpo.tasks.base import score_responses


@pytest.fixture(scope="module")
def tiny():
    return load_policy(ModelConfig(name="tiny", threads=1))


@pytest.mark.parametrize("name", ["countdown", "boolq"])
def test_headroom_equals_greedy_and_samples_scored_by_hand(tiny, name):
    task, k = get_task(name), 3
    examples = load_examples(name, "synthetic", "test", 12, seed=1234)
    got = headroom(tiny, task, examples, k, max_new_tokens=32, temperature=1.0, top_p=0.95,
                   greedy_max_new_tokens=48)
    prompts = task.prompt_ids(tiny, examples)
    greedy = tiny.generate(prompts, max_new_tokens=48, stop=task.stop)
    right = score_responses(task, greedy.texts, examples).rewards
    samples = [score_responses(task, tiny.generate(prompts, max_new_tokens=32, temperature=1.0, top_p=0.95,
                                                   seeds=[1000 * j + i for i in range(12)], stop=task.stop).texts,
                               examples).rewards for j in range(k)]
    everything = got["all"]
    assert everything.n == 12
    assert everything.greedy == pytest.approx(sum(right) / 12)
    assert everything.right_format == pytest.approx(sum(task.answer(t) is not None for t in greedy.texts) / 12)
    assert everything.sampled == pytest.approx(sum(map(sum, samples)) / (12 * k))
    assert everything.pass_at_k == pytest.approx(sum(max(s[i] for s in samples) for i in range(12)) / 12)
    assert everything.pass_at_k >= everything.sampled
    if name == "countdown":  # the kinds split "all"
        assert got["3 numbers"].n + got["4 numbers"].n == 12
        assert got["target = sum of the numbers"].n + got["target != sum"].n == 12
    else:
        assert list(got) == ["all"]
