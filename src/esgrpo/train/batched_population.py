"""The low-rank ES population in one batched decode (EGGROLL's batched forward, arXiv 2511.16652).

    evaluator.evaluate(members, batch) -> PopulationResult   (train/population.py's interface)

One call, step by step:
    1. ask: each member's rank-r factors for every weight matrix (train/lowrank.py; r (m + n) numbers per matrix
       and member) and, with es.lowrank_other full, its perturbed copy of every norm weight;
    2. rows: every member x every prompt of the batch, member-major; each prompt keeps its sampling seed in every
       member's rows (common random numbers);
    3. decode all rows with models/lean_llama.LowRankStepper, `rows_per_batch` rows at a time: every matrix
       product with the shared weights runs once for all rows, each row adds its member's c (x B) A^T; the
       weights are never written, so there is nothing to restore;
    4. the task's reward per row, and each member's fitness = the mean over its rows.

Equal to the sequential evaluator with A B^T materialized into the weights up to float rounding (the low-rank
term is added to the product instead of to the weights before it): greedy tokens agree on nearly every row, and
the fitness is equal wherever they do (tests/test_es_variants.py measures both). Llama models on the lean path,
without biases, on the native engine; `batched_supported` says why not otherwise (es.py then falls back to the
sequential evaluator).
"""

from __future__ import annotations

import math
import time

import torch

from esgrpo.memory import sync
from esgrpo.models.lean_llama import LowRankStepper, supports
from esgrpo.models.policy import Policy
from esgrpo.rollout import generate
from esgrpo.tasks.base import score_responses
from esgrpo.train.lowrank import factors, is_lowrank
from esgrpo.train.noise import tensor_noise
from esgrpo.train.population import Batch, Member, PopulationResult, TaskScorer

Factors = tuple[torch.Tensor, torch.Tensor]  # (A (M, out, r), B (M, in, r)) of one matrix, all members


def batched_supported(policy: Policy) -> str | None:
    """None if the batched evaluator can score this policy's population, else why not."""
    if policy.engine is not None:
        return "generation.engine is not native"
    if not supports(policy.model):
        return f"{type(policy.model).__name__} has no lean decoding step"
    if any(p.dim() == 1 and n.endswith(".bias") for n, p in policy.named_parameters()):
        return "the model has biases"
    return None


class BatchedLowRankEvaluator:
    """All members' rows in one decode; see the module docstring."""

    def __init__(self, policy: Policy, scorer: TaskScorer, sigma: float, rank: int, other: str = "full",
                 rows_per_batch: int = 256) -> None:
        why = batched_supported(policy)
        if why is not None:
            raise ValueError(f"the batched low-rank evaluator cannot score this model: {why}")
        self.policy, self.scorer, self.sigma, self.rank, self.other = policy, scorer, sigma, rank, other
        self.rows_per_batch = rows_per_batch

    @torch.no_grad()
    def _ask(self, members: list[Member]) -> tuple[dict[int, Factors], dict[int, torch.Tensor]]:
        """1. Per matrix: (A (M, out, r), B (M, in, r)); per norm weight (full): the members' perturbed copies."""
        device = self.policy.device
        mats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        norms: dict[int, torch.Tensor] = {}
        for name, p in self.policy.named_parameters():
            if is_lowrank(p):
                pairs = [factors(seed, name, p.shape, self.rank, device) for seed, _ in members]
                mats[id(p)] = (torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs]))
            elif self.other == "full":  # as Perturbation: backup + sign sigma eps in float32, rounded once
                norms[id(p)] = torch.stack([
                    (p.to(torch.float32) + float(sign) * self.sigma * tensor_noise(seed, name, p.shape, device))
                    .to(p.dtype) for seed, sign in members])
        return mats, norms

    def evaluate(self, members: list[Member], batch: Batch) -> PopulationResult:
        res = PopulationResult(fitness=[])
        texts, tokens = self.decode(members, batch, res.seconds)

        # 4. Rewards per row, fitness per member.
        t0 = time.perf_counter()
        P = len(batch.prompt_ids)
        scores = score_responses(self.scorer.task, texts, [ex for _ in members for ex in batch.examples])
        res.fitness = [sum(scores.rewards[m * P:(m + 1) * P]) / P for m in range(len(members))]
        res.rollouts, res.tokens, res.reward_errors = len(texts), sum(len(t) for t in tokens), scores.errors
        res.seconds["reward"] = time.perf_counter() - t0
        return res

    def decode(self, members: list[Member], batch: Batch,
               seconds: dict[str, float] | None = None) -> tuple[list[str], list[list[int]]]:
        """Steps 1-3: every member's response to every prompt, member-major (texts, token ids)."""
        seconds = seconds if seconds is not None else {}
        t0 = time.perf_counter()
        mats, norms = self._ask(members)
        device = self.policy.device
        scale = self.sigma / math.sqrt(self.rank)
        sync(device)
        seconds["perturb"] = time.perf_counter() - t0

        # 2. Rows: member-major, every member on every prompt with the prompt's own sampling seed.
        P = len(batch.prompt_ids)
        prompts = [ids for _ in members for ids in batch.prompt_ids]
        seeds = None if batch.sample_seeds is None else [s for _ in members for s in batch.sample_seeds]
        member_of = torch.arange(len(members), device=device).repeat_interleave(P)
        row_scale = torch.tensor([sign * scale for _, sign in members], dtype=torch.float32,
                                 device=device).repeat_interleave(P)

        # 3. Decode, rows_per_batch rows at a time.
        t1 = time.perf_counter()
        texts: list[str] = []
        tokens: list[list[int]] = []
        was_training = self.policy.model.training
        self.policy.model.eval()
        for s in range(0, len(prompts), self.rows_per_batch):
            e = min(len(prompts), s + self.rows_per_batch)

            def make_step(B: int, max_len: int, rm: torch.Tensor = member_of[s:e],
                          rs: torch.Tensor = row_scale[s:e]) -> LowRankStepper:
                return LowRankStepper(self.policy.model, B, max_len, mats, rm, rs, norms)

            out = generate(self.policy.model, prompts[s:e], eos_ids=self.policy.eos_ids, pad_id=self.policy.pad_id,
                           max_new_tokens=self.scorer.max_new_tokens, temperature=self.scorer.temperature,
                           top_p=self.scorer.top_p, seeds=None if seeds is None else seeds[s:e],
                           decode=self.policy.decode, stop=self.scorer.task.stop, make_step=make_step)
            texts += out.texts
            tokens += out.response_ids
        self.policy.model.train(was_training)
        sync(device)
        seconds["generate"] = time.perf_counter() - t1
        seconds.setdefault("restore", 0.0)  # nothing was written
        return texts, tokens
