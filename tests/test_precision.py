"""The precision audit: the intended float32 update against the one the weights' dtype kept, for both
trainers, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from esgrpo.config import GRPOConfig
from esgrpo.train.es import apply_update
from esgrpo.train.grpo import _Optimizer
from esgrpo.train.noise import tensor_noise
from esgrpo.train.precision import precision_audit

MEMBERS = [(11, 1), (22, -1), (33, 1)]


def _hand(before: dict[str, torch.Tensor], params, coefs) -> dict[str, float]:
    """Intended: the float32 sum of the members' noise added to the float32 weights; applied: what the
    weights hold now, minus what they held."""
    sums = dict.fromkeys(("applied", "intended", "dot", "changed", "numel"), 0.0)
    for name, p in params:
        old = before[name].float()
        acc = old.clone()
        for (seed, sign), c in zip(MEMBERS, coefs, strict=True):
            acc = acc + (c * sign) * tensor_noise(seed, name, p.shape)
        intended, applied = (acc - old).double(), (p.double() - old.double())
        sums["applied"] += float(applied.pow(2).sum())
        sums["intended"] += float(intended.pow(2).sum())
        sums["dot"] += float((applied * intended).sum())
        sums["changed"] += int((applied != 0).sum())
        sums["numel"] += p.numel()
    return precision_audit(sums)


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 0.01), (torch.bfloat16, 0.01), (torch.bfloat16, 1e-4)])
def test_es_update_audit_equals_the_hand_computation(dtype, scale):
    lin = torch.nn.Linear(64, 48).to(dtype)
    params = [(n, p.detach()) for n, p in lin.named_parameters()]
    before = {n: p.clone() for n, p in params}
    coefs = [scale, -0.5 * scale, 0.25 * scale]
    audit: dict[str, float] = {}
    norm = apply_update(params, MEMBERS, coefs, audit=audit)
    hand = _hand(before, params, coefs)
    for key, value in hand.items():
        assert audit[key] == pytest.approx(value, rel=1e-5, abs=1e-12), key
    assert norm == pytest.approx(hand["update_norm_ratio"] * hand["intended_norm"], rel=1e-6)
    if dtype == torch.float32:
        assert audit["update_cosine"] == pytest.approx(1.0) and audit["update_norm_ratio"] == pytest.approx(1.0)
        assert audit["changed_frac"] > 0.99
    elif scale == 1e-4:  # far below bf16's spacing at weights of ~0.1: most of the update rounds away
        assert audit["changed_frac"] < 0.5 and audit["update_cosine"] < 0.9


def test_grpo_step_audit_compares_the_float32_masters_with_the_bf16_weights(micro_policy):
    policy = micro_policy
    policy.model.to(torch.bfloat16)
    optim = _Optimizer(policy, GRPOConfig(lr=1e-5, lr_schedule="constant", max_grad_norm=0.0), planned=1)
    before = [p.detach().clone() for p in optim.params]
    masters_before = [m.detach().clone() for m in optim.masters]
    g = torch.Generator().manual_seed(0)
    for p in optim.params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
    audit: dict[str, float] = {}
    _, _, norm = optim.step(audit)
    intended = torch.cat([(m - b).double().flatten() for m, b in zip(optim.masters, masters_before, strict=True)])
    applied = torch.cat([(p.double() - b.double()).flatten() for p, b in zip(optim.params, before, strict=True)])
    assert audit["intended_norm"] == pytest.approx(float(intended.norm()), rel=1e-6)  # float32 sums
    assert norm == pytest.approx(float(applied.norm()), rel=1e-6)  # float32 sums
    assert audit["update_cosine"] == pytest.approx(float(intended @ applied / (intended.norm() * applied.norm())),
                                                   rel=1e-6)  # float32 sums
    assert audit["changed_frac"] == pytest.approx(float((applied != 0).double().mean()))
    assert audit["changed_frac"] < 0.5  # an AdamW step of lr 1e-5 is below bf16's spacing for most weights
    assert math.isfinite(audit["update_norm_ratio"])


def test_grpo_step_one_tensor_at_a_time_is_adamw_on_the_whole_model_bitwise(micro_policy):
    """The optimizer steps tensor by tensor (to measure each change with one tensor's copy): the weights equal,
    bit for bit, torch's AdamW stepping every tensor at once with the same clipped gradients, over two steps
    (a tensor without a gradient counts as a zero gradient), and update_norm is the norm of the change."""
    policy = micro_policy
    cfg = GRPOConfig(lr=1e-3, lr_schedule="constant", max_grad_norm=1.0)
    optim = _Optimizer(policy, cfg, planned=2)
    ref = [p.detach().clone().requires_grad_(True) for p in optim.params]
    ref_opt = torch.optim.AdamW(ref, lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        grads = [torch.randn(p.shape, generator=g) for p in optim.params]
        grads[step] = None  # a different tensor has no gradient at each step
        before = [p.detach().clone() for p in optim.params]
        for p, r, gr in zip(optim.params, ref, grads, strict=True):
            p.grad = None if gr is None else gr.clone()
            r.grad = torch.zeros_like(r) if gr is None else gr.clone()
        torch.nn.utils.clip_grad_norm_(ref, cfg.max_grad_norm)
        ref_opt.step()
        grad_norm, _, norm = optim.step()
        assert grad_norm > cfg.max_grad_norm  # the clip bound
        for p, r in zip(optim.params, ref, strict=True):
            assert torch.equal(p.detach(), r.detach())
            assert p.grad is None
        change = sum(float(torch.linalg.vector_norm(p.detach() - b)) ** 2
                     for p, b in zip(optim.params, before, strict=True))
        assert norm == pytest.approx(math.sqrt(change), rel=1e-12)
