"""A quadratic toy landscape where the signal + diffusion theory is exact, and ES / gradient ascent on it.

Task A: J_A(theta) = c - 1/2 (theta - theta*)^T C (theta - theta*), C = U diag(lam) U^T with U (d x r)
orthonormal: r stiff directions, d - r flat ones (the reward cannot see them). theta_0 = 0 and theta* is
`offset` away from it inside the stiff subspace, so there is something to learn. Task B (`task_b`) is an
off-task already solved at theta_0 (its optimum is theta_0): k of its stiff directions are task A's, the
others are flat for A, so 1/2 w^T C_B w = J_B(theta_0) - J_B(theta_0 + w) stands in for the off-task KL.

Simulators are vectorised over `reps` independent repetitions and seeded. ES draws the full noise
eps ~ N(0, I_d) per member, exactly as the project's trainer does (no shortcut through the flat subspace).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from esgrpo.theory.predict import Baseline, cosine_with_fixed_direction, es_norm, offtask_kl_slope

Step = Callable[[np.ndarray], np.ndarray]  # theta (reps, d) -> update (reps, d)


def _orthonormal(a: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning a's columns (QR with positive diagonal)."""
    q, r = np.linalg.qr(a)
    return q * np.sign(np.diag(r))


class Quadratic:
    """J(theta) = j_opt - 1/2 sum_i lam_i (u_i . (theta - theta*))^2 with orthonormal stiff directions u_i."""

    def __init__(self, d: int, r: int, stiff: float | Sequence[float] = 1.0, seed: int = 0, offset: float = 0.0,
                 j_opt: float = 1.0, *, stiff_basis: np.ndarray | None = None, theta_star: np.ndarray | None = None):
        """d dimensions, r stiff ones with eigenvalues `stiff` (one value or r values); a random (seeded)
        orthonormal stiff basis unless given; theta* = offset * (a random unit vector in the stiff
        subspace) unless given."""
        rng = np.random.default_rng(seed)
        self.d, self.r, self.j_opt = d, r, float(j_opt)
        self.eigenvalues = np.broadcast_to(np.asarray(stiff, dtype=float), (r,)).copy()
        self.stiff_basis = _orthonormal(rng.standard_normal((d, r))) if stiff_basis is None else stiff_basis
        if theta_star is None:
            direction = rng.standard_normal(r)
            theta_star = offset * self.stiff_basis @ (direction / np.linalg.norm(direction))
        self.theta_star = np.asarray(theta_star, dtype=float)

    @property
    def C(self) -> np.ndarray:
        """The (d, d) curvature U diag(lam) U^T (the Fisher of this toy 'task')."""
        return (self.stiff_basis * self.eigenvalues) @ self.stiff_basis.T

    @property
    def fisher_trace(self) -> float:
        """tr C = sum lam."""
        return float(self.eigenvalues.sum())

    def coords(self, theta: np.ndarray) -> np.ndarray:
        """Stiff eigen-coordinates x = U^T (theta - theta*), shape (..., r)."""
        return (theta - self.theta_star) @ self.stiff_basis

    def J(self, theta: np.ndarray) -> np.ndarray:
        """Reward, over the last axis of theta."""
        x = self.coords(theta)
        return self.j_opt - 0.5 * (self.eigenvalues * x * x).sum(-1)

    def grad(self, theta: np.ndarray) -> np.ndarray:
        """grad J = -C (theta - theta*)."""
        return -(self.coords(theta) * self.eigenvalues) @ self.stiff_basis.T

    def flat_part(self, w: np.ndarray) -> np.ndarray:
        """Projection of w onto the flat subspace (I - U U^T) w."""
        return w - (w @ self.stiff_basis) @ self.stiff_basis.T

    def task_b(self, k: int, r_b: int, stiff: float | Sequence[float] = 1.0, seed: int = 1) -> Quadratic:
        """An off-task solved at theta_0 = 0: k of this task's stiff directions plus r_b - k flat ones."""
        rng = np.random.default_rng(seed)
        shared = self.stiff_basis[:, rng.permutation(self.r)[:k]]
        fresh = self.flat_part(rng.standard_normal((self.d, r_b - k)).T).T
        basis = np.concatenate([shared, _orthonormal(fresh)], axis=1)
        return Quadratic(self.d, r_b, stiff, j_opt=1.0, stiff_basis=basis, theta_star=np.zeros(self.d))

    def flat_trace(self, other: Quadratic) -> float:
        """tr(P_perp C_other P_perp), P_perp this task's flat projector: the Fisher trace the walk feels."""
        flat_share = 1 - ((self.stiff_basis.T @ other.stiff_basis) ** 2).sum(0)
        return float((other.eigenvalues * flat_share).sum())


@dataclass
class Run:
    """A simulated optimisation (reps repetitions; arrays indexed [t, rep, ...], t = 0..T)."""

    theta: np.ndarray                 # (reps, d) final parameters
    x: np.ndarray                     # (T+1, reps, r) stiff coordinates U^T (theta_t - theta*)
    sq_drift: np.ndarray              # (T+1, reps) ||theta_t - theta_0||^2
    flat_sq_drift: np.ndarray         # (T+1, reps) ||P_perp (theta_t - theta_0)||^2
    J: np.ndarray                     # (T+1, reps) reward of the problem
    J_watch: np.ndarray               # (T+1, reps, n_watch) rewards of the watched problems
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)  # t -> (reps, d)


def _simulate(problem: Quadratic, step: Step, T: int, reps: int, theta0: np.ndarray | None, watch: Sequence[Quadratic],
              snapshots: Sequence[int], until_J: float | None = None) -> Run:
    """Run theta <- theta + step(theta, t) and record the Run's traces (stop early once J >= until_J)."""
    theta = np.zeros((reps, problem.d)) if theta0 is None else \
        np.broadcast_to(np.asarray(theta0, dtype=float), (reps, problem.d)).copy()
    start = theta.copy()
    rows: list[tuple[np.ndarray, ...]] = []
    snaps: dict[int, np.ndarray] = {}

    def record(t: int) -> None:
        w = theta - start
        sq = (w * w).sum(-1)
        flat = sq - ((w @ problem.stiff_basis) ** 2).sum(-1)
        J_w = np.stack([q.J(theta) for q in watch], -1) if watch else np.zeros((reps, 0))
        rows.append((problem.coords(theta), sq, flat, problem.J(theta), J_w))
        if t in snapshots:
            snaps[t] = theta.copy()

    record(0)
    for t in range(T):
        if until_J is not None and rows[-1][3].min() >= until_J:
            break
        theta = theta + step(theta)
        record(t + 1)
    x, sq, flat, J, J_w = (np.stack(col) for col in zip(*rows, strict=True))
    return Run(theta, x, sq, flat, J, J_w, snaps)


def _es_step(problem: Quadratic, alpha: float, sigma: float, N: int, rng: np.random.Generator, zscore: bool,
             baseline: Baseline) -> Step:
    """One ES update for every repetition; F_n is evaluated in the stiff coordinates (J only sees those)."""
    lam, U = problem.eigenvalues, problem.stiff_basis

    def step(theta: np.ndarray) -> np.ndarray:
        eps = rng.standard_normal((theta.shape[0], N, problem.d))
        y = problem.coords(theta)[:, None, :] + sigma * (eps @ U)
        F = problem.j_opt - 0.5 * (lam * y * y).sum(-1)                                 # (reps, N)
        if zscore:
            coef = alpha / N * (F - F.mean(1, keepdims=True)) / (F.std(1, keepdims=True) + 1e-8)
        else:
            b = problem.J(theta)[:, None] - sigma ** 2 * lam.sum() / 2 if baseline == "mean" else 0.0
            coef = alpha / (N * sigma) * (F - b)
        return np.einsum("rn,rnd->rd", coef, eps)

    return step


def run_es(problem: Quadratic, alpha: float, sigma: float, N: int, T: int, zscore: bool = True, seed: int = 0,
           reps: int = 1, theta0: np.ndarray | None = None, watch: Sequence[Quadratic] = (),
           snapshots: Sequence[int] = ()) -> Run:
    """The project's ES: theta <- theta + (alpha/N) sum_n z_n eps_n, z-scored fitness F_n = J(theta + sigma eps_n).

    zscore=False gives Liang's raw-fitness update (see `run_es_raw`). theta0: (d,) or one start per rep
    (reps, d); default 0. watch: other problems whose J is recorded; snapshots: iterations whose theta is kept.
    """
    step = _es_step(problem, alpha, sigma, N, np.random.default_rng(seed), zscore, "none")
    return _simulate(problem, step, T, reps, theta0, watch, snapshots)


def run_es_raw(problem: Quadratic, alpha: float, sigma: float, N: int, T: int, seed: int = 0, reps: int = 1,
               theta0: np.ndarray | None = None, baseline: Baseline = "none", watch: Sequence[Quadratic] = (),
               snapshots: Sequence[int] = ()) -> Run:
    """Liang et al.'s ES: theta <- theta + alpha/(N sigma) sum_n (F_n - b) eps_n; E[step] = alpha grad J exactly.

    baseline="none": b = 0 (raw fitness); "mean": b = E[F | theta] = J(theta) - sigma^2 tr(C)/2 (oracle).
    """
    step = _es_step(problem, alpha, sigma, N, np.random.default_rng(seed), False, baseline)
    return _simulate(problem, step, T, reps, theta0, watch, snapshots)


def run_gradient_ascent(problem: Quadratic, lr: float, T: int, theta0: np.ndarray | None = None,
                        watch: Sequence[Quadratic] = (), until_J: float | None = None) -> Run:
    """GRPO's stand-in: theta <- theta + lr grad J (reps = 1), stopping early once J >= until_J."""
    return _simulate(problem, lambda theta: lr * problem.grad(theta), T, 1, theta0, watch, (), until_J)


def _fit_line(t: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares y = a + b t: (a, b, R^2)."""
    b, a = np.polyfit(t, y, 1)
    resid = y - (a + b * t)
    ss = ((y - y.mean()) ** 2).sum()
    return float(a), float(b), float(1 - (resid ** 2).sum() / ss) if ss > 0 else 1.0


def four_phenomena(d: int = 500, r: int = 4, stiff: float = 1.0, offset: float = 0.05, alpha: float = 0.01,
                   sigma: float = 0.02, N: int = 30, T: int = 200, k: int = 2, r_b: int = 16, lr: float = 0.1,
                   reps: int = 32, seed: int = 0, n_line: int = 21) -> dict[str, float | np.ndarray]:
    """ES (z-scored) vs gradient ascent run until it matches ES's mean J_A, on the toy; means over reps.

    Returns
      J_A_es, J_A_ga, ga_steps            the matched task rewards
      norm_es, norm_ga, norm_ratio        (1) ||dES|| / ||dGA||; norm_es_predicted = alpha sqrt(d T / N)
      cos, cos_random, cos_signal_scale   (2) cos(dES, dGA) beside sqrt(2/(pi d)) and sqrt(r/d);
                                          cos_stiff_share = ||P dES|| / ||dES|| (an upper bound on |cos|, as dGA
                                          lies in the stiff subspace)
      barrier                             (3) max over reps and a in [0, 1] of [(1-a) J(ES) + a J(GA)] - J(line(a)):
                                          0 (its value at the ends) means no barrier (always so on a concave
                                          quadratic: the line never dips below the chord); line_gain =
                                          max J(line) - max of the ends; offset_flat_share = ||P_perp(ES - GA)||^2
                                          / ||ES - GA||^2 (the offset lies where J_A cannot see)
      offtask_es, offtask_ga              (4) 1/2 w^T C_B w at the end (J_B loss; B solved at theta_0)
      offtask_t, offtask_es_curve         the ES curve over t (mean over reps), its line fit over t >= T/4:
      offtask_slope, offtask_r2           slope and R^2; offtask_slope_predicted = 1/2 alpha^2/N tr(P_perp C_B)
      offtask_slope_se                    standard error of the slope (spread of the per-rep slopes)
    """
    A = Quadratic(d, r, stiff, seed, offset)
    B = A.task_b(k, r_b, stiff, seed + 1)
    es = run_es(A, alpha, sigma, N, T, seed=seed, reps=reps, watch=[B])
    ga = run_gradient_ascent(A, lr, 100_000, watch=[B], until_J=float(es.J[-1].mean()))
    d_es, d_ga = es.theta, ga.theta[0]
    norm_es, norm_ga = np.linalg.norm(d_es, axis=1), float(np.linalg.norm(d_ga))
    cos = d_es @ d_ga / (norm_es * norm_ga)
    stiff_share = np.linalg.norm(d_es @ A.stiff_basis, axis=1) / norm_es

    a = np.linspace(0, 1, n_line)[:, None, None]
    line = A.J((1 - a) * d_es + a * d_ga)                                               # (n_line, reps)
    ends = np.stack([A.J(d_es), np.full(reps, A.J(d_ga))])
    chord = (1 - a[:, :, 0]) * ends[0] + a[:, :, 0] * ends[1]
    gap = d_es - d_ga
    flat_share = (A.flat_part(gap) ** 2).sum(1) / (gap ** 2).sum(1)

    kl_es = B.j_opt - es.J_watch[:, :, 0]                                               # (T+1, reps)
    t = np.arange(T + 1)
    fit = t >= T // 4
    _, slope, r2 = _fit_line(t[fit], kl_es[fit].mean(1))
    rep_slopes = np.array([_fit_line(t[fit], kl_es[fit, i])[1] for i in range(reps)])
    cosines = cosine_with_fixed_direction(d, r)
    return {
        "J_A_es": float(es.J[-1].mean()), "J_A_ga": float(ga.J[-1, 0]), "ga_steps": len(ga.J) - 1,
        "norm_es": float(norm_es.mean()), "norm_ga": norm_ga, "norm_ratio": float((norm_es / norm_ga).mean()),
        "norm_es_predicted": es_norm(alpha, N, T, d),
        "cos": float(cos.mean()), "cos_random": cosines["mean_abs_leading"], "cos_signal_scale": cosines["signal"],
        "cos_stiff_share": float(stiff_share.mean()),
        "barrier": float((chord - line).max()), "line_gain": float((line.max(0) - ends.max(0)).mean()),
        "offset_flat_share": float(flat_share.mean()),
        "offtask_es": float(kl_es[-1].mean()), "offtask_ga": float(B.j_opt - ga.J_watch[-1, 0, 0]),
        "offtask_t": t, "offtask_es_curve": kl_es.mean(1), "offtask_slope": slope, "offtask_r2": r2,
        "offtask_slope_se": float(rep_slopes.std(ddof=1) / np.sqrt(reps)),
        "offtask_slope_predicted": offtask_kl_slope(alpha, N, A.flat_trace(B)),
    }
