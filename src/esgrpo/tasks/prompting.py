"""Prompts for real chat models: an explicit format line, worked examples, an assistant prefill, a stop rule.

The tiny model was pretrained on the tasks' plain prompts (system prompt + question) and uses them as they
are. A real chat model, asked the same way, tends to answer in prose without the required format; the
`prompt` config section changes how each example becomes chat messages, for training, evaluation and the
analyses alike (`make_task`):

    [system: the task's system prompt]
    [user: a worked example's question (+ format line)]    x prompt.shots, labels / answer letters balanced
    [assistant: its worked answer]
    [user: the question (+ the task's format line when prompt.format_line)]
    [assistant: prompt.prefill ...]                         the model continues the prefill

The reward, the answer statistics and the stop rule read prefill + response. With prompt.stop a response
ends as soon as its answer is complete (the closing brace of \\boxed{...}, the answer field), which keeps
a chat model from writing on after its answer.
"""

from __future__ import annotations

import functools
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from esgrpo.config import DataConfig, PromptConfig
from esgrpo.tasks.base import Example, Task


class PromptedTask(Task):
    """A task seen through a PromptConfig (see the module docstring); delegates everything else."""

    def __init__(self, task: Task, cfg: PromptConfig, shots: list[Example]) -> None:
        self.task, self.cfg, self.shots = task, cfg, shots
        self.name, self.system_prompt, self.builtin = task.name, task.system_prompt, task.builtin
        self.format_line = task.format_line

    def _question(self, ex: Example) -> str:
        line = self.task.format_line if self.cfg.format_line else ""
        return f"{ex.question}\n{line}" if line else ex.question

    def messages(self, example: Example) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}]
        for shot in self.shots:
            msgs += [{"role": "user", "content": self._question(shot)},
                     {"role": "assistant", "content": self.task.worked_answer(shot)}]
        return msgs + [{"role": "user", "content": self._question(example)}]

    def prompt_ids(self, policy: Any, examples: Sequence[Example]) -> list[list[int]]:
        ids = Task.prompt_ids(self, policy, examples)  # this task's messages (shots, format line) templated
        if not self.cfg.prefill:
            return ids
        prefill = policy.tokenizer.encode(self.cfg.prefill, add_special_tokens=False)
        return [row + list(prefill) for row in ids]

    @property
    def stop(self) -> Callable[[str], bool] | None:
        if not self.cfg.stop:
            return None
        prefill = self.cfg.prefill
        return lambda text: self.task.answer_complete(prefill + text)

    def reward(self, text: str, example: Example) -> float:
        return self.task.reward(self.cfg.prefill + text, example)

    def answer(self, text: str) -> str | None:
        return self.task.answer(self.cfg.prefill + text)

    def gold(self, example: Example) -> str | None:
        return self.task.gold(example)

    def worked_answer(self, example: Example) -> str:
        return self.task.worked_answer(example)

    def answer_complete(self, text: str) -> bool:
        return self.task.answer_complete(text)

    def examples(self, split: Any, n: int, seed: int) -> list[Example]:
        return self.task.examples(split, n, seed)


def balanced_shots(task: Task, pool: list[Example], k: int, seed: int) -> list[Example]:
    """k examples from `pool` whose reference answers take turns (yes/no, A/B/C/D), so a model is not taught
    to copy one label; tasks without labels get a seeded random choice."""
    rng = random.Random(seed)
    order = list(pool)
    rng.shuffle(order)
    by_label: dict[Any, list[Example]] = defaultdict(list)
    for ex in order:
        by_label[task.gold(ex)].append(ex)
    labels = sorted(by_label, key=str)
    if len(labels) < 2 or None in by_label:
        return order[:k]
    rng.shuffle(labels)
    out = []
    while len(out) < k and any(by_label.values()):
        for label in labels:
            if by_label[label] and len(out) < k:
                out.append(by_label[label].pop())
    return out


def make_task(name: str, prompt: PromptConfig | None = None, data: DataConfig | None = None) -> Task:
    """The task `name` as prompted by `prompt` (plain when None or all defaults); shots come from `data`'s
    training split."""
    if prompt is None or prompt == PromptConfig():
        from esgrpo.tasks import get_task

        return get_task(name)
    return _prompted(name, json.dumps(prompt.__dict__, sort_keys=True), json.dumps(
        None if data is None else data.__dict__, sort_keys=True, default=str))


@functools.lru_cache(maxsize=64)
def _prompted(name: str, prompt_json: str, data_json: str) -> PromptedTask:
    from esgrpo.tasks import get_task, task_examples

    prompt = PromptConfig(**json.loads(prompt_json))
    task = get_task(name)
    shots: list[Example] = []
    if prompt.shots:
        data = DataConfig(**json.loads(data_json)) if data_json != "null" else DataConfig()
        pool = task_examples(data, name, "train", data.n_train)
        shots = balanced_shots(task, pool, prompt.shots, prompt.seed)
    return PromptedTask(task, prompt, shots)
