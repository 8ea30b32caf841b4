"""What `esgrpo theory predict|validate|toy` computes: closed forms, a run against them, the toy landscape."""

from __future__ import annotations

import math
from typing import Any

from esgrpo.checkpoints import CheckpointError
from esgrpo.errors import EsgrpoError, brief

# argument -> (its flag, a predicate on its value, what is allowed): the closed forms divide by N and take
# sqrt(d T / N); a NaN would pass straight into the printed JSON.
_FINITE_POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_FLAGS: dict[str, tuple[str, Any, str]] = {
    "alpha": ("--alpha", *_FINITE_POSITIVE),
    "N": ("--N", lambda v: v >= 1, "an integer >= 1"),
    "T": ("--T", lambda v: v >= 0, "an integer >= 0"),
    "d": ("--d", lambda v: v >= 1, "an integer >= 1"),
    "r": ("--r", lambda v: v >= 1, "an integer >= 1"),
    "fisher_trace": ("--fisher-trace", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "grpo_lr": ("--grpo-lr", *_FINITE_POSITIVE),
    "grpo_steps": ("--grpo-steps", lambda v: v >= 1, "an integer >= 1"),
}


def check_flags(**values: Any) -> None:
    """Every given theory argument within its range, or one line naming the flag and the value."""
    for name, value in values.items():
        flag, ok, allowed = _FLAGS[name]
        if value is not None and not ok(value):
            raise EsgrpoError(f"theory {flag} = {brief(value)} is invalid; allowed: {allowed}")


def predictions(alpha: float | None, N: int | None, T: int | None, d: int | None, r: int | None = None,
                fisher_trace: float | None = None, grpo_lr: float | None = None, grpo_steps: int | None = None,
                grpo_schedule: str = "linear") -> dict[str, Any]:
    """The closed forms for one (alpha, N, T, d); with GRPO's lr and steps also its AdamW random-walk norm and
    the predicted ES/GRPO norm ratio (theory/adamw.py)."""
    from esgrpo.theory import predict

    if None in (alpha, N, T, d):
        raise EsgrpoError("theory predict needs --alpha, --N, --T and --d")
    check_flags(alpha=alpha, N=N, T=T, d=d, r=r, fisher_trace=fisher_trace, grpo_lr=grpo_lr, grpo_steps=grpo_steps)
    out: dict[str, Any] = {"es_norm": predict.es_norm(alpha, N, T, d),
                           "es_norm_spread": predict.es_norm_spread(alpha, N, T, d),
                           "squared_drift_per_iteration": predict.squared_drift(alpha, N, 1, d),
                           "cosine_with_fixed_direction": predict.cosine_with_fixed_direction(d, r)}
    if fisher_trace is not None:
        out["offtask_kl"] = predict.offtask_kl(alpha, N, T, fisher_trace)
    if grpo_lr is not None and grpo_steps is not None:
        from esgrpo.theory.adamw import grpo_norm, schedule

        out["grpo_norm"] = grpo_norm(schedule(grpo_lr, grpo_steps, grpo_schedule), d)
        out["es_grpo_norm_ratio"] = out["es_norm"] / out["grpo_norm"]
    return out


def validation(run_dir: str | None, alpha: float | None, N: int | None, direction: str | None = None) -> dict[str, Any]:
    """An ES run's walk, replayed from its log, against the predictions (per-tensor detail dropped)."""
    from esgrpo.theory.validate import walk_drift

    if run_dir is None or alpha is None or N is None:
        raise EsgrpoError("theory validate needs RUN_DIR, --alpha and --N (the run's ES settings)")
    check_flags(alpha=alpha, N=N)
    try:
        out = walk_drift(run_dir, alpha, N, direction=direction)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        raise EsgrpoError(f"{run_dir}: not a readable ES run ({e})") from e
    out.pop("per_tensor")
    return out


def toy(seed: int = 0) -> dict[str, Any]:
    """The quadratic landscape's four phenomena (scalars only)."""
    from esgrpo.theory.toy import four_phenomena

    return {k: v for k, v in four_phenomena(seed=seed).items() if not hasattr(v, "shape")}
