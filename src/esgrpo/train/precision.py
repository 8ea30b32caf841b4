"""The precision audit of an update: what the weights' dtype kept of the intended float32 update.

Both trainers compute their update in float32 (ES: the sum of the members' noise; GRPO: AdamW on float32
masters) and round it once into the weights. For float32 weights the audit reads 1 / 1; for bf16 it says
how much of the update the rounding kept (arXiv 2604.01499's public code adds in bf16 without masters).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def precision_audit(sums: dict[str, float]) -> dict[str, float]:
    """The applied update against the intended one (sums of squares, their dot product, entries changed):
    intended_norm, update_cosine (1 = the rounding kept the direction), update_norm_ratio (applied /
    intended) and changed_frac (share of weights that changed at all)."""
    applied, intended = math.sqrt(sums["applied"]), math.sqrt(sums["intended"])
    return {"intended_norm": intended,
            "update_cosine": sums["dot"] / (applied * intended) if applied and intended else 0.0,
            "update_norm_ratio": applied / intended if intended else 0.0,
            "changed_frac": sums["changed"] / sums["numel"] if sums["numel"] else 0.0}


class AuditSums:
    """Running sums over the tensors (or chunks) of one update: the applied update's squared norm, and for
    the audit the intended one's, their dot product and the entries changed. One accumulator for both
    trainers and both numerics, so every update is audited the same way."""

    def __init__(self, audit: bool = True) -> None:
        self.audit = audit  # False: only the applied norm (the ES hot path without an audit)
        self.sums = dict.fromkeys(("applied", "intended", "dot", "changed", "numel"), 0.0)

    def add(self, applied: Tensor, intended: Tensor | None) -> None:
        """applied: the change the weights got, in float32; intended: the float32 update, or None when the
        weights took it unrounded (float32 weights: intended is applied, no second pass needed)."""
        s = self.sums
        sq = float(torch.linalg.vector_norm(applied)) ** 2
        s["applied"] += sq
        if not self.audit:
            return
        if intended is None:
            s["intended"] += sq
            s["dot"] += sq
        else:
            s["intended"] += float(torch.linalg.vector_norm(intended)) ** 2
            s["dot"] += float((applied * intended).sum(dtype=torch.float64))
        s["changed"] += int(torch.count_nonzero(applied))

    def count(self, numel: int) -> None:
        """Count `numel` weights of the update (those of a skipped tensor too)."""
        self.sums["numel"] += numel

    @property
    def applied_norm(self) -> float:
        return math.sqrt(self.sums["applied"])

    def result(self) -> dict[str, float]:
        """precision_audit of the sums."""
        return precision_audit(self.sums)
