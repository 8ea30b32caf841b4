"""The AdamW random-walk model of GRPO's update norm (theory/adamw.py)."""

from __future__ import annotations

import math

import numpy as np
import torch

from esgrpo.theory.adamw import adamw_walk, grpo_norm, schedule


def test_the_simulator_is_torchs_adamw_step_for_step():
    rng = np.random.default_rng(0)
    steps, coords = 12, 500
    grads = rng.standard_normal((steps, coords)) * 1e-3
    lrs = schedule(3e-4, steps, "linear", warmup=2)
    p = torch.zeros(coords, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([p], lr=1.0, weight_decay=0.0)
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[t]
        p.grad = torch.from_numpy(np.zeros(coords) if t == 5 else grads[t])
        opt.step()
    ours = adamw_walk(lrs, grads=grads, zero_steps=[5])
    np.testing.assert_allclose(ours, p.detach().numpy(), rtol=1e-10, atol=1e-15)


def test_first_step_moves_every_coordinate_by_exactly_lr():
    g = np.random.default_rng(3).standard_normal((1, 1000))
    disp = adamw_walk([1e-3], grads=g)
    # m_hat = g and sqrt(v_hat) = |g| after one step: the move is lr |g| / (|g| + eps), whatever g's scale
    np.testing.assert_allclose(disp, -1e-3 * g[0] / (np.abs(g[0]) + 1e-8), rtol=1e-12)


def test_without_momentum_the_walk_is_lr_times_sqrt_steps():
    disp = adamw_walk([1e-3] * 25, betas=(0.0, 0.0), coords=40_000, seed=1)
    assert abs(math.sqrt(np.mean(disp ** 2)) / (1e-3 * 5) - 1) < 0.01  # +-lr per step, independent signs


def test_prediction_scales_with_sqrt_d_and_lr_and_grows_with_signal():
    lrs = schedule(3e-4, 20, "constant")
    base = grpo_norm(lrs, d=10_000)
    assert math.isclose(grpo_norm(lrs, d=40_000), 2 * base, rel_tol=1e-12)
    assert math.isclose(grpo_norm([2 * x for x in lrs], d=10_000), 2 * base, rel_tol=1e-6)
    assert grpo_norm(lrs, d=10_000, snr=1.0) > 1.5 * base
    assert grpo_norm(schedule(3e-4, 20, "linear"), d=10_000) < base  # a decaying rate moves less


def test_schedule_is_the_trainers():
    assert schedule(1e-3, 4, "linear") == [1e-3, 7.5e-4, 5e-4, 2.5e-4]
    assert schedule(1e-3, 3, "constant", warmup=2) == [5e-4, 1e-3, 1e-3]


def test_theory_predict_gives_the_es_grpo_ratio_before_training():
    from esgrpo.theory.commands import predictions

    out = predictions(0.03, 16, 39, 1_918_656, grpo_lr=3e-4, grpo_steps=40)
    assert math.isclose(out["es_grpo_norm_ratio"], out["es_norm"] / out["grpo_norm"])
    assert math.isclose(out["grpo_norm"], grpo_norm(schedule(3e-4, 40, "linear"), 1_918_656))
