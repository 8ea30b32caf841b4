"""GRPO's update norm predicted from its optimizer settings: AdamW as a random walk.

Why. Under AdamW a coordinate moves by lr_t * m_hat / (sqrt(v_hat) + eps) per step: about lr whatever the
scale of its gradient. In the bulk of the d directions the reward barely sees, the per-coordinate
gradient of a policy-gradient step is dominated by sampling noise, independent from step to step, so the
displacement after T steps is a random walk whose size is set by lr, the schedule, the betas and T, not
by the model: ||dtheta_GRPO|| ~ sqrt(d) * lr * g(T, schedule, betas). With ES's alpha * sqrt(d T / N)
(theory/predict.es_norm) this predicts the ES/GRPO norm ratio before training: sqrt(d) cancels, and the
ratio is alpha sqrt(T_ES / N) against lr g(T_GRPO).

Model. One coordinate's gradient at step t is c_t (snr + xi_t), xi_t ~ N(0, 1) independent; c_t = 0 on
steps whose gradient is exactly zero (every group flat), else 1 (AdamW is invariant to a constant
gradient scale up to eps; gradient clipping, which rescales whole steps, is left out). `snr` is a
per-coordinate mean in units of the noise (0: pure walk). The displacement D = sum_t of AdamW's updates
is simulated exactly (torch.optim.AdamW's arithmetic, weight decay 0) for `coords` independent coordinates;
the prediction is sqrt(d E[D^2]). The tests check the simulator against torch's AdamW step for step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def adamw_walk(lrs: Sequence[float], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               snr: float = 0.0, grad_scale: float = 1.0, zero_steps: Sequence[int] = (), coords: int = 20_000,
               seed: int = 0, grads: np.ndarray | None = None) -> np.ndarray:
    """Per-coordinate displacement after len(lrs) AdamW steps on random gradients: array of `coords`.

    lrs: the learning rate of each step (schedule included). zero_steps: 0-based steps whose gradient is
    exactly 0 (moments and step count still advance, as in torch). grads: optional (steps, coords)
    gradients to use instead of drawing grad_scale * (snr + N(0, 1))."""
    b1, b2 = betas
    steps = len(lrs)
    if grads is None:
        rng = np.random.default_rng(seed)
        grads = grad_scale * (snr + rng.standard_normal((steps, coords)))
    g_all = np.asarray(grads, dtype=np.float64)
    zero = set(zero_steps)
    m = np.zeros(g_all.shape[1])
    v = np.zeros(g_all.shape[1])
    disp = np.zeros(g_all.shape[1])
    for t in range(steps):
        g = np.zeros_like(m) if t in zero else g_all[t]
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        bc1, bc2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
        disp -= lrs[t] / bc1 * m / (np.sqrt(v) / math.sqrt(bc2) + eps)
    return disp


def grpo_norm(lrs: Sequence[float], d: int, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              snr: float = 0.0, zero_steps: Sequence[int] = (), coords: int = 20_000, seed: int = 0) -> float:
    """Predicted ||theta_T - theta_0|| of GRPO (AdamW) with per-step learning rates `lrs` on d parameters."""
    disp = adamw_walk(lrs, betas, eps, snr=snr, zero_steps=zero_steps, coords=coords, seed=seed)
    return math.sqrt(d * float(np.mean(disp ** 2)))


def schedule(lr: float, steps: int, kind: str = "linear", warmup: int = 0, schedule_steps: int = 0) -> list[float]:
    """The learning rate of each of `steps` GRPO steps (train/grpo.lr_factor, the trainer's own schedule)."""
    from esgrpo.config import GRPOConfig
    from esgrpo.train.grpo import lr_factor

    factor = lr_factor(GRPOConfig(lr=lr, steps=steps, lr_schedule=kind, warmup_steps=warmup,  # type: ignore[arg-type]
                                  schedule_steps=schedule_steps), steps)
    return [lr * factor(s) for s in range(steps)]
