"""The random-walk theory checked against measured ES runs, from their update logs and checkpoints.

An ES run's update is known exactly: theta_T - theta_0 = sum_t sum_n a_{t,n} eps_{t,n}, with the seeded
noises eps (regenerated, never stored) and the logged coefficients a = (alpha/N) z_n * sign (updates.jsonl;
members sharing a seed, i.e. antithetic pairs, are merged into one coefficient per seed). So:

- the walk is replayed tensor by tensor (one tensor's running delta in memory at a time) to get
  ||theta_t - theta_0||^2 after every iteration, overall and per tensor, and its exact components;
- two predictions are set beside it: the paper's alpha^2 d t / N, and the one conditioned on the logged
  coefficients, d * sum_{t' <= t} sum_seeds a^2 (what a pure random walk with these coefficients gives in
  expectation; it differs from the paper's when fitness ties make z = 0 or with antithetic pairs);
- random-walk fraction: the share of weight matrices whose measured / predicted squared drift at the end
  lies within max(10%, 3 sqrt(2 / numel)) of 1 (3 standard deviations of the chi-square spread);
- the part aligned with another update (e.g. GRPO's): <theta_T - theta_0, u> for the unit direction u,
  accumulated iteration by iteration, beside its random-walk scale;
- the off-task KL slope: predicted 1/2 sum a^2 tr(F_B) per iteration, with tr(F_B) = E ||grad log p(y|x)||^2
  (the sequence-level Fisher trace of task B's responses, sampled from the base model) against the
  measured KL of the ES checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from esgrpo.checkpoints import CheckpointTensors
from esgrpo.runs import read_jsonl
from esgrpo.train.noise import tensor_noise


def seed_coefficients(updates_jsonl: str | Path) -> list[dict[int, float]]:
    """Per iteration: {noise seed: total coefficient} (antithetic members share a seed)."""
    out = []
    for row in read_jsonl(Path(updates_jsonl)):
        per_seed: dict[int, float] = {}
        for seed, sign, coef in zip(row["seeds"], row["signs"], row["coefs"], strict=True):
            per_seed[int(seed)] = per_seed.get(int(seed), 0.0) + float(sign) * float(coef)
        out.append(per_seed)
    return out


def _r2(xs: list[float], ys: list[float]) -> float:
    """R^2 of the least-squares line y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    return 1.0 if syy == 0 else (sxy * sxy / (sxx * syy) if sxx > 0 else float("nan"))


@dataclass
class _Walk:
    """What replaying a walk tensor by tensor accumulates."""

    sq_total: list[float]  # ||delta_t||^2 summed over tensors, per iteration
    aligned: list[float]  # per-iteration step projected on the unit direction (None-direction: zeros)
    per_tensor: dict[str, dict[str, Any]] = field(default_factory=dict)
    d: int = 0
    mismatch_sq: float = 0.0  # ||checkpoint delta - replayed delta||^2
    final_sq: float = 0.0  # ||checkpoint delta||^2


def walk_drift(run_dir: str | Path, alpha: float, population: int, direction: str | Path | None = None,
               direction_base: str | Path | None = None) -> dict[str, Any]:
    """Replay an ES run's walk from its log: measured vs predicted drift per iteration, per tensor.

    run_dir: an ES run directory (updates.jsonl, checkpoints/step-000000 and checkpoints/final).
    direction / direction_base: another checkpoint and its base (default: this run's base); the ES update's
    projection on the unit vector (direction - direction_base) is tracked per iteration.
    """
    run_dir = Path(run_dir)
    # 1. The walk: per iteration, the coefficient of every seed's noise (from the update log).
    coefs = seed_coefficients(run_dir / "updates.jsonl")
    # 2. Replay it tensor by tensor against the run's base and final checkpoints.
    walk = _replay_walk(run_dir / "checkpoints" / "step-000000", run_dir / "checkpoints" / "final", coefs,
                        direction, direction_base)
    # 3. Set the measured drift beside the predictions.
    return _against_predictions(walk, coefs, alpha, population, tracked=direction is not None)


def _replay_walk(base_dir: Path, final_dir: Path, coefs: list[dict[int, float]], direction: str | Path | None,
                 direction_base: str | Path | None) -> _Walk:
    T = len(coefs)
    cum_last = sum(a * a for c in coefs for a in c.values())
    walk = _Walk(sq_total=[0.0] * T, aligned=[0.0] * T)
    with ExitStack() as stack:
        base = stack.enter_context(CheckpointTensors(base_dir))
        final = stack.enter_context(CheckpointTensors(final_dir))
        names = [n for n in base.names() if base.get(n).is_floating_point()]
        unit = None
        if direction is not None:
            unit = _UnitDirection(stack.enter_context(CheckpointTensors(direction)),
                                  stack.enter_context(CheckpointTensors(direction_base or base_dir)), names)
        for name in names:
            b = base.get(name).float()
            walk.d += b.numel()
            u = unit.tensor(name) if unit is not None else None
            delta = torch.zeros_like(b)
            for t, per_seed in enumerate(coefs):
                step = torch.zeros_like(b)
                for seed, a in per_seed.items():
                    if a != 0.0:
                        step.add_(tensor_noise(seed, name, b.shape), alpha=a)
                delta.add_(step)
                walk.sq_total[t] += float(delta.double().pow(2).sum())
                if u is not None:
                    walk.aligned[t] += float((step.double() * u).sum())
            measured = final.get(name).float() - b
            walk.mismatch_sq += float((measured.double() - delta.double()).pow(2).sum())
            walk.final_sq += float(measured.double().pow(2).sum())
            sq, pred = float(delta.double().pow(2).sum()), b.numel() * cum_last
            walk.per_tensor[name] = {"numel": b.numel(), "ndim": b.dim(), "measured_sq": sq if T else 0.0,
                                     "predicted_sq": pred, "ratio": (sq / pred) if pred else float("nan")}
    for t in range(1, T):
        walk.aligned[t] += walk.aligned[t - 1]
    return walk


class _UnitDirection:
    """(direction - direction_base) / its norm, tensor by tensor."""

    def __init__(self, other: CheckpointTensors, other_base: CheckpointTensors, names: list[str]) -> None:
        self.other, self.other_base = other, other_base
        self.norm = math.sqrt(sum(float((other.get(n).double() - other_base.get(n).double()).pow(2).sum())
                                  for n in names))

    def tensor(self, name: str) -> torch.Tensor | None:
        if self.norm == 0:
            return None
        return (self.other.get(name).double() - self.other_base.get(name).double()) / self.norm


def _against_predictions(walk: _Walk, coefs: list[dict[int, float]], alpha: float, population: int,
                         tracked: bool) -> dict[str, Any]:
    T, d, sq_total = len(coefs), walk.d, walk.sq_total
    sumsq_coef = [sum(a * a for a in c.values()) for c in coefs]
    cum_coef = [sum(sumsq_coef[:t + 1]) for t in range(T)]
    matrices = [v for v in walk.per_tensor.values() if v["ndim"] == 2 and v["predicted_sq"] > 0]
    ok = [abs(v["ratio"] - 1) <= max(0.1, 3 * math.sqrt(2 / v["numel"])) for v in matrices]
    iters = list(range(1, T + 1))
    return {
        "iterations": T, "d": d, "alpha": alpha, "population": population,
        "measured_sq": sq_total,
        "predicted_sq_paper": [alpha ** 2 * d * t / population for t in iters],
        "predicted_sq_conditioned": [d * c for c in cum_coef],
        "measured_norm": math.sqrt(sq_total[-1]) if T else 0.0,
        "predicted_norm_paper": alpha * math.sqrt(d * T / population),
        "predicted_norm_conditioned": math.sqrt(d * cum_coef[-1]) if T else 0.0,
        "r2_sq_vs_t": _r2([float(t) for t in iters], sq_total) if T > 2 else float("nan"),
        "slope_sq_per_iteration": (sq_total[-1] / T) if T else 0.0,
        "random_walk_fraction": sum(ok) / len(ok) if ok else float("nan"),
        "random_walk_rule": "matrices with |measured/predicted squared drift - 1| <= max(0.1, 3 sqrt(2/numel))",
        "n_matrices": len(ok),
        "decomposition_rel_error": math.sqrt(walk.mismatch_sq / walk.final_sq) if walk.final_sq else 0.0,
        "aligned": walk.aligned if tracked else None,
        "aligned_cosine": (walk.aligned[-1] / math.sqrt(sq_total[-1])) if tracked and T and sq_total[-1] else None,
        "zero_update_iterations": sum(1 for s in sumsq_coef if s == 0.0),
        "cum_coef_sq": cum_coef,
        "per_tensor": walk.per_tensor,
    }


def fisher_trace(policy, examples: list, task_name: str, n_samples: int, max_new_tokens: int, seed: int = 0,
                 task: Any = None) -> dict:
    """tr(F) of the sequence-level Fisher on a task: mean over sampled responses of ||grad log p(y|x)||^2.

    Responses are sampled from the policy at temperature 1 (seeded per row); the gradient is of the summed
    token log-probabilities of each response. Returns {"trace", "se", "n"}.
    """
    from esgrpo.tasks import get_task

    task = task or get_task(task_name)
    prompts = task.prompt_ids(policy, examples)
    rows = [prompts[i % len(prompts)] for i in range(n_samples)]
    gen = policy.generate(rows, max_new_tokens=max_new_tokens, temperature=1.0,
                          seeds=[seed + i for i in range(n_samples)], stop=task.stop)
    params = [p for _, p in policy.named_parameters()]
    vals = []
    for p_ids, r_ids in zip(rows, gen.response_ids, strict=True):
        if not r_ids:
            continue
        lp, mask = policy.logprobs([p_ids], [r_ids])
        grads = torch.autograd.grad((lp * mask).sum(), params, allow_unused=True)
        vals.append(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))
    n = len(vals)
    mean = sum(vals) / n if n else float("nan")
    se = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n) if n > 1 else float("nan")
    return {"trace": mean, "se": se, "n": n}


def kl_prediction(cum_coef_sq: float, fisher: Mapping[str, float]) -> dict[str, float]:
    """Predicted KL_B after the walk: 1/2 * sum a^2 * tr(F_B) per task B (a quadratic, isotropic-walk model)."""
    return {t: 0.5 * cum_coef_sq * tr for t, tr in fisher.items()}


def random_walk_kl(base: Any, work: Any, scale: float, examples_by_task: Mapping[str, list], n_samples: int,
                   max_new_tokens: int, seed: int, draws: int = 2, batch_size: int = 16,
                   tasks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The random-walk model's off-task KL without the quadratic approximation: KL(pi_{theta_0 + scale eps} ||
    pi_{theta_0}) on each task's prompts, eps ~ N(0, I) drawn `draws` times (noise.py's generator, seeds derived
    from `seed`), averaged over the draws.

    A pure random walk of T iterations with step alpha, N members has theta_T - theta_0 ~ N(0, alpha^2 T / N I)
    (sum_n z_n^2 = N for z-scores), so scale = alpha sqrt(T / N) needs nothing but the settings and the base
    model. `work` is a second copy of the base policy whose weights are overwritten; the KL is measured with
    analysis/kl.kl_drift (the same prompts and sampling seeds as the trained checkpoints' KL).
    Returns {"scale", "draws", "per_draw": [{task: kl}], "kl": {task: mean}, "kl_spread": {task: (min, max)}}."""
    from esgrpo.analysis.kl import kl_drift
    from esgrpo.train.noise import derive_seed

    per_draw = []
    for k in range(draws):
        noise_seed = derive_seed(seed, "random-walk", k)
        with torch.no_grad():
            for (name, p), (_, q) in zip(work.named_parameters(), base.named_parameters(), strict=True):
                p.copy_((q.float() + scale * tensor_noise(noise_seed, name, q.shape, q.device)).to(p.dtype))
        res = kl_drift(work, base, examples_by_task, n_samples, max_new_tokens, seed, batch_size=batch_size,
                       tasks=tasks)
        per_draw.append({t: r["kl"] for t, r in res.items()})
    tasks_ = list(per_draw[0]) if per_draw else []
    return {"scale": scale, "draws": draws, "per_draw": per_draw,
            "kl": {t: sum(d[t] for d in per_draw) / len(per_draw) for t in tasks_},
            "kl_spread": {t: (min(d[t] for d in per_draw), max(d[t] for d in per_draw)) for t in tasks_}}
