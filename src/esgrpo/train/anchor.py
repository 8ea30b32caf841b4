"""Anchored weight decay for ES (AWD; arXiv 2605.30148, code kschweig/es-awd): after every update the offset
of the weights from the run's starting weights w0 shrinks, so the drift of ES's random walk in directions the
reward does not constrain stays bounded.

    l2:  w <- w0 + (1 - step) (w - w0)                           step = es.alpha * es.anchor_lambda, in (0, 1)
    l1:  w <- w0 + sign(w - w0) max(|w - w0| - step, 0)           (soft-thresholding the offset)

Computed per tensor in float32 and rounded once to the weights' dtype. With step s (l2) the drift is an
Ornstein-Uhlenbeck walk x_t = (1 - s) x_{t-1} + u_t: its norm levels off at about
alpha sqrt(d / N) / sqrt(1 - (1 - s)^2) instead of growing as alpha sqrt(d T / N) (theory/predict.py, awd_norm).

w0 is the run's starting weights (checkpoints/step-000000). In a task sequence each stage is its own run, so
w0 is the stage's start: anchoring to the sequence's base would pull every stage back toward the model before
the earlier stages, undoing what they learned along with their drift. The step is logged in updates.jsonl
("anchor"), so replay and resume repeat it bit-exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Anchor:
    """w0 (a copy of the starting weights: one parameter-sized buffer) and the decay."""

    def __init__(self, params: list[tuple[str, Tensor]], decay: str, step: float) -> None:
        if decay not in ("l2", "l1"):
            raise ValueError(f"anchor decay {decay!r}: l2 or l1")
        if not 0 < step < 1:
            raise ValueError(f"anchor decay step {step!r} must lie in (0, 1)")
        self.decay, self.step = decay, step
        with torch.no_grad():
            self.w0 = [p.detach().clone() for _, p in params]

    def row(self) -> dict[str, float | str]:
        """What updates.jsonl records so that replay repeats the decay."""
        return {"decay": self.decay, "step": self.step}

    @torch.no_grad()
    def apply(self, params: list[tuple[str, Tensor]]) -> float:
        """Decay every tensor toward w0 in place; returns the norm of the change it made."""
        return anchor_step(params, self.w0, self.decay, self.step)


@torch.no_grad()
def anchor_step(params: list[tuple[str, Tensor]], w0: list[Tensor], decay: str, step: float) -> float:
    """The decay of the module docstring on every tensor (float32, rounded once); returns ||change||."""
    total = 0.0
    for (_, p), base in zip(params, w0, strict=True):
        anchor = base.to(torch.float32)
        offset = p.to(torch.float32) - anchor
        if decay == "l2":
            new = anchor + (1.0 - step) * offset
        else:
            new = anchor + torch.sign(offset) * torch.clamp(offset.abs() - step, min=0.0)
        new = new.to(p.dtype)
        total += float(torch.linalg.vector_norm(new.float() - p.float())) ** 2
        p.copy_(new)
    return math.sqrt(total)
