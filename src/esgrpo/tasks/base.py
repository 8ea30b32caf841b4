"""The task abstraction: examples, prompts and a binary reward.

A task knows how to produce examples (seeded synthetic or from the hub), how to turn an example
into chat messages (system prompt + user question), and how to score a model response with the
paper's binary correctness reward. Rewards are pure functions of (text, example) that never raise.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
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
        """1.0 if `text` answers `example` correctly in the required format, else 0.0. Never raises."""

    @abstractmethod
    def synthetic(self, split: Split, n: int, seed: int) -> list[Example]:
        """`n` seeded synthetic examples; the splits are disjoint."""

    @abstractmethod
    def from_hub(self, split: Literal["train", "test"], n: int | None, path: str | None) -> list[Example]:
        """The paper's dataset (hub id, or a local file/dir in the same schema when `path` is set)."""

    @abstractmethod
    def demonstration(self, example: Example, rng: random.Random, kind: DemoKind) -> str:
        """A response for the tiny model's pretraining corpus: correct, wrong answer, or format slip."""
