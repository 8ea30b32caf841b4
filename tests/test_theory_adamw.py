"""The AdamW random-walk model of GRPO's update norm (theory/adamw.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from esgrpo.theory.adamw import adamw_walk, grpo_norm, schedule, signal_to_noise


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


def test_signal_to_noise_recovers_a_known_snr_and_reads_zero_on_noise():
    rng = np.random.default_rng(5)
    k, coords = 16, 200_000
    scale = rng.uniform(1e-4, 1e-1, coords)  # per-coordinate gradient scales: the ratio does not see them
    for snr in (0.0, 0.1, 0.3):
        grads = scale * (snr + rng.standard_normal((k, coords)))
        grads[:, :1000] = 0.0  # coordinates without any gradient are left out, not counted as signal 0
        assert abs(signal_to_noise(grads) - snr) < 0.02
    # the plain mean^2 / var would read ~1/K on pure noise; the corrected estimate must not
    assert signal_to_noise(rng.standard_normal((k, coords))) < 0.02


def test_signal_to_noise_refuses_too_few_gradients():
    with pytest.raises(ValueError, match="at least 4"):
        signal_to_noise(np.ones((3, 10)))


def test_gradient_snr_measures_at_the_base_without_moving_it(tmp_path):
    """The trainer's own steps at lr 1e-30 give independent gradients at one point; the weights stay bitwise."""
    from esgrpo.config import DataConfig, GRPOConfig, ModelConfig, PromptConfig
    from esgrpo.models import load_policy
    from esgrpo.tasks import load_examples
    from esgrpo.tasks.prompting import make_task
    from esgrpo.theory.adamw import gradient_snr

    policy = load_policy(ModelConfig(name="tiny", cache_dir=str(tmp_path)))
    base = {n: p.detach().clone() for n, p in policy.named_parameters()}
    data = DataConfig(n_train=16)
    task = make_task("math", PromptConfig(), data)
    train = load_examples("math", data.source, "train", 16, seed=0)
    cfg = GRPOConfig(steps=40, prompts_per_step=2, group_size=4, max_new_tokens=24, lr=3e-4)
    snr, flat = gradient_snr(policy, task, train, cfg, steps=6)
    assert all(torch.equal(p, base[n]) for n, p in policy.named_parameters())
    assert 0 <= flat <= 2 and math.isfinite(snr) and 0.0 <= snr < 1.0  # policy gradients are mostly noise
