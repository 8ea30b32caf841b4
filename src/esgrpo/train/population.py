"""Population evaluation: the fitness of every ES member on one batch, behind a small interface.

    evaluator.evaluate(members, batch) -> PopulationResult(fitness=[F_1..F_M], rollouts, tokens, ...)

The trainer only sees this interface, so a faster backend (members batched into one forward pass,
several processes or GPUs, Ray) can replace `SequentialEvaluator` without touching es.py. What a
backend must guarantee:

- the fitness of member (seed, sign) is the mean reward of the model with weights
  theta + sign * sigma * eps(seed) (noise.py) over `batch`, and the weights are theta afterwards
  (es.numerics published alone lets them drift, as the public code does: train/published.py);
- common random numbers: every member decodes the same prompts with the same per-prompt sampling
  seeds (`batch.sample_seeds`), so fitness differences come from the weights, not from the dice.

`Batch` and `TaskScorer` are plain data (picklable), so they can be shipped to remote workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from esgrpo.memory import sync
from esgrpo.models.policy import Policy
from esgrpo.tasks.base import Example, Task, score_responses
from esgrpo.train.noise import Perturbation

Member = tuple[int, int]  # (noise seed, sign +1/-1); the perturbation is sign * sigma * eps(seed)

PHASES = ("perturb", "generate", "reward", "restore")


@dataclass
class Batch:
    """The prompts of one iteration, shared by all members (common random numbers)."""

    iteration: int
    indices: list[int]  # positions in the training set
    examples: list[Example]
    prompt_ids: list[list[int]]
    sample_seeds: list[int] | None  # one sampling seed per prompt; None for greedy decoding


@dataclass
class Score:
    """What scoring one (perturbed) model on a batch produced."""

    reward: float  # mean reward over the batch: the member's fitness
    rollouts: int
    tokens: int
    reward_errors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # "generate", "reward"


ScoreFn = Callable[[Policy, Batch], Score]


@dataclass
class PopulationResult:
    """Fitness per member (in the order given) and the cost of computing it."""

    fitness: list[float]
    rollouts: int = 0
    tokens: int = 0
    reward_errors: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    extra: dict[str, float] = field(default_factory=dict)  # backend counters logged with the iteration


class PopulationEvaluator(Protocol):
    """Scores members; leaves the policy's weights exactly as it found them."""

    def evaluate(self, members: list[Member], batch: Batch) -> PopulationResult: ...


def es_scorer(task: Task, cfg: Any) -> TaskScorer:
    """The scorer of an ES run (cfg: ESConfig): greedy, or sampling at the configured temperature and top_p."""
    sample = cfg.decoding == "sample"
    return TaskScorer(task, cfg.max_new_tokens, temperature=cfg.temperature if sample else 0.0,
                      top_p=cfg.top_p if sample else 1.0, gen_batch_size=cfg.gen_batch_size,
                      shared_prefix=cfg.shared_prefix)


@dataclass
class TaskScorer:
    """score(policy, batch): decode the batch and average the task's binary reward."""

    task: Task
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    gen_batch_size: int | None = None
    shared_prefix: bool = False  # the prompts' common prefix computed once (ESConfig.shared_prefix)

    def __call__(self, policy: Policy, batch: Batch) -> Score:
        t0 = time.perf_counter()
        out = policy.generate(batch.prompt_ids, max_new_tokens=self.max_new_tokens,
                              temperature=self.temperature, top_p=self.top_p, seeds=batch.sample_seeds,
                              batch_size=self.gen_batch_size, stop=self.task.stop,
                              shared_prefix=self.shared_prefix)
        t1 = time.perf_counter()
        scores = score_responses(self.task, out.texts, batch.examples)
        t2 = time.perf_counter()
        return Score(reward=sum(scores.rewards) / len(scores.rewards) if scores.rewards else 0.0,
                     rollouts=len(scores.rewards), tokens=out.n_tokens, reward_errors=scores.errors,
                     seconds={"generate": t1 - t0, "reward": t2 - t1})


def make_perturbation(params: list, numerics: str = "exact", rank: int = 0, other: str = "full") -> Perturbation:
    """The perturb / restore mechanism of a run: full-rank (noise.py), low-rank (es.rank, train/lowrank.py), or the
    public code's in-place arithmetic (es.numerics published, train/published.py)."""
    if numerics == "published":
        from esgrpo.train.published import PublishedPerturbation

        return PublishedPerturbation(params)
    if rank:
        from esgrpo.train.lowrank import LowRankPerturbation

        return LowRankPerturbation(params, rank, other)
    return Perturbation(params)


class SequentialEvaluator:
    """One member at a time on one device: perturb in place, score, restore (bit-exact)."""

    def __init__(self, policy: Policy, score_fn: ScoreFn, sigma: float, numerics: str = "exact", rank: int = 0,
                 other: str = "full") -> None:
        self.policy = policy
        self.score_fn = score_fn
        self.sigma = sigma
        self.numerics = numerics
        self.perturbation = make_perturbation(policy.named_parameters(), numerics, rank, other)

    def evaluate(self, members: list[Member], batch: Batch) -> PopulationResult:
        # The weights may have changed since the last call (update, resume): re-take the copy.
        self.perturbation.snapshot()
        device = self.policy.device
        res = PopulationResult(fitness=[])
        start = ([p.detach().clone() for _, p in self.perturbation.params] if self.numerics == "published"
                 else None)  # published: measure what the restores by subtraction leave behind
        engine = self.policy.engine
        pushed = (engine.stats.pushes, engine.stats.push_seconds) if engine is not None else None
        for seed, sign in members:
            t0 = time.perf_counter()
            self.perturbation.perturb(seed, sign, self.sigma)
            sync(device)
            res.seconds["perturb"] += time.perf_counter() - t0
            try:
                score = self.score_fn(self.policy, batch)
            finally:  # never leave the model perturbed, even if scoring fails
                t1 = time.perf_counter()
                self.perturbation.restore()
                sync(device)
                res.seconds["restore"] += time.perf_counter() - t1
            res.fitness.append(score.reward)
            res.rollouts += score.rollouts
            res.tokens += score.tokens
            res.reward_errors += score.reward_errors
            for k, v in score.seconds.items():
                res.seconds[k] = res.seconds.get(k, 0.0) + v
        if pushed is not None:  # each member's weights sent to the generation engine (part of "generate")
            res.extra["engine_pushes"] = engine.stats.pushes - pushed[0]
            res.extra["t_sync"] = engine.stats.push_seconds - pushed[1]
        if start is not None:
            from esgrpo.train.published import drift

            res.extra.update(drift(self.perturbation.params, start))
        return res
