"""What `esgrpo theory predict|validate|toy` computes: closed forms, a run against them, the toy landscape."""

from __future__ import annotations

from typing import Any

from esgrpo.checkpoints import CheckpointError
from esgrpo.errors import EsgrpoError


def predictions(alpha: float | None, N: int | None, T: int | None, d: int | None, r: int | None = None,
                fisher_trace: float | None = None, grpo_lr: float | None = None, grpo_steps: int | None = None,
                grpo_schedule: str = "linear") -> dict[str, Any]:
    """The closed forms for one (alpha, N, T, d); with GRPO's lr and steps also its AdamW random-walk norm and
    the predicted ES/GRPO norm ratio (theory/adamw.py)."""
    from esgrpo.theory import predict

    if None in (alpha, N, T, d):
        raise EsgrpoError("theory predict needs --alpha, --N, --T and --d")
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
