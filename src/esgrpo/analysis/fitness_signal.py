"""How much of an ES population's fitness ranking is signal, and the prompt batch it would need.

ES ranks its members by their fitness on one batch of B prompts (es.batch_size) and moves along the
z-weighted sum of their noise. If the members' differences on that batch are mostly which prompts the
batch happened to hold, the update is a random step however many iterations are taken. Measured here:

1. draw one population (es.population members of es.seed's iteration `iteration`, as the trainer does);
2. score every member, perturbed by sigma, on K disjoint batches of B training prompts (es.decoding,
   the same prompts for every member: common random numbers), and the unperturbed model on each batch;
3. across members, F[k][n] = f_n + e_kn: f_n the member's fitness on the task's distribution, e_kn the
   batch's part, independent between disjoint batches. Then, over members (sample moments):
     signal      s2    = the mean covariance of F[a] and F[b] over batch pairs a != b  (= var(f))
     total       v     = the mean variance of F[k] over batches                      (= var(f) + var(e))
     reliability r(B)  = s2 / v: the share of a batch's fitness variance that is the members' own;
                         with var(e) proportional to 1/B, r(B') = s2 / (s2 + (v - s2) B / B')
     batch for r = 1/2: B (v - s2) / s2; for r = 0.8: four times that
   with percentile bootstrap intervals over members (the members are the sample).

s2 <= 0 (the batches agree no more than chance) means no signal was found at this size: r = 0 and no
batch size is given (None). Ties (every member scoring the same on a batch, z = 0, no update) are counted.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from esgrpo.analysis.stats import percentile_interval
from esgrpo.config import TrainConfig
from esgrpo.errors import ConfigError
from esgrpo.models import load_policy
from esgrpo.tasks import task_examples
from esgrpo.tasks.prompting import make_task
from esgrpo.train.es import draw_members
from esgrpo.train.noise import derive_seed
from esgrpo.train.population import Batch, SequentialEvaluator, es_scorer


def _cov(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    return math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / (n - 1)


def signal_stats(fitness: list[list[float]], batch_size: int) -> dict[str, Any]:
    """fitness[k][n]: member n's mean reward on batch k (K >= 2 batches, N >= 2 members). The moments of the
    module docstring (step 3), without intervals."""
    k = len(fitness)
    v = math.fsum(_cov(f, f) for f in fitness) / k
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    s2 = math.fsum(_cov(fitness[a], fitness[b]) for a, b in pairs) / len(pairs)
    noise = v - s2
    r = max(0.0, s2) / v if v > 0 else 0.0
    half = batch_size * noise / s2 if s2 > 0 else None  # None: no signal found, no batch size is enough
    return {"signal_var": s2, "total_var": v, "noise_var": noise, "reliability": r,
            "batch_for_half": half, "batch_for_0.8": None if half is None else 4 * half}


def signal_with_intervals(fitness: list[list[float]], batch_size: int, resamples: int = 1000,
                          seed: int = 0) -> dict[str, Any]:
    """signal_stats plus percentile bootstrap intervals over members for the signal and the reliability."""
    out = signal_stats(fitness, batch_size)
    n = len(fitness[0])
    rng = random.Random(seed)
    boots = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        boots.append(signal_stats([[f[i] for i in idx] for f in fitness], batch_size))
    for key in ("signal_var", "reliability"):
        out[f"{key}_interval"] = percentile_interval([b[key] for b in boots])
    return out


def disjoint_batches(n_examples: int, batches: int, batch_size: int, seed: int) -> list[list[int]]:
    """`batches` disjoint lists of `batch_size` training indices, from a seeded shuffle (stable across versions)."""
    ranked = sorted(range(n_examples), key=lambda i: derive_seed(seed, "signal", i))
    return [ranked[k * batch_size:(k + 1) * batch_size] for k in range(batches)]


def fitness_signal(cfg: TrainConfig, batches: int = 4, iteration: int = 1, resamples: int = 1000) -> dict[str, Any]:
    """Steps 1-3 of the module docstring for cfg's model, task, prompts and ES settings; a JSON-able dict."""
    es = cfg.es
    if batches < 2:
        raise ConfigError(f"--batches must be at least 2 (two disjoint batches give the covariance), got {batches}")
    if es.population < 2:
        raise ConfigError(f"es.population must be at least 2 for a fitness variance, got {es.population}")
    examples = task_examples(cfg.data, cfg.task, "train", cfg.data.n_train)
    size = es.batch_size or len(examples) // batches
    if size < 1 or batches * size > len(examples):
        raise ConfigError(f"{batches} disjoint batches of es.batch_size {size} need {batches * size} training "
                          f"examples; data.n_train gives {len(examples)}")
    task = make_task(cfg.task, cfg.prompt, cfg.data)
    policy = load_policy(cfg.model, cfg.tiny, engine=cfg.generation.engine)
    prompt_ids = task.prompt_ids(policy, examples)
    scorer = es_scorer(task, es)
    evaluator = SequentialEvaluator(policy, scorer, es.sigma, rank=es.rank, other=es.lowrank_other)
    members = draw_members(es, iteration)

    # 1-2. every member (and the unperturbed model) on each disjoint batch; sampling seeds per batch position
    fitness, base, t0 = [], [], time.perf_counter()
    for k, idx in enumerate(disjoint_batches(len(examples), batches, size, es.seed)):
        seeds = ([derive_seed(es.seed, "signal-sample", k, pos) for pos in range(size)]
                 if es.decoding == "sample" else None)
        batch = Batch(iteration=iteration, indices=idx, examples=[examples[i] for i in idx],
                      prompt_ids=[prompt_ids[i] for i in idx], sample_seeds=seeds)
        fitness.append(evaluator.evaluate(members, batch).fitness)
        base.append(scorer(policy, batch).reward)

    # 3. the moments over members, with bootstrap intervals
    stats = signal_with_intervals(fitness, size, resamples=resamples, seed=es.seed)
    ties = sum(1 for f in fitness if max(f) == min(f))
    return {"model": cfg.model.name, "task": cfg.task, "population": len(members), "sigma": es.sigma,
            "decoding": es.decoding, "batch_size": size, "batches": batches, "iteration": iteration,
            "fitness": fitness, "base_fitness": base, "tied_batches": ties,
            "member_mean": math.fsum(map(math.fsum, fitness)) / (batches * len(members)),
            "base_mean": math.fsum(base) / batches, **stats, "seconds": time.perf_counter() - t0}
