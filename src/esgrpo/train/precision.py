"""The precision audit of an update: what the weights' dtype kept of the intended float32 update.

Both trainers compute their update in float32 (ES: the sum of the members' noise; GRPO: AdamW on float32
masters) and round it once into the weights. For float32 weights the audit reads 1 / 1; for bf16 it says
how much of the update the rounding kept (arXiv 2604.01499's public code adds in bf16 without masters).
"""

from __future__ import annotations

import math


def precision_audit(sums: dict[str, float]) -> dict[str, float]:
    """The applied update against the intended one (sums of squares, their dot product, entries changed):
    intended_norm, update_cosine (1 = the rounding kept the direction), update_norm_ratio (applied /
    intended) and changed_frac (share of weights that changed at all)."""
    applied, intended = math.sqrt(sums["applied"]), math.sqrt(sums["intended"])
    return {"intended_norm": intended,
            "update_cosine": sums["dot"] / (applied * intended) if applied and intended else 0.0,
            "update_norm_ratio": applied / intended if intended else 0.0,
            "changed_frac": sums["changed"] / sums["numel"] if sums["numel"] else 0.0}
