"""Honest budget accounting shared by both trainers.

A rollout is one sampled (or greedily decoded) response: the paper's "forward pass". ES spends
N x batch rollouts per iteration; GRPO spends prompts x K per step. Tokens are generated tokens.
Seconds are wall time of the training loop (evaluation excluded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Budget:
    """Running totals; `stop()` says whether the configured limit is reached."""

    max_steps: int = 0  # 0 = no limit on steps/iterations
    max_rollouts: int = 0  # 0 = no limit on rollouts
    steps: int = 0
    rollouts: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def spend(self, rollouts: int, tokens: int, seconds: float) -> None:
        self.steps += 1
        self.rollouts += rollouts
        self.tokens += tokens
        self.seconds += seconds

    def stop(self, next_step_rollouts: int = 0) -> bool:
        """True when the next step would exceed a limit (a step is never split)."""
        if self.max_steps and self.steps >= self.max_steps:
            return True
        return bool(self.max_rollouts and self.rollouts + next_step_rollouts > self.max_rollouts)

    def planned_steps(self, rollouts_per_step: int) -> int:
        """How many steps this budget allows (for progress/ETA)."""
        bounds = [b for b in (self.max_steps,
                              self.max_rollouts // rollouts_per_step if self.max_rollouts else 0) if b]
        if not bounds:
            raise ValueError("a budget needs max_steps or max_rollouts")
        return min(bounds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Budget:
        return cls(**d)
