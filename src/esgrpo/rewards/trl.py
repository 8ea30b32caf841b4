"""esgrpo's four rewards as TRL reward functions, so a TRL user can train on our tasks without our trainers.

TRL's `GRPOTrainer(reward_funcs=[...])` calls each function as `f(prompts=..., completions=..., **columns)`
with one list per dataset column and expects one float per completion. A completion is a string, or for
conversational datasets a list of messages whose last assistant message holds the answer. The dataset
columns each function needs (what `esgrpo tasks export` writes):

    countdown   nums (list of ints), target (int)
    math        answer (the reference answer, a string)
    chemistry   answer (the letter A-D)
    boolq       answer (a bool, or yes/no / true/false / 1/0)

    from trl import GRPOConfig, GRPOTrainer
    from esgrpo.rewards.trl import boolq
    trainer = GRPOTrainer(model=..., reward_funcs=[boolq], train_dataset=load_dataset("json", data_files=...))

Like the rewards themselves, these never raise: a malformed completion or column scores 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esgrpo.rewards.boolq import boolq_reward
from esgrpo.rewards.countdown import countdown_reward
from esgrpo.rewards.math import math_reward
from esgrpo.rewards.mcq import mcq_reward

__all__ = ["REWARDS", "boolq", "chemistry", "completion_text", "countdown", "math"]


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: the string itself, or the content of the last message of a
    conversational completion (a list of {"role", "content"} dicts); "" for anything else."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        last = completion[-1]
        if isinstance(last, dict) and isinstance(last.get("content"), str):
            return last["content"]
    return ""


def _column(values: Any, n: int) -> list[Any]:
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != n:
        return [None] * n  # a missing or malformed column: every completion scores 0
    return list(values)


def countdown(prompts: Sequence[Any], completions: Sequence[Any], nums: Sequence[Any] = (),
              target: Sequence[Any] = (), **columns: Any) -> list[float]:
    """1.0 where the last \\boxed{expr} uses each of `nums` once and equals `target`."""
    n = len(completions)
    return [countdown_reward(completion_text(c), ns, t) if ns is not None and t is not None else 0.0
            for c, ns, t in zip(completions, _column(nums, n), _column(target, n), strict=True)]


def math(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any] = (),
         **columns: Any) -> list[float]:
    """1.0 where the last \\boxed{...} matches `answer` (normalized string or exact number)."""
    n = len(completions)
    return [math_reward(completion_text(c), str(a)) if a is not None else 0.0
            for c, a in zip(completions, _column(answer, n), strict=True)]


def chemistry(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any] = (),
              **columns: Any) -> list[float]:
    """1.0 where the chosen letter ("answer": "C", answer: C, or the last standalone A-D) is `answer`."""
    n = len(completions)
    return [mcq_reward(completion_text(c), str(a)) if a is not None else 0.0
            for c, a in zip(completions, _column(answer, n), strict=True)]


def boolq(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any] = (),
          **columns: Any) -> list[float]:
    """1.0 where the last \\boxed{yes|no} equals `answer`."""
    n = len(completions)
    return [boolq_reward(completion_text(c), a) for c, a in zip(completions, _column(answer, n),
                                                                strict=True)]


REWARDS = {"countdown": countdown, "math": math, "chemistry": chemistry, "boolq": boolq}
