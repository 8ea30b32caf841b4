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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from esgrpo.errors import ConfigError, EsgrpoError, brief, clip

Split = Literal["train", "test", "pretrain"]
# Kinds of demonstration in the tiny model's corpus: right; a random wrong answer; the task's systematic
# mistake (a wrong answer by a fixed rule of the question, the same on every instance, so a model can learn to
# make it and sampling can still find the right one); right but in a format the reward rejects.
DemoKind = Literal["correct", "wrong", "mistake", "slip"]


@dataclass(frozen=True)
class Example:
    """One task instance. `target` holds everything the reward needs (JSON-serializable)."""

    uid: str
    question: str
    target: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Level:
    """One difficulty level of a built-in task's synthetic generator; each task extends it with its settings.

    `what`: what changes against level 1, one line (README: Tasks). `capacity`: about how many distinct
    instances each split holds (measured once, scripts/difficulty_levels.py --capacity); a larger n is refused
    before drawing."""

    what: str
    capacity: Mapping[str, int]


def collect_level(task: str, split: str, n: int, seed: int, level: int, levels: Mapping[int, Any],
                  draw: Callable[[random.Random, Any], tuple[str, str, dict[str, Any]]]) -> list[Example]:
    """`n` distinct synthetic examples of `task` at a difficulty level: `draw(rng, levels[level])` gives
    (canonical key, question, target).

    Level 1 is exactly the original collection (the same instances, uids and order for every seed: the tiny
    model was pretrained on its pretrain split). Higher levels keep the split hash of the task's name, so an
    instance lands in the same split at every level (a level-2 test instance is never in any pretrain
    split), and mark the level in the uid (`countdown-L2-...`) and the target (`difficulty`)."""
    from esgrpo.tasks.hub import collect_synthetic  # hub imports this module

    spec = levels.get(level) if isinstance(level, int) and not isinstance(level, bool) else None
    if spec is None:
        raise ConfigError(f"task {task!r} has difficulty levels {', '.join(map(str, levels))}; got {brief(level)} "
                          "(data.difficulty)")

    def draw_at_level(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        return draw(rng, spec)

    if level == 1:
        return collect_synthetic(task, split, n, seed, draw_at_level, spec.capacity)
    if isinstance(n, int) and split in spec.capacity and n > spec.capacity[split]:
        raise ConfigError(f"synthetic {task} at difficulty level {level} has about {spec.capacity[split]:,} distinct "
                          f"{split} instances; {n:,} were asked for: use n <= {spec.capacity[split]:,}")
    try:
        found = collect_synthetic(task, split, n, seed, draw_at_level)
    except ConfigError as e:  # a pool that ran dry: say at which level
        raise ConfigError(f"{e} (difficulty level {level})") from None
    prefix = f"{task}-"
    return [Example(uid=f"{prefix}L{level}-{ex.uid.removeprefix(prefix)}", question=ex.question,
                    target={**ex.target, "difficulty": level}) for ex in found]


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
    # Built-in tasks: difficulty level -> the synthetic generator's settings at that level (data.difficulty).
    levels: ClassVar[Mapping[int, Level]] = {}
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

    def synthetic(self, split: Split, n: int, seed: int, level: int = 1) -> list[Example]:
        """`n` seeded synthetic examples at a difficulty level (one of `levels`); the splits are disjoint."""
        raise NotImplementedError(f"task {self.name!r} has no synthetic examples")

    def from_hub(self, split: Literal["train", "test"], n: int | None, path: str | None) -> list[Example]:
        """The paper's dataset (hub id, or a local file/dir in the same schema when `path` is set)."""
        raise NotImplementedError(f"task {self.name!r} has no hub dataset")

    def demonstration(self, example: Example, rng: random.Random, kind: DemoKind) -> str:
        """A response for the tiny model's pretraining corpus: correct, wrong answer, the task's systematic mistake,
        or format slip (DemoKind)."""
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
