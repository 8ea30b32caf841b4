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
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from esgrpo.config import GRPOConfig
    from esgrpo.models.policy import Policy
    from esgrpo.tasks.base import Example, Task


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


def signal_to_noise(grads: np.ndarray) -> float:
    """The root-mean-square per-coordinate signal-to-noise ratio of K gradients taken at one point
    (array K x coords; K >= 4): the `snr` of adamw_walk that these gradients imply.

    Per coordinate, mean / sd over the K samples gives t = sqrt(K) mean / sd, a noncentral Student t with
    K - 1 degrees of freedom and noncentrality sqrt(K) snr, so E[mean^2 / sd^2] = (K - 1) / (K (K - 3))
    (1 + K snr^2) for Gaussian noise: solved for snr^2 and averaged over the coordinates that had any
    gradient (sampling noise alone reads ~0, never the 1/K floor of the plain ratio)."""
    g = np.asarray(grads, dtype=np.float64)
    k = g.shape[0]
    if k < 4:
        raise ValueError(f"signal_to_noise needs at least 4 gradients, got {k}")
    var = g.var(axis=0, ddof=1)
    live = var > 0
    if not live.any():
        return 0.0
    ratio = float(np.mean(g.mean(axis=0)[live] ** 2 / var[live]))
    snr2 = (ratio * k * (k - 3) / (k - 1) - 1.0) / k
    return math.sqrt(max(snr2, 0.0))


def gradient_snr(policy: Policy, task: Task, examples: list[Example], cfg: GRPOConfig,
                 steps: int = 16) -> tuple[float, int]:
    """The rms per-coordinate gradient snr of GRPO at `policy`'s weights, measured in `steps` steps of the
    trainer itself (cfg's settings) at a learning rate of 1e-30: the weights stay as they are to the last
    bit (checked), so each step's gradient is an independent draw at one point (fresh prompts and samples),
    taken as AdamW receives it (after clipping). Returns (snr, steps whose gradient was exactly zero, which
    are left out)."""
    import dataclasses
    import tempfile
    from pathlib import Path

    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from esgrpo.runs import RunDir
    from esgrpo.train.grpo import train_grpo

    run_cfg = dataclasses.replace(cfg, lr=1e-30, steps=steps, lr_schedule="constant", warmup_steps=0,
                                  max_rollouts=0, kl_every=0, checkpoint_every=0)
    base = [p.detach().clone() for _, p in policy.named_parameters()]
    grads: list[np.ndarray] = []
    first: list[int] = []

    def capture(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if first and id(opt) != first[0]:
            return  # one optimizer per step (a float32 shadow, if any, sees the same gradient)
        first[:1] = [id(opt)]
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float()
                                .reshape(-1) for group in opt.param_groups for p in group["params"]]).numpy())

    handle = register_optimizer_step_pre_hook(capture)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train_grpo(policy, task, examples, run_cfg, RunDir(Path(tmp) / "run"))
    finally:
        handle.remove()
    moved = [n for (n, p), b in zip(policy.named_parameters(), base, strict=True) if not torch.equal(p, b)]
    if moved:
        raise RuntimeError(f"lr 1e-30 moved {moved[:3]}: the gradients were not all taken at one point")
    live = [g for g in grads if np.any(g)]
    if len(live) < 4:
        raise ValueError(f"only {len(live)} of {steps} GRPO steps had a non-zero gradient; measure more steps")
    return signal_to_noise(np.stack(live)), len(grads) - len(live)


def schedule(lr: float, steps: int, kind: str = "linear", warmup: int = 0, schedule_steps: int = 0) -> list[float]:
    """The learning rate of each of `steps` GRPO steps (train/grpo.lr_factor, the trainer's own schedule)."""
    from esgrpo.config import GRPOConfig
    from esgrpo.train.grpo import lr_factor

    factor = lr_factor(GRPOConfig(lr=lr, steps=steps, lr_schedule=kind, warmup_steps=warmup,  # type: ignore[arg-type]
                                  schedule_steps=schedule_steps), steps)
    return [lr * factor(s) for s in range(steps)]
