"""The task abstraction: examples, prompts and a binary reward.

A task knows how to produce examples (seeded synthetic or from the hub), how to turn an example
into chat messages (system prompt + user question), and how to score a model response with the
paper's binary correctness reward.

Model output is untrusted: every response is scored through `score_responses`, the one scoring
path of the ES scorer, GRPO and evaluation. A reward that raises or returns something other than
a finite number scores 0 there and is counted (`reward_errors` in the metrics), never fatal.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["train", "test", "pretrain"]
DemoKind = Literal["correct", "wrong", "slip"]


@dataclass(frozen=True)
class Example:
    """One task instance. `target` holds everything the reward needs (JSON-serializable)."""

    uid: str
    question: str
    target: dict[str, Any] = field(hash=False)


class Task(ABC):
    """A verifiable-reward task. Subclasses set `name` and `system_prompt` and implement the rest."""

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

    @abstractmethod
    def synthetic(self, split: Split, n: int, seed: int) -> list[Example]:
        """`n` seeded synthetic examples; the splits are disjoint."""

    @abstractmethod
    def from_hub(self, split: Literal["train", "test"], n: int | None, path: str | None) -> list[Example]:
        """The paper's dataset (hub id, or a local file/dir in the same schema when `path` is set)."""

    @abstractmethod
    def demonstration(self, example: Example, rng: random.Random, kind: DemoKind) -> str:
        """A response for the tiny model's pretraining corpus: correct, wrong answer, or format slip."""


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
    value that is not a finite number, scores 0.0 and is counted in `errors`.
    """
    if len(texts) != len(examples):
        raise ValueError(f"{len(texts)} responses for {len(examples)} examples")
    rewards, errors = [], 0
    for text, ex in zip(texts, examples, strict=True):
        try:
            r = float(task.reward(text, ex))
            ok = math.isfinite(r)
        except Exception:
            r, ok = 0.0, False
        rewards.append(r if ok else 0.0)
        errors += not ok
    return Scores(rewards, errors)
