"""The signal + diffusion predictions (esgrpo.theory.predict) checked on the quadratic toy (esgrpo.theory.toy).

Statistical tolerance: every Monte-Carlo mean is compared to its closed form within Z = 4 standard errors,
the standard error computed here from independent repetitions (rep-level values; time averages within a
repetition are reduced to one number per repetition first, so autocorrelation does not fake precision).
At Z = 4 a correct prediction fails a comparison with probability ~6e-5; all runs are seeded.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from esgrpo.theory.predict import (
    chi_mean,
    chi_var,
    cosine_with_fixed_direction,
    es_norm,
    es_norm_spread,
    hutchinson_samples,
    hutchinson_trace,
    liang_stationary_var,
    offtask_kl,
    offtask_kl_slope,
    ou_mean,
    ou_stationary_var,
    ou_var,
    raw_es_stationary_var,
    raw_es_step_cov,
    raw_es_step_var,
    squared_drift,
)
from esgrpo.theory.toy import Quadratic, four_phenomena, run_es, run_es_raw

Z = 4.0


def assert_within(estimate: np.ndarray, se: np.ndarray, expected: np.ndarray, z: float = Z) -> None:
    """|estimate - expected| <= z * se elementwise (the 1e-12 covers exact, zero-variance entries)."""
    estimate, se, expected = np.broadcast_arrays(np.asarray(estimate), np.asarray(se), np.asarray(expected))
    bad = np.abs(estimate - expected) > z * se + 1e-12
    assert not bad.any(), f"estimate {estimate[bad]} vs expected {expected[bad]} (se {se[bad]})"


def mean_se(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and its standard error along axis."""
    return samples.mean(axis), samples.std(axis, ddof=1) / math.sqrt(samples.shape[axis])


def per_rep_slopes(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y[:, rep] against t, for every rep."""
    tc = t - t.mean()
    return tc @ (y - y.mean(0)) / (tc @ tc)


def r_squared(t: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the least-squares line through (t, y)."""
    return float(np.corrcoef(t, y)[0, 1] ** 2)


# ----------------------------------------------------------------------------------------------
# Diffusion: z-scored ES where the reward sees 1 direction out of d = 200 (a wholly flat landscape ties every
# member, z = 0, and nothing moves; the flat part below is the walk the theory describes)

FLAT = dict(d=200, r=1, alpha=0.05, sigma=0.1, N=10, T=60, reps=400)


@pytest.fixture(scope="module")
def flat_walk():
    p = FLAT
    problem = Quadratic(p["d"], p["r"], stiff=1.0, seed=0, offset=0.0)
    return run_es(problem, p["alpha"], p["sigma"], p["N"], p["T"], seed=1, reps=p["reps"])


def test_es_norm_matches_alpha_sqrt_dT_over_N(flat_walk):
    p = FLAT
    d_flat = p["d"] - p["r"]
    flat_sq = flat_walk.flat_sq_drift[-1]
    # the flat part is an exact random walk: E||.||^2 = alpha^2 d T / N, E||.|| = alpha sqrt(T/N) E[chi_d]
    assert_within(*mean_se(flat_sq), squared_drift(p["alpha"], p["N"], p["T"], d_flat))
    assert_within(*mean_se(np.sqrt(flat_sq)), es_norm_spread(p["alpha"], p["N"], p["T"], d_flat)["mean"])
    # the whole update: one informative direction out of 200 hardly changes the norm
    rms = math.sqrt(flat_walk.sq_drift[-1].mean())
    assert rms == pytest.approx(es_norm(p["alpha"], p["N"], p["T"], p["d"]), rel=0.03)
    # the paper's check: d = 4.02e9, alpha = 7.5e-4, N = 30 gives 86.9 / 122.8 / 150.4 / 173.7 (d is rounded)
    paper = [es_norm(7.5e-4, 30, T, 4.02e9) for T in (100, 200, 300, 400)]
    assert paper == pytest.approx([86.9, 122.8, 150.4, 173.7], rel=1e-3)


def test_squared_drift_is_linear_in_T(flat_walk):
    p = FLAT
    t = np.arange(p["T"] + 1, dtype=float)
    assert r_squared(t, flat_walk.sq_drift.mean(1)) > 0.99
    slopes = per_rep_slopes(t, flat_walk.flat_sq_drift)
    assert_within(*mean_se(slopes), squared_drift(p["alpha"], p["N"], 1, p["d"] - p["r"]))
    assert np.allclose(squared_drift(p["alpha"], p["N"], t, p["d"]), p["alpha"] ** 2 * p["d"] * t / p["N"])


def test_norm_spread_matches_chi_square(flat_walk):
    p = FLAT
    k = p["d"] - p["r"]
    chi2 = flat_walk.flat_sq_drift[-1] * p["N"] / (p["alpha"] ** 2 * p["T"])   # ~ chi-square(k) exactly
    R = chi2.size
    assert_within(chi2.mean(), math.sqrt(2 * k / R), k)
    assert_within(chi2.var(ddof=1), math.sqrt((8 * k * k + 48 * k) / R), 2 * k)   # Var of a sample variance
    spread = es_norm_spread(p["alpha"], p["N"], p["T"], k)
    norms = np.sqrt(flat_walk.flat_sq_drift[-1])
    assert_within(norms.std(ddof=1), spread["std"] / math.sqrt(2 * (R - 1)), spread["std"])
    assert spread["relative_std"] == pytest.approx(spread["relative_std_leading"], rel=0.01)
    # exact chi moments at small d, and the large-d series joining them
    assert chi_mean(1) == pytest.approx(math.sqrt(2 / math.pi)) and chi_var(1) == pytest.approx(1 - 2 / math.pi)
    assert chi_mean(255) == pytest.approx(chi_mean(256) - 0.5 / math.sqrt(256), rel=1e-4)
    assert chi_var(4.02e9) == pytest.approx(0.5) and es_norm_spread(7.5e-4, 30, 100, 4.02e9)["std"] < 0.004


def test_random_walk_cosine_matches_sqrt_2_over_pi_d():
    d, R = 50, 20_000
    w = np.random.default_rng(5).standard_normal((R, d))
    cos = w[:, 0] / np.linalg.norm(w, axis=1)          # any fixed unit direction, by isotropy
    pred = cosine_with_fixed_direction(d, r=4)
    assert_within(*mean_se(np.abs(cos)), pred["mean_abs"])
    assert_within(*mean_se(cos ** 2), pred["rms"] ** 2)
    assert pred["mean_abs"] == pytest.approx(pred["mean_abs_leading"], rel=0.01)
    assert pred["signal"] == pytest.approx(math.sqrt(4 / d))
    assert cosine_with_fixed_direction(2)["mean_abs"] == pytest.approx(2 / math.pi)


# ----------------------------------------------------------------------------------------------
# Liang et al.'s Ornstein-Uhlenbeck model: raw-fitness ES on J = 1 - 1/2 x^T C x

LAM = np.array([1.0, 2.0, 4.0])
OU = dict(d=8, alpha=0.05, sigma=0.2, N=10)


def test_raw_es_step_covariance_matches_derivation():
    lam = np.array([0.5, 1.0, 3.0, 0.0])
    x, sigma, M = np.array([0.3, -0.2, 0.1, 5.0]), 0.4, 200_000
    rng = np.random.default_rng(6)
    for baseline in ("none", "mean"):
        eps = rng.standard_normal((M, lam.size))
        F = 1.0 - 0.5 * (lam * (x + sigma * eps) ** 2).sum(1)
        b = 1.0 - 0.5 * (lam * x * x).sum() - sigma ** 2 * lam.sum() / 2 if baseline == "mean" else 0.0
        h = (F - b)[:, None] * eps / sigma                                  # one member, alpha = N = 1
        assert_within(*mean_se(h), -lam * x)                                # unbiased: E h = grad J
        hc = h - h.mean(0)
        prods = hc[:, :, None] * hc[:, None, :]
        assert_within(*mean_se(prods), raw_es_step_cov(x, lam, 1.0, sigma, 1, 1.0, baseline))


def test_ou_mean_decay_matches_closed_form():
    q = Quadratic(OU["d"], LAM.size, LAM, seed=0, offset=1.0)
    run = run_es_raw(q, OU["alpha"], OU["sigma"], OU["N"], 60, seed=2, reps=2000)
    x0 = q.coords(np.zeros(OU["d"]))
    for t in (0, 5, 10, 20, 40, 60):
        assert_within(*mean_se(run.x[t]), ou_mean(x0, OU["alpha"], LAM, t))


@functools.cache
def stationary_run(baseline: str):
    """Raw-fitness ES started from its predicted stationary law (stiff modes), flat coordinates at 0."""
    q = Quadratic(OU["d"], LAM.size, LAM, seed=0, offset=0.0)
    v = raw_es_stationary_var(LAM, OU["alpha"], OU["sigma"], OU["N"], 1.0, baseline)
    reps = 2000
    x = np.random.default_rng(7).standard_normal((reps, LAM.size)) * np.sqrt(v)
    run = run_es_raw(q, OU["alpha"], OU["sigma"], OU["N"], 300, seed=8, reps=reps, theta0=x @ q.stiff_basis.T,
                     baseline=baseline)
    return run, v


@pytest.mark.parametrize("baseline", ["none", "mean"])
def test_ou_stationary_variance_matches_closed_form(baseline):
    run, v = stationary_run(baseline)
    x2 = (run.x[60:] ** 2).mean(0)                     # time average per rep (after 60 >> 1/(2 alpha lam) steps)
    est, se = mean_se(x2)
    assert_within(est, se, v)
    # the paper's alpha sigma^2 / (N lam (2 - alpha lam)) is not this estimator's variance: raw fitness has
    # step noise ~ alpha^2 J^2 / (N sigma^2), the oracle baseline alpha^2 sigma^2 (tr C^2 / 2 + 2 lam^2) / N
    paper = liang_stationary_var(OU["alpha"], OU["sigma"], OU["N"], LAM)
    assert np.all(est / paper > 10)
    if baseline == "mean":   # to leading order the sigma^2 form, times tr(C^2)/2 + 2 lam^2 (+ |g|^2 terms)
        factor = (LAM ** 2).sum() / 2 + 2 * LAM ** 2
        assert v == pytest.approx(ou_stationary_var(OU["alpha"], LAM, OU["alpha"] ** 2 * OU["sigma"] ** 2 / OU["N"]
                                                    * factor), rel=0.1)
    else:                    # leading order alpha c^2 / (N sigma^2 lam (2 - alpha lam)) is only that
        lead = ou_stationary_var(OU["alpha"], LAM, OU["alpha"] ** 2 / (OU["N"] * OU["sigma"] ** 2))
        assert np.all(np.abs(est - lead) > 10 * se)


def test_flat_modes_diffuse_linearly():
    run, v = stationary_run("none")
    t = np.arange(run.flat_sq_drift.shape[0], dtype=float)
    n_flat = OU["d"] - LAM.size
    assert r_squared(t, run.flat_sq_drift.mean(1)) > 0.99
    lam_all = np.concatenate([LAM, [0.0]])
    step = raw_es_step_var(lam_all, OU["alpha"], OU["sigma"], OU["N"], 1.0, "none", np.concatenate([v, [0.0]]))[-1]
    assert_within(*mean_se(per_rep_slopes(t, run.flat_sq_drift)), n_flat * step)
    assert ou_var(100, OU["alpha"], 0.0, step) == pytest.approx(100 * step)
    assert ou_stationary_var(OU["alpha"], 0.0, step) == np.inf


def test_ou_var_matches_recursion():
    alpha, lam, s2, v0 = 0.1, np.array([0.0, 0.5, 3.0]), 0.7, 0.2
    var = np.full(3, v0)
    for t in range(1, 50):
        var = (1 - alpha * lam) ** 2 * var + s2
        assert np.allclose(ou_var(t, alpha, lam, s2, v0), var)
    assert np.allclose(ou_var(10_000, alpha, lam[1:], s2), ou_stationary_var(alpha, lam[1:], s2))


# ----------------------------------------------------------------------------------------------
# Off-task drift and the Fisher trace


def test_offtask_kl_slope_matches_half_alpha2_over_N_trace_FB():
    alpha, sigma, N, T, reps = 0.05, 0.1, 10, 100, 400
    A = Quadratic(60, 3, 1.0, seed=3, offset=0.0)
    B = A.task_b(k=1, r_b=6, seed=4)                 # 1 direction shared with A (confined), 5 flat for A
    assert A.flat_trace(B) == pytest.approx(5.0) and B.fisher_trace == pytest.approx(6.0)
    run = run_es(A, alpha, sigma, N, T, seed=9, reps=reps, watch=[B])
    kl = B.j_opt - run.J_watch[:, :, 0]               # = 1/2 w^T C_B w (B is solved at theta_0)
    t = np.arange(T + 1, dtype=float)
    late = t >= 20                                    # A's stiff modes have settled (a few steps)
    assert_within(*mean_se(per_rep_slopes(t[late], kl[late])), offtask_kl_slope(alpha, N, A.flat_trace(B)))
    assert offtask_kl(alpha, N, T, 5.0) == pytest.approx(T * offtask_kl_slope(alpha, N, 5.0))


def test_hutchinson_trace_is_unbiased():
    A = Quadratic(60, 3, 1.0, seed=3)
    B = A.task_b(k=1, r_b=6, stiff=[0.5, 1.0, 2.0, 3.0, 4.0, 5.0], seed=4)
    M = A.flat_part(A.flat_part(B.C).T)                # P_perp C_B P_perp, the trace the walk feels
    n = 20_000
    vals = hutchinson_samples(lambda V: M @ V, M.shape[0], n, seed=10, batched=True)
    var = 2 * ((M ** 2).sum() - (np.diag(M) ** 2).sum())   # exact Var[v^T M v], Rademacher v
    assert_within(vals.mean(), math.sqrt(var / n), A.flat_trace(B))
    assert vals.var(ddof=1) == pytest.approx(var, rel=0.1)
    one_by_one = hutchinson_trace(lambda v: M @ v, M.shape[0], n_probes=16, seed=11)
    assert one_by_one == pytest.approx(hutchinson_trace(lambda V: M @ V, M.shape[0], 16, seed=11, batched=True))


# ----------------------------------------------------------------------------------------------
# The four phenomena on the toy (ES vs gradient ascent at matched J_A)


@pytest.fixture(scope="module")
def phenomena():
    return four_phenomena()   # d = 500, r = 4, T = 200, N = 30, 32 reps


def test_toy_shows_no_barrier_and_near_orthogonality(phenomena):
    ph = phenomena
    assert ph["J_A_ga"] == pytest.approx(ph["J_A_es"], abs=1e-5)       # matched task reward
    assert ph["norm_es"] == pytest.approx(ph["norm_es_predicted"], rel=0.05)
    assert ph["norm_ratio"] > 5                                          # (1) ES norm >> GA norm
    assert abs(ph["cos"]) < 4 * ph["cos_random"]                         # (2) near orthogonal
    assert abs(ph["cos"]) <= ph["cos_stiff_share"] + 1e-12
    assert ph["barrier"] <= 1e-12                                        # (3) no barrier on the line
    assert ph["offset_flat_share"] > 0.99                                # the offset is where J_A is blind


def test_offtask_drift_grows_linearly_with_T_for_es(phenomena):
    ph = phenomena
    assert ph["offtask_r2"] > 0.95
    assert_within(ph["offtask_slope"], ph["offtask_slope_se"], ph["offtask_slope_predicted"])
    assert ph["offtask_es"] > 3 * ph["offtask_ga"]                       # (4) ES forgets more
    curve = ph["offtask_es_curve"]
    assert curve[-1] > 1.5 * curve[len(curve) // 2]                      # more iterations, more drift
