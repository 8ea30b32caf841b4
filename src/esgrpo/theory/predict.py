"""Closed-form predictions of the signal + diffusion theory of ES (Hoy, Wang, Pan, arXiv 2604.01499).

Conventions. The project's ES step (train/es.py), with eps_n ~ N(0, I_d), F_n = J(theta + sigma eps_n),
z_n = (F_n - mean F) / (std F + 1e-8) (population std, so sum_n z_n^2 = N):

    theta <- theta + (alpha / N) sum_n z_n eps_n            (1/sigma folded into alpha).

In a direction the reward cannot see, the eps component is independent of the z's, so each step there is
exactly N(0, (alpha^2 / N^2) sum z^2) = N(0, alpha^2 / N) per coordinate: an isotropic random walk with
E||theta_T - theta_0||^2 = alpha^2 d T / N (up to the 1e-8 in the z-score, which only matters when every
member ties; then z = 0 and nothing moves).

Liang et al.'s parametrisation (raw fitness, 1/sigma explicit) is used for the Ornstein-Uhlenbeck part:

    theta <- theta + alpha * g_hat,    g_hat = 1 / (N sigma) sum_n (F_n - b) eps_n,

with a constant baseline b (b = 0: raw fitness). On J = c - 1/2 x^T C x (x = theta - theta*, c = J at the
optimum), E[g_hat] = grad J = -C x exactly, so in C's eigenbasis the mean obeys x <- (1 - alpha lambda) x.
Its noise is derived in `raw_es_step_cov` (exact, state dependent); see that docstring for how it compares
with the paper's (alpha sigma / sqrt N) xi.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

Baseline = Literal["none", "mean"]

# Above this many dimensions the chi moments come from their asymptotic series (lgamma loses digits).
_CHI_SERIES_FROM = 256


# ----------------------------------------------------------------------------------------------
# Diffusion: the norm of the walk


def squared_drift(alpha: float, N: int, t: float | np.ndarray, d: int) -> float | np.ndarray:
    """E||theta_t - theta_0||^2 = alpha^2 d t / N: linear in t (pure random walk, z-scored ES)."""
    out = alpha ** 2 * d * np.asarray(t, dtype=float) / N
    return float(out) if out.ndim == 0 else out


def es_norm(alpha: float, N: int, T: float, d: int) -> float:
    """RMS drift sqrt(E||theta_T - theta_0||^2) = alpha sqrt(d T / N).

    Assumes the walk is isotropic in all d directions (the reward sees a negligible subspace) and
    sum z^2 = N. Per tensor: the same with d = numel. The mean norm E||.|| is slightly smaller
    (alpha sqrt(T/N) E[chi_d] = es_norm * (1 - 1/(4d) + ...)), see `es_norm_spread`.
    """
    return alpha * math.sqrt(d * T / N)


def awd_norm(alpha: float, N: int, T: float, d: int, step: float) -> float:
    """RMS drift of ES with anchored l2 decay (es.anchor_decay l2, step = alpha * lambda; train/anchor.py).

    Each iteration adds the walk's step u_t (E||u||^2 = alpha^2 d / N, as in `es_norm`) and then shrinks the
    offset: x_t = rho (x_{t-1} + u_t), rho = 1 - step, an Ornstein-Uhlenbeck walk in the unconstrained
    directions, so E||x_T||^2 = rho^2 (alpha^2 d / N) (1 - rho^{2T}) / (1 - rho^2). It levels off at
    rho alpha sqrt(d / N) / sqrt(1 - rho^2) (T -> inf) instead of growing as sqrt(T); step -> 0 gives es_norm.
    The same holds for low-rank noise (es.rank): its eps has unit-variance entries too.
    """
    if step == 0:
        return es_norm(alpha, N, T, d)
    rho2 = (1.0 - step) ** 2
    return alpha * math.sqrt(d / N * rho2 * (1.0 - rho2 ** T) / (1.0 - rho2))


def chi_mean(d: float) -> float:
    """E[chi_d] = sqrt(2) Gamma((d+1)/2) / Gamma(d/2) (series in 1/d for large d)."""
    if d >= _CHI_SERIES_FROM:
        x = d / 2
        return math.sqrt(d) * (1 - 1 / (8 * x) + 1 / (128 * x ** 2) + 5 / (1024 * x ** 3) - 21 / (32768 * x ** 4))
    return math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))


def chi_var(d: float) -> float:
    """Var[chi_d] = d - E[chi_d]^2 = 1/2 - 1/(8d) - 1/(16 d^2) + O(d^-3) (series for large d)."""
    if d >= _CHI_SERIES_FROM:
        return 0.5 - 1 / (8 * d) - 1 / (16 * d ** 2)
    return d - chi_mean(d) ** 2


def es_norm_spread(alpha: float, N: int, T: float, d: int) -> dict[str, float]:
    """Spread of ||theta_T - theta_0|| for the pure random walk.

    ||dtheta||^2 N / (alpha^2 T) ~ chi-square(d) exactly (T steps of N(0, alpha^2/N I_d)), so with
    s = alpha sqrt(T / N): ||dtheta|| = s chi_d. Returns
        mean:                 s E[chi_d]                 (exact)
        std:                  s sqrt(d - E[chi_d]^2)     (exact)
        relative_std:         std / mean                 (exact)
        std_leading:          s / sqrt(2)                (leading order in 1/d)
        relative_std_leading: 1 / sqrt(2 d)
    """
    s = alpha * math.sqrt(T / N)
    mean, std = s * chi_mean(d), s * math.sqrt(chi_var(d))
    return {"mean": mean, "std": std, "relative_std": std / mean,
            "std_leading": s / math.sqrt(2), "relative_std_leading": 1 / math.sqrt(2 * d)}


# ----------------------------------------------------------------------------------------------
# Directions


def cosine_with_fixed_direction(d: int, r: int | None = None) -> dict[str, float]:
    """|cos| between an isotropic random-walk update in R^d and a fixed unit direction u.

    cos = w.u / ||w|| with w ~ N(0, s^2 I): cos^2 ~ Beta(1/2, (d-1)/2), so
        mean_abs         = E|cos| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)) = sqrt(2/pi) / E[chi_d]   (exact)
        mean_abs_leading = sqrt(2 / (pi d))
        rms              = sqrt(E[cos^2]) = 1 / sqrt(d)
    With r informative directions (the update's signal part confined to an r-dim subspace M, of size
    comparable to the walk's projection on M), the cosine with an update lying in M is of order
        signal           = sqrt(r / d)    (only returned when r is given).
    If instead ES's signal part is as large as the other update (both solve the task the same way in M),
    the cosine is ~ ||other|| / ||ES update||: compare with the norm ratio, not with sqrt(2/(pi d)).
    """
    out = {"mean_abs": math.sqrt(2 / math.pi) / chi_mean(d), "mean_abs_leading": math.sqrt(2 / (math.pi * d)),
           "rms": 1 / math.sqrt(d)}
    if r is not None:
        out["signal"] = math.sqrt(r / d)
    return out


# ----------------------------------------------------------------------------------------------
# Off-task drift


def offtask_kl_slope(alpha: float, N: int, fisher_trace: float) -> float:
    """d KL_B / dT = 1/2 (alpha^2 / N) tr(F_B) per iteration.

    KL_B(theta_0 + w) ~ 1/2 w^T F_B w (second order around theta_0, where KL_B = 0 and is stationary),
    and E[w w^T] = (alpha^2 T / N) I for the walk, so E[KL_B(T)] = 1/2 (alpha^2 T / N) tr(F_B).
    Only the walk's part counts: if some of task B's stiff directions are task A's (confined by A's
    reward, not diffusing), use the trace of F_B restricted to A's flat subspace, tr(P_perp F_B P_perp).
    """
    return 0.5 * alpha ** 2 / N * fisher_trace


def offtask_kl(alpha: float, N: int, T: float, fisher_trace: float) -> float:
    """E[KL_B(T)] = 1/2 (alpha^2 T / N) tr(F_B): linear in T (see `offtask_kl_slope`)."""
    return offtask_kl_slope(alpha, N, fisher_trace) * T


def hutchinson_samples(matvec: Callable[[np.ndarray], np.ndarray], d: int, n_probes: int, seed: int = 0,
                       batched: bool = False) -> np.ndarray:
    """Per-probe values v^T A v with Rademacher v (each an unbiased estimate of tr A).

    matvec(v) returns A v for v of shape (d,); with batched=True it gets all probes at once as a
    (d, n_probes) matrix and returns A V. For symmetric A, Var[v^T A v] = 2 (||A||_F^2 - sum_i A_ii^2).
    """
    V = np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=(d, n_probes))
    AV = np.asarray(matvec(V)) if batched else np.stack([np.asarray(matvec(V[:, k])) for k in range(n_probes)], 1)
    return np.einsum("ij,ij->j", V, AV.reshape(d, n_probes))


def hutchinson_trace(matvec: Callable[[np.ndarray], np.ndarray], d: int, n_probes: int = 64, seed: int = 0,
                     batched: bool = False) -> float:
    """Hutchinson's estimator tr A ~ (1/K) sum_k v_k^T A v_k, v_k Rademacher (unbiased; e.g. A = F_B)."""
    return float(hutchinson_samples(matvec, d, n_probes, seed, batched).mean())


# ----------------------------------------------------------------------------------------------
# Liang et al.: per-mode Ornstein-Uhlenbeck model on a quadratic


def ou_mean(x0: float | np.ndarray, alpha: float, lam: float | np.ndarray, t: int) -> float | np.ndarray:
    """E[x_t] = (1 - alpha lambda)^t x_0 per eigen-mode (exact for raw-fitness ES: E[g_hat] = grad J)."""
    return (1 - alpha * np.asarray(lam, dtype=float)) ** t * np.asarray(x0, dtype=float)


def ou_stationary_var(alpha: float, lam: float | np.ndarray, step_var: float | np.ndarray) -> float | np.ndarray:
    """Stationary Var[x] = step_var / (alpha lambda (2 - alpha lambda)) of x <- (1 - alpha lambda) x + noise.

    step_var: the per-step noise variance of the mode. Needs 0 < alpha lambda < 2; flat modes (lambda = 0)
    have none (inf is returned): their variance grows as step_var * t.
    """
    lam = np.asarray(lam, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(lam > 0, np.asarray(step_var, dtype=float) / (alpha * lam * (2 - alpha * lam)), np.inf)


def ou_var(t: int | np.ndarray, alpha: float, lam: float | np.ndarray, step_var: float | np.ndarray,
           var0: float = 0.0) -> float | np.ndarray:
    """Exact finite-t variance of x_{t+1} = a x_t + noise, a = 1 - alpha lambda, constant noise variance:

        Var[x_t] = a^{2t} var0 + step_var (1 - a^{2t}) / (1 - a^2),     = var0 + step_var * t if lambda = 0.
    """
    a2 = (1 - alpha * np.asarray(lam, dtype=float)) ** 2
    t = np.asarray(t, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        geom = np.where(a2 == 1, t, (1 - a2 ** t) / (1 - a2))
    return a2 ** t * var0 + np.asarray(step_var, dtype=float) * geom


def liang_stationary_var(alpha: float, sigma: float, N: int, lam: float | np.ndarray) -> float | np.ndarray:
    """The paper's stated stationary variance alpha sigma^2 / (N lambda (2 - alpha lambda)).

    It is `ou_stationary_var` with step_var = alpha^2 sigma^2 / N, i.e. the noise term (alpha sigma/sqrt N) xi.
    For the raw-fitness estimator that noise is not right, see `raw_es_step_cov`.
    """
    return ou_stationary_var(alpha, lam, alpha ** 2 * sigma ** 2 / N)


def raw_es_step_cov(x: np.ndarray, lam: np.ndarray, alpha: float, sigma: float, N: int, j_opt: float = 1.0,
                    baseline: Baseline = "none") -> np.ndarray:
    """Exact covariance of the step alpha g_hat given the state, in C's eigenbasis (derivation below).

    J = c - 1/2 x^T L x (L = diag(lam), c = j_opt), g = grad J = -L x. One member: F = J(x + sigma eps) =
    c' + sigma g.eps - sigma^2/2 q with q = eps^T L eps and c' = J(x) - b. Gaussian moments (Isserlis;
    E[eps_i^6] = 15) give E[(g.eps)^2 eps eps^T] = |g|^2 I + 2 g g^T, E[q eps eps^T] = tr(L) I + 2L,
    E[q^2 eps eps^T] = (tr(L)^2 + 2 tr(L^2)) I + 4 tr(L) L + 8 L^2, odd moments vanish, so with
    h = (F - b) eps / sigma (E h = g):

        Cov[h | x] = (m2 / sigma^2) I + g g^T - 2 c' L + sigma^2 (tr(L) L + 2 L^2),
        m2 = E[(F - b)^2 | x] = c'^2 + sigma^2 |g|^2 - c' sigma^2 tr(L) + sigma^4/4 (tr(L)^2 + 2 tr(L^2)),

    and Cov[alpha g_hat | x] = (alpha^2 / N) Cov[h | x]. baseline="none": b = 0 (raw fitness, c' = J(x));
    baseline="mean": b = E[F | x] = J(x) - sigma^2 tr(L)/2 (c' = sigma^2 tr(L)/2, m2 = Var F =
    sigma^2 |g|^2 + sigma^4 tr(L^2)/2), which leaves Cov[h|x] = (|g|^2 + sigma^2 tr(L^2)/2) I + g g^T + 2 sigma^2 L^2.

    Versus the paper's noise alpha sigma / sqrt(N): with raw fitness the leading term is alpha^2 J(x)^2 /
    (N sigma^2), which scales as 1/sigma^2, not sigma^2; it matches only if J(x*)^2 = sigma^4, i.e. never
    for J(x*) = 1 at small sigma. With the mean baseline, at the optimum the per-mode variance is
    (alpha^2 sigma^2 / N) (tr(L^2)/2 + 2 lam_i^2): the paper's sigma^2 scaling, times a C-dependent factor.
    lam may include zeros (flat modes); tr(L) and tr(L^2) are then over the given modes, which is
    exact because flat modes do not enter them.
    """
    x, lam = np.asarray(x, dtype=float), np.asarray(lam, dtype=float)
    g = -lam * x
    tr1, tr2 = lam.sum(), (lam ** 2).sum()
    jx = j_opt - 0.5 * (lam * x * x).sum()
    c = sigma ** 2 * tr1 / 2 if baseline == "mean" else jx
    m2 = c ** 2 + sigma ** 2 * (g @ g) - c * sigma ** 2 * tr1 + sigma ** 4 / 4 * (tr1 ** 2 + 2 * tr2)
    cov = np.outer(g, g) + np.diag(m2 / sigma ** 2 - 2 * c * lam + sigma ** 2 * (tr1 * lam + 2 * lam ** 2))
    return alpha ** 2 / N * cov


def raw_es_step_var(lam: np.ndarray, alpha: float, sigma: float, N: int, j_opt: float = 1.0,
                    baseline: Baseline = "none", var: np.ndarray | None = None) -> np.ndarray:
    """Per-mode step variance E[Cov[alpha g_hat | x]_ii] over x ~ N(0, diag(var)) (var=None: at the optimum).

    From `raw_es_step_cov`, averaged over x with E[x] = 0 and uncorrelated modes (both exact at
    stationarity: E x_t decays to 0 and the cross-covariances obey M_ij <- (a_i a_j + alpha^2 lam_i lam_j
    / N) M_ij). Only baseline="none" needs a 4th moment, E[(x^T L x)^2], through E[J(x)^2]; it is taken
    Gaussian, (sum lam v)^2 + 2 sum lam^2 v^2 (the one approximation; its term is O(spread^2) relative to c^2).
    """
    lam = np.asarray(lam, dtype=float)
    v = np.zeros_like(lam) if var is None else np.asarray(var, dtype=float)
    tr1, tr2 = lam.sum(), (lam ** 2).sum()
    g2 = lam ** 2 * v  # E[g_i^2]
    if baseline == "mean":
        per_h = g2.sum() + g2 + sigma ** 2 * (tr2 / 2 + 2 * lam ** 2)
    else:
        s = (lam * v).sum()
        ec = j_opt - s / 2                                            # E[J(x)]
        ec2 = j_opt ** 2 - j_opt * s + (s ** 2 + 2 * (lam ** 2 * v ** 2).sum()) / 4  # E[J(x)^2], Gaussian x
        em2 = ec2 + sigma ** 2 * g2.sum() - ec * sigma ** 2 * tr1 + sigma ** 4 / 4 * (tr1 ** 2 + 2 * tr2)
        per_h = em2 / sigma ** 2 + g2 - 2 * ec * lam + sigma ** 2 * (tr1 * lam + 2 * lam ** 2)
    return alpha ** 2 / N * per_h


def raw_es_stationary_var(lam: np.ndarray, alpha: float, sigma: float, N: int, j_opt: float = 1.0,
                          baseline: Baseline = "none", tol: float = 1e-13, max_iter: int = 10_000) -> np.ndarray:
    """Stationary per-mode Var[x_i] of Liang's raw-fitness ES on J = c - 1/2 x^T C x (stiff modes, lam > 0).

    Self-consistent solution of v_i = E[step var_i](v) / (alpha lam_i (2 - alpha lam_i)) (the second-moment
    recursion v <- a^2 v + E[step var](v) at its fixed point), with `raw_es_step_var`. Leading order
    (small sigma, small spread, raw fitness): v_i = alpha c^2 / (N sigma^2 lam_i (2 - alpha lam_i)) -- the
    paper's formula with sigma^2 replaced by c^2 / sigma^2. Flat modes get inf. Pass only the stiff
    eigenvalues if flat ones are many (they do not change the stiff modes' noise).
    """
    lam = np.asarray(lam, dtype=float)
    stiff = lam > 0
    v = np.zeros_like(lam)
    for _ in range(max_iter):
        new = np.where(stiff, ou_stationary_var(alpha, lam, raw_es_step_var(lam, alpha, sigma, N, j_opt, baseline,
                                                                               np.where(stiff, v, 0.0))), 0.0)
        if np.all(np.abs(new - v) <= tol * np.maximum(np.abs(new), 1e-300)):
            v = new
            break
        v = new
    else:
        raise ArithmeticError("raw_es_stationary_var did not converge (alpha too large for a stationary state?)")
    return np.where(stiff, v, np.inf)
