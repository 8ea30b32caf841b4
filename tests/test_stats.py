"""analysis/stats.py: the Student-t quantile against published table values, intervals computed by hand."""

from __future__ import annotations

import math

import pytest

from esgrpo.analysis.stats import (
    bootstrap_interval,
    excludes,
    mean_interval,
    percentile_interval,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize("df,q", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_the_published_table(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-3)
    assert t_cdf(q, df) == pytest.approx(0.975, abs=1e-4)


def test_t_quantile_is_symmetric_and_approaches_the_normal():
    assert t_quantile(0.025, 3) == pytest.approx(-t_quantile(0.975, 3), abs=1e-9)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError, match="p must lie"):
        t_quantile(1.0, 3)


def test_mean_interval_is_the_student_t_interval_by_hand():
    xs = [0.30, 0.36, 0.42]
    iv = mean_interval(xs)
    mean = sum(xs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / 2)
    half = t_quantile(0.975, 2) * sd / math.sqrt(3)
    assert iv["mean"] == pytest.approx(mean) and iv["sd"] == pytest.approx(sd)
    assert (iv["lo"], iv["hi"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert iv["n"] == 3 and excludes(iv, 0.0) is True and excludes(iv, 0.36) is False


def test_mean_interval_drops_missing_values_and_gives_no_interval_for_one():
    iv = mean_interval([0.5, None, float("nan")])
    assert iv["mean"] == 0.5 and iv["n"] == 1 and iv["lo"] is None and excludes(iv) is None
    assert mean_interval([])["mean"] is None


def test_percentile_interval_picks_the_nearest_rank_order_statistics():
    # 41 values 0..40, shuffled: the ranks 0.025 * 40 = 1 and 0.975 * 40 = 39 of the sorted list; at 50%: 10 and 30
    values = [float((17 * k) % 41) for k in range(41)]
    assert percentile_interval(values) == (1.0, 39.0)
    assert percentile_interval(values, confidence=0.5) == (10.0, 30.0)
    assert percentile_interval([3.0]) == (3.0, 3.0)
    with pytest.raises(ValueError, match="no values"):
        percentile_interval([])


def test_bootstrap_interval_is_paired_and_contains_the_full_sample_value():
    # two points with identical per-example values: every resample gives a difference of exactly 0
    col = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    same = bootstrap_interval([col, col], lambda m: m[1] - m[0], resamples=200)
    assert same["value"] == same["lo"] == same["hi"] == 0.0
    # a real difference: the interval brackets the full-sample value
    other = [1.0] * 6 + [0.0] * 2
    iv = bootstrap_interval([col, other], lambda m: m[1] - m[0], resamples=500, seed=1)
    assert iv["value"] == pytest.approx(0.25) and iv["lo"] <= 0.25 <= iv["hi"] and iv["lo"] < iv["hi"]
    assert iv == bootstrap_interval([col, other], lambda m: m[1] - m[0], resamples=500, seed=1)  # seeded
    with pytest.raises(ValueError, match="same, non-zero"):
        bootstrap_interval([col, other[:3]], lambda m: 0.0)
