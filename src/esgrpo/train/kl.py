"""KL to a frozen reference model, estimated on sampled responses.

k3 estimator (Schulman): with q = log pi_ref(y_t) - log pi(y_t) for tokens y_t ~ pi,
    k3 = exp(q) - q - 1  >= 0,  unbiased for KL(pi || pi_ref) per token, lower variance than -q.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esgrpo.rollout import response_logprobs


def k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) for tokens sampled from pi."""
    q = logp_ref - logp
    return torch.exp(q) - q - 1


@torch.no_grad()
def kl_to_reference(model: torch.nn.Module, ref_model: torch.nn.Module, prompt_ids: list[list[int]],
                    response_ids: list[list[int]], pad_id: int, batch_size: int = 64) -> float:
    """Mean per-token k3 KL(model || ref) over the given (sampled-from-model) responses."""
    total, count = 0.0, 0.0
    for s in range(0, len(prompt_ids), batch_size):
        p, r = prompt_ids[s:s + batch_size], response_ids[s:s + batch_size]
        if not any(r):
            continue
        lp, mask = response_logprobs(model, p, r, pad_id)
        lp_ref, _ = response_logprobs(ref_model, p, r, pad_id)
        total += float((k3(lp, lp_ref) * mask).sum())
        count += float(mask.sum())
    return total / count if count else 0.0
