"""What bf16 keeps of one update at the paper's step sizes and at this study's, on the shipped tiny model.

    .venv/bin/python scripts/paper_scale_rounding.py [--config configs/study-default.yaml]

ES: one update of N members with z-scored coefficients alpha / N z_n (random fitness), applied to bf16
weights exactly (summed in float32, rounded once) and as published (N in-place bf16 adds, after N
perturb / restore-by-subtraction cycles at sigma); GRPO: 10 AdamW steps on random gradients, with float32
masters (exact) and on the bf16 weights (published), against float32 weights stepped with the same
gradients (the total change after 10 steps). Prints the precision audit of each (cosine and norm
ratio of the applied update to the float32 one, share of weights changed) and the restore drift.
The paper's sizes: alpha 7.5e-4, N 30, sigma 1.5e-3; lr 1e-5 and 3e-6 (arXiv 2604.01499).
The tiny model's weights are not Qwen3-4B's, so this shows the mechanism, not the 4B numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import torch

from esgrpo.config import GRPOConfig, StudyConfig, load_config
from esgrpo.models import load_policy
from esgrpo.train.es import apply_update, zscore
from esgrpo.train.grpo import _Optimizer
from esgrpo.train.published import PublishedPerturbation, drift, published_update


def es_case(cfg: StudyConfig, alpha: float, n: int, sigma: float, mode: str) -> dict[str, float]:
    policy = load_policy(dataclasses.replace(cfg.model, dtype="bfloat16"), cfg.tiny)
    params = policy.named_parameters()
    rng = random.Random(0)
    members = [(rng.randrange(2**62), 1) for _ in range(n)]
    coefs = [alpha / n * z for z in zscore([rng.random() for _ in range(n)])]
    audit: dict[str, float] = {}
    if mode == "published":
        start = [p.detach().clone() for _, p in params]
        cycles = PublishedPerturbation(params)
        for seed, sign in members:
            cycles.perturb(seed, sign, sigma)
            cycles.restore()
        audit.update(drift(params, start))
        published_update(params, members, coefs, audit=audit)
    else:
        apply_update(params, members, coefs, audit=audit)
    return audit


def grpo_case(cfg: StudyConfig, lr: float, mode: str, steps: int) -> dict[str, float]:
    """`steps` AdamW steps on random gradients: the bf16 weights' total change against a float32 copy of the same
    weights stepped with the same gradients (exact: float32 masters; published: AdamW on the bf16 weights)."""
    from esgrpo.train.precision import precision_audit

    policy = load_policy(dataclasses.replace(cfg.model, dtype="bfloat16"), cfg.tiny)
    ref = load_policy(dataclasses.replace(cfg.model, dtype="bfloat16"), cfg.tiny)
    ref.model.float()
    gcfg = GRPOConfig(lr=lr, lr_schedule="constant", max_grad_norm=0.0,
                      numerics="published" if mode == "published" else "exact")
    optim, ref_optim = _Optimizer(policy, gcfg, planned=steps), _Optimizer(ref, gcfg, planned=steps)
    start = [p.detach().float() for p in optim.params]
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for p, q in zip(optim.params, ref_optim.params, strict=True):
            grad = torch.randn(p.shape, generator=g).to(torch.bfloat16)
            p.grad, q.grad = grad, grad.float()
        optim.step()
        ref_optim.step()
    sums = dict.fromkeys(("applied", "intended", "dot", "changed", "numel"), 0.0)
    for p, q, s0 in zip(optim.params, ref_optim.params, start, strict=True):
        applied, intended = p.detach().float() - s0, q.detach() - s0
        sums["applied"] += float(applied.double().pow(2).sum())
        sums["intended"] += float(intended.double().pow(2).sum())
        sums["dot"] += float((applied.double() * intended.double()).sum())
        sums["changed"] += int(torch.count_nonzero(applied))
        sums["numel"] += p.numel()
    return precision_audit(sums)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/study-default.yaml")
    cfg = load_config(StudyConfig, p.parse_args().config, {})
    print("| update | arithmetic | cosine to float32 | norm ratio | weights changed % | restore drift norm / % |")
    print("|---|---|---|---|---|---|")
    for label, alpha, n, sigma in (("ES, paper (alpha 7.5e-4, N 30, sigma 1.5e-3)", 7.5e-4, 30, 1.5e-3),
                                   ("ES, this study (alpha 0.03, N 16, sigma 0.015)", cfg.es.alpha, cfg.es.population,
                                    cfg.es.sigma)):
        for mode in ("exact", "published"):
            a = es_case(cfg, alpha, n, sigma, mode)
            dr = (f"{a['restore_drift_norm']:.3g} / {100 * a['restore_drift_frac']:.1f}"
                  if "restore_drift_norm" in a else "0 (restored from a copy)")
            print(f"| {label} | {mode} | {a['update_cosine']:.3f} | {a['update_norm_ratio']:.3f} | "
                  f"{100 * a['changed_frac']:.1f} | {dr} |", flush=True)
    for lr in (3e-6, 1e-5, cfg.grpo.lr):
        for mode in ("exact", "published"):
            a = grpo_case(cfg, lr, mode, steps=10)
            print(f"| GRPO, 10 AdamW steps, lr {lr:g} | {mode} | {a['update_cosine']:.3f} | "
                  f"{a['update_norm_ratio']:.3f} | "
                  f"{100 * a['changed_frac']:.1f} | - |", flush=True)


if __name__ == "__main__":
    main()
