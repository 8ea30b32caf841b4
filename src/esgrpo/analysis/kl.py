"""Output-distribution drift: KL(pi_theta || pi_ref) per task, on that task's prompts.

Responses y are sampled from pi_theta (one seeded generator per row: prompt i, sample j uses seed
`seed + j * n_prompts + i`, so sample 0 uses the seeds `evaluate_task` would use, and two checkpoints
evaluated with the same seed share their random numbers). For each response the sequence-level KL is
estimated by the exact per-position KL over the vocabulary, conditional on the sampled prefix, summed over
the response's tokens:

    KL_seq(x, y) = sum_t sum_v p_theta(v | x, y_<t) [log p_theta(v | x, y_<t) - log p_ref(v | x, y_<t)]

By the chain rule E_{y ~ pi_theta}[KL_seq] = KL(pi_theta(. | x) || pi_ref(. | x)) over responses (up to
max_new_tokens): this is the Rao-Blackwellized version of the single-sample estimate sum_t log p/p_ref (y_t),
with lower variance, and every term is >= 0. The k3 estimate (Schulman; `train.kl.k3`) on the sampled tokens
is reported beside it for comparison (also unbiased per position, higher variance).

With temperature T != 1 both models' logits are divided by T: the KL is between the two tempered sampling
distributions (top_p = 1). Incremental KL between two checkpoints is the same call with ref = the earlier one.
Forward passes run in micro-batches under torch.no_grad with fp32 log-softmax.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from esgrpo import rollout
from esgrpo.models.policy import Policy
from esgrpo.tasks import get_task
from esgrpo.tasks.base import Example, Task
from esgrpo.train.kl import k3


def response_log_softmax(policy: Policy, prompt_ids: list[list[int]], response_ids: list[list[int]],
                         temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """fp32 log-softmax(logits / T) at every response position, (B, T, V), and the (B, T) mask of real tokens."""
    logp, mask, _ = rollout.response_log_softmax(policy.model, prompt_ids, response_ids, policy.pad_id, temperature)
    return logp, mask


def _mean_se(xs: list[float]) -> tuple[float, float | None, float | None]:
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, None, None
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, std, std / math.sqrt(n)


@torch.no_grad()
def kl_on_responses(policy: Policy, ref_policy: Policy, prompt_ids: list[list[int]],
                    response_ids: list[list[int]], temperature: float = 1.0,
                    batch_size: int = 16) -> tuple[list[float], list[float], list[int]]:
    """Per response: (exact sequence KL, k3 sequence estimate, number of tokens); see the module docstring."""
    kl_seq: list[float] = []
    k3_seq: list[float] = []
    n_tok: list[int] = []
    modes = (policy.model.training, ref_policy.model.training)
    policy.model.eval()
    ref_policy.model.eval()
    try:
        for s in range(0, len(prompt_ids), batch_size):
            p, r = prompt_ids[s:s + batch_size], response_ids[s:s + batch_size]
            lp, mask = response_log_softmax(policy, p, r, temperature)
            lq, _ = response_log_softmax(ref_policy, p, r, temperature)
            lq = lq.to(lp.device)
            if lp.shape != lq.shape:
                raise ValueError(f"the two models' vocabularies differ: {lp.shape[-1]} vs {lq.shape[-1]}")
            per_pos = (lp.exp() * (lp - lq)).sum(dim=-1).clamp_(min=0.0)  # rounding can give -1e-9
            T = lp.shape[1]
            tok = torch.zeros((len(r), T), dtype=torch.long, device=lp.device)
            for i, row in enumerate(r):
                if row:
                    tok[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            slp = lp.gather(-1, tok[..., None]).squeeze(-1)
            slq = lq.gather(-1, tok[..., None]).squeeze(-1)
            kl_seq += (per_pos * mask).double().sum(dim=1).tolist()
            k3_seq += (k3(slp, slq) * mask).double().sum(dim=1).tolist()
            n_tok += [len(row) for row in r]
    finally:
        policy.model.train(modes[0])
        ref_policy.model.train(modes[1])
    return kl_seq, k3_seq, n_tok


def estimator_name(temperature: float) -> str:
    return (f"exact-per-token-sum (Rao-Blackwellized), responses sampled from theta at T={temperature:g}"
            + ("" if temperature == 1.0 else f"; KL between the T={temperature:g} tempered distributions"))


def kl_drift(policy: Policy, ref_policy: Policy, examples_by_task: Mapping[str, list[Example]], n_samples: int,
             max_new_tokens: int, seed: int, temperature: float = 1.0, batch_size: int = 16,
             with_k3: bool = True, return_samples: bool = False,
             tasks: Mapping[str, Task] | None = None) -> dict[str, dict[str, Any]]:
    """KL(pi_theta || pi_ref) of responses to each task's prompts, `n_samples` sampled responses per prompt.

    Per task: "kl" (mean sequence-level KL per response, nats), "kl_std", "kl_se" (std / sqrt(n); None if n < 2),
    "kl_per_token" (total KL / total response tokens), "n" (responses), "n_prompts", "samples_per_prompt",
    "tokens", "mean_response_tokens", "truncated_fraction", "estimator", "temperature", "max_new_tokens",
    "seed"; with_k3: "k3", "k3_std", "k3_se", "k3_per_token" (the same quantities from the k3 estimate);
    return_samples: "samples" = [{"prompt_index", "seed", "response_ids", "kl", "k3", "tokens"}].
    """
    if temperature <= 0:
        raise ValueError(f"KL drift needs sampled responses: temperature must be > 0, got {temperature}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    out: dict[str, dict[str, Any]] = {}
    for task_name, examples in examples_by_task.items():
        if not examples:
            raise ValueError(f"no examples for task {task_name!r}")
        task = (tasks or {}).get(task_name) or get_task(task_name)
        prompts = task.prompt_ids(policy, examples)
        P = len(prompts)
        rows = [(i, seed + j * P + i) for j in range(n_samples) for i in range(P)]
        row_prompts = [prompts[i] for i, _ in rows]
        gen = policy.generate(row_prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                              seeds=[s for _, s in rows], batch_size=batch_size, stop=task.stop)
        kls, k3s, toks = kl_on_responses(policy, ref_policy, row_prompts, gen.response_ids, temperature, batch_size)
        n = len(kls)
        mean, std, se = _mean_se(kls)
        res: dict[str, Any] = {
            "kl": mean, "kl_std": std, "kl_se": se,
            "kl_per_token": sum(kls) / max(1, sum(toks)),
            "n": n, "n_prompts": P, "samples_per_prompt": n_samples,
            "tokens": sum(toks), "mean_response_tokens": sum(toks) / n,
            "truncated_fraction": sum(not f for f in gen.finished) / n,
            "estimator": estimator_name(temperature),
            "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed,
        }
        if with_k3:
            kmean, kstd, kse = _mean_se(k3s)
            res.update({"k3": kmean, "k3_std": kstd, "k3_se": kse, "k3_per_token": sum(k3s) / max(1, sum(toks))})
        if return_samples:
            res["samples"] = [{"prompt_index": i, "seed": s, "response_ids": r, "kl": kl, "k3": kk, "tokens": t}
                              for (i, s), r, kl, kk, t in zip(rows, gen.response_ids, kls, k3s, toks, strict=True)]
        out[task_name] = res
    return out
