"""The task abstraction: examples, prompts and a binary reward.

A task knows how to produce examples (seeded synthetic or from the hub), how to turn an example
into chat messages (system prompt + user question), and how to score a model response with the
paper's binary correctness reward.

Model output is untrusted: every response is scored through `score_responses`, the one scoring
path of the ES scorer, GRPO and evaluation. A reward that raises or returns something other than
a finite number scores 0 there and is counted (`reward_errors` in the metrics and results). When more
than half of the rewards of one batch fail, the reward is broken rather than the response: the run
stops with a RewardError naming the task, the count and the first failure (an accuracy of 0 would
otherwise be reported as if measured).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from esgrpo.errors import EsgrpoError, brief, clip

Split = Literal["train", "test", "pretrain"]
DemoKind = Literal["correct", "wrong", "slip"]


@dataclass(frozen=True)
class Example:
    """One task instance. `target` holds everything the reward needs (JSON-serializable)."""

    uid: str
    question: str
    target: dict[str, Any] = field(hash=False)


class Task(ABC):
    """A verifiable-reward task: examples, the chat messages of an example, and a reward.

    To bring your own task, subclass it (or `JsonlTask` for data in JSONL files), set `name` and
    `system_prompt`, implement `reward` and `examples`, and name it as `package.module:ClassName` wherever a
    task name goes (`--task`, `data.tasks`, `sequential.order`); both trainers, evaluation, the analyses and
    the study then use it like a built-in task. `answer` and `gold` (optional) give the right-format rate
    and the constant-answer baseline; `demonstration` is only needed to build the tiny model's corpus.
    """

    name: str
    system_prompt: str

    def messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages for the model's chat template."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": example.question},
        ]

    @abstractmethod
    def reward(self, text: str, example: Example) -> float:
        """1.0 if `text` answers `example` correctly in the required format, else 0.0.

        Call it through `score_responses`, which maps a failure (an exception, a non-number) to 0 and
        counts it; the built-in tasks call their reward functions unchecked so failures are seen."""

    def answer(self, text: str) -> str | None:
        """The answer a response gives, in canonical form, or None when it gives none in the required format
        (for the right-format rate and the answer distribution beside every accuracy)."""
        return None

    def gold(self, example: Example) -> str | None:
        """The example's reference answer in the same canonical form (None: no constant-answer baseline)."""
        return None

    builtin = False  # the four tasks of the study load data by `data.source`; other tasks by `examples`
    format_line = ""  # an explicit answer-format instruction (prompt.format_line appends it to every question)

    def prompt_ids(self, policy: Any, examples: Sequence[Example]) -> list[list[int]]:
        """Token ids of the examples' prompts through the policy's chat template (with the generation prompt)."""
        return policy.encode([self.messages(ex) for ex in examples])

    @property
    def stop(self) -> Any:
        """A rule `done(response_text) -> bool` that ends a response early, or None (end at end-of-text)."""
        return None

    def worked_answer(self, example: Example) -> str:
        """A correct response to `example` in the required format (a worked example in k-shot prompts)."""
        return self.demonstration(example, random.Random(0), "correct")

    def answer_complete(self, text: str) -> bool:
        """Whether `text` already holds a complete answer in the required format (prompt.stop ends it there)."""
        return self.answer(text) is not None

    def examples(self, split: Literal["train", "test"], n: int, seed: int) -> list[Example]:
        """The first `n` examples of a split (a task of your own implements this; train and test disjoint)."""
        raise NotImplementedError(f"task {self.name!r} does not implement examples(split, n, seed)")

    def synthetic(self, split: Split, n: int, seed: int) -> list[Example]:
        """`n` seeded synthetic examples; the splits are disjoint."""
        raise NotImplementedError(f"task {self.name!r} has no synthetic examples")

    def from_hub(self, split: Literal["train", "test"], n: int | None, path: str | None) -> list[Example]:
        """The paper's dataset (hub id, or a local file/dir in the same schema when `path` is set)."""
        raise NotImplementedError(f"task {self.name!r} has no hub dataset")

    def demonstration(self, example: Example, rng: random.Random, kind: DemoKind) -> str:
        """A response for the tiny model's pretraining corpus: correct, wrong answer, or format slip."""
        raise NotImplementedError(f"task {self.name!r} has no demonstrations (only needed to build the tiny model)")


# More than this share of one batch's rewards failing stops the run (README: "When a reward fails").
REWARD_FAILURE_LIMIT = 0.5


class RewardError(EsgrpoError):
    """A task's reward failed for most responses of a batch: the reward, not the model, is at fault."""


@dataclass
class Scores:
    """Rewards of a batch of responses, and how many of them failed (scored 0)."""

    rewards: list[float]
    errors: int = 0

    @property
    def mean(self) -> float:
        return math.fsum(self.rewards) / len(self.rewards) if self.rewards else 0.0


def score_responses(task: Task, texts: Sequence[str], examples: Sequence[Example]) -> Scores:
    """The task's reward for each (response, example): the one reward-failure policy of esgrpo.

    A reward that raises (any Exception, including RecursionError and MemoryError), or returns a
    value that is not a finite number, scores 0.0 and is counted in `errors`; more than
    REWARD_FAILURE_LIMIT of the batch failing raises RewardError.
    """
    if len(texts) != len(examples):
        raise ValueError(f"{len(texts)} responses for {len(examples)} examples")
    rewards: list[float] = []
    failures: list[str] = []  # why each failed reward failed, with its example
    for text, ex in zip(texts, examples, strict=True):
        try:
            value = task.reward(text, ex)
        except Exception as e:
            rewards.append(0.0)
            failures.append(f"raised {type(e).__name__}: {clip(str(e))} on {brief(ex.uid)}")
            continue
        r = _as_number(value)
        rewards.append(r if r is not None else 0.0)
        if r is None:
            failures.append(f"returned {brief(value)} on {brief(ex.uid)}")
    if len(failures) > REWARD_FAILURE_LIMIT * len(rewards):
        raise RewardError(f"task {task.name!r}: the reward failed for {len(failures)} of the {len(rewards)} responses "
                          f"of a batch (first: {failures[0]}); a run stops when more than half of a batch fails, "
                          "since its accuracy would measure the reward, not the model")
    return Scores(rewards, len(failures))


def _as_number(value: Any) -> float | None:
    """A reward's value as a finite float, or None (None, NaN, a string, an object that cannot convert)."""
    try:
        r = float(value)
    except Exception:
        return None
    return r if math.isfinite(r) else None
