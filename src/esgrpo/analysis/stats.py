"""Intervals for the numbers a study reports: over seeds (Student t) and over test examples (bootstrap).

Over seeds, a number x_1..x_n (one per seed) is reported as its mean with a 95% interval

    mean +- t_{0.975, n-1} * sd / sqrt(n),   sd the sample standard deviation (n - 1 in the denominator),

the Student-t interval, which assumes the per-seed numbers are roughly normal; with 3 seeds t = 4.30, so
an interval is 2.5 sample standard deviations wide on each side. With one seed there is no interval.

Over test examples (one model or one interpolation path), the interval is a paired percentile bootstrap:
resample the examples with replacement, recompute the statistic on the same resampled examples at every
point of the path, take the 2.5% and 97.5% percentiles.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with df degrees of freedom (Simpson's rule on the density; |error| < 1e-9)."""
    if df < 1:
        raise ValueError(f"t_cdf: df must be >= 1, got {df}")
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    # Integrate the density over [0, x] in u = atan(t) (a smooth integrand on a bounded interval even for df 1).
    b = math.atan(x)
    n = 2000  # even
    h = b / n

    def f(u: float) -> float:
        t = math.tan(u)
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df)) * (1 + t * t)

    s = f(0.0) + f(b) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
    return 0.5 + s * h / 3


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t (bisection on t_cdf), e.g. t_quantile(0.975, 2) = 4.303."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """{"mean", "lo", "hi", "sd", "n", "values"}: the Student-t interval over the given values (missing ones,
    None or NaN, left out). With fewer than two values lo and hi are None."""
    xs = [float(v) for v in values if v is not None and v == v]
    n = len(xs)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "sd": None, "n": 0, "values": []}
    mean = math.fsum(xs) / n
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "sd": None, "n": 1, "values": xs}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": n, "values": xs}


def excludes(iv: dict[str, Any], value: float = 0.0) -> bool | None:
    """Whether an interval lies entirely on one side of `value` (None: no interval)."""
    if iv.get("lo") is None or iv.get("hi") is None:
        return None
    return iv["lo"] > value or iv["hi"] < value


def bootstrap_interval(per_example: Sequence[Sequence[float]], statistic: Callable[[list[float]], float],
                       resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Paired percentile bootstrap of `statistic` over examples.

    per_example[k][i]: example i's value at point k (e.g. its reward at interpolation point k); every point
    holds the same examples. statistic: the per-point means (one per k) -> a number (e.g. a barrier).
    Returns {"value" (on all examples), "lo", "hi", "resamples", "n"}."""
    n = len(per_example[0]) if per_example else 0
    if n == 0 or any(len(col) != n for col in per_example):
        raise ValueError("bootstrap_interval: every point needs the same, non-zero number of examples")

    def stat(idx: Sequence[int]) -> float:
        return statistic([math.fsum(col[i] for i in idx) / len(idx) for col in per_example])

    rng = random.Random(seed)
    lo, hi = percentile_interval([stat([rng.randrange(n) for _ in range(n)]) for _ in range(resamples)], confidence)
    return {"value": stat(range(n)), "lo": lo, "hi": hi, "resamples": resamples, "n": n}


def percentile_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The (1 - confidence) / 2 and (1 + confidence) / 2 order statistics of bootstrap `values` (nearest rank)."""
    if not values:
        raise ValueError("percentile_interval: no values")
    v = sorted(values)
    q = (1 - confidence) / 2
    pick = lambda p: v[min(len(v) - 1, max(0, round(p * (len(v) - 1))))]  # noqa: E731
    return pick(q), pick(1 - q)
