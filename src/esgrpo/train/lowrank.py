"""Low-rank ES noise (EGGROLL, arXiv 2511.16652): each member perturbs a weight matrix by a rank-r product.

For member seed s and a 2-D weight W (m x n), `es.rank` r >= 1:
    A = noise(s, "<name>#A") shaped (m, r),  B = noise(s, "<name>#B") shaped (n, r)   (noise.tensor_noise:
        the same counter-based Gaussians as full-rank ES, keyed by seed, tensor and factor)
    eps = A B^T / sqrt(r)          every entry has unit variance, like full-rank ES's eps
    perturb:  W = W0 + sign * sigma * eps                 (antithetic pairs share A and B)
    update:   W += sum_n coef_n * sign_n * eps_n = [A_1 c_1 | ... | A_N c_N] [B_1 | ... | B_N]^T / sqrt(r)
              (one float32 matrix product of inner size N r, rounded once to W's dtype)
A member then needs r (m + n) Gaussians per matrix instead of m n (576 x 1536 at r = 1: 2,112 instead of
884,736), and the sum of N members has rank up to N r: the update is not low rank.

Tensors that are not matrices (norms, biases) are perturbed full-rank (`es.lowrank_other: full`) or not at all
(`frozen`: neither perturbed nor updated). The update is a function of (members, coefficients, rank, other) in a
fixed order, so replay from updates.jsonl is bit-exact on the machine and thread count that trained.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from esgrpo.train.noise import CHUNK, Perturbation, add_noise_sum, tensor_noise

LOWRANK_VERSION = "lowrank-AB/v1"  # logged with rank > 0 (updates.jsonl "lowrank"); replay refuses others


def is_lowrank(p: Tensor) -> bool:
    """The tensors that get rank-r noise: the matrices."""
    return p.dim() == 2


def factors(member_seed: int, name: str, shape: torch.Size | tuple[int, ...], rank: int,
            device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(A, B), float32 Gaussians shaped (m, r) and (n, r), of member `member_seed` for matrix `name`."""
    m, n = shape
    return (tensor_noise(member_seed, f"{name}#A", (m, rank), device),
            tensor_noise(member_seed, f"{name}#B", (n, rank), device))


def lowrank_noise(member_seed: int, name: str, shape: torch.Size | tuple[int, ...], rank: int,
                  device: torch.device | str | None = None) -> Tensor:
    """eps = A B^T / sqrt(r), materialized (tests, the sequential evaluator)."""
    a, b = factors(member_seed, name, shape, rank, device)
    return (a @ b.T) * (1.0 / math.sqrt(rank))


def check_rank(params: list[tuple[str, Tensor]], rank: int) -> None:
    """es.rank must not exceed any matrix's smaller side (a rank the matrix cannot have)."""
    from esgrpo.errors import ConfigError

    matrices = [(n, p) for n, p in params if is_lowrank(p)]
    if not matrices:
        return
    name, p = min(matrices, key=lambda m: min(m[1].shape))
    if rank > min(p.shape):
        raise ConfigError(f"config key 'es.rank' = {rank} exceeds the smaller side of weight matrix {name} "
                          f"({tuple(p.shape)}): at most {min(p.shape)}")


class LowRankPerturbation(Perturbation):
    """Perturbation with rank-r noise on matrices; the other tensors full-rank or frozen. Restore as in the base
    class: the unperturbed weights are copied back, bit-exact."""

    def __init__(self, params: list[tuple[str, Tensor]], rank: int, other: str = "full", chunk: int = CHUNK) -> None:
        super().__init__(params, chunk)
        self.rank, self.other = rank, other

    @torch.no_grad()
    def perturb(self, member_seed: int, sign: int, sigma: float) -> None:
        if self.perturbed:
            raise RuntimeError("already perturbed; restore() before the next member")
        full = []
        for b, (name, p) in zip(self.backup, self.params, strict=True):
            if is_lowrank(p):
                eps = lowrank_noise(member_seed, name, p.shape, self.rank, p.device)
                p.copy_((b.to(torch.float32) + (float(sign) * float(sigma)) * eps).to(p.dtype))
            elif self.other == "full":
                full.append((b, name, p))
        self._perturb_full(full, member_seed, sign, sigma)
        self.perturbed = True


@torch.no_grad()
def lowrank_update(params: list[tuple[str, Tensor]], members: list[tuple[int, int]], coefs: list[float],
                   rank: int, other: str, sums, chunk: int = CHUNK) -> None:
    """theta += sum_n coef_n * sign_n * eps_n with low-rank eps on matrices (see the module docstring); `sums`:
    the precision audit's AuditSums, fed like apply_update's. Members with a zero coefficient are skipped."""
    active = [(m, c) for m, c in zip(members, coefs, strict=True) if c != 0.0]
    scale = 1.0 / math.sqrt(rank)
    for name, p in params:
        sums.count(p.numel())
        if not active or (not is_lowrank(p) and other == "frozen"):
            continue
        if is_lowrank(p):
            pairs = [factors(seed, name, p.shape, rank, p.device) for (seed, _), _ in active]
            a = torch.cat([f[0] * (coef * sign * scale) for f, ((_, sign), coef) in zip(pairs, active, strict=True)],
                          dim=1)
            b = torch.cat([f[1] for f in pairs], dim=1)
            old = p.detach().to(torch.float32, copy=True)
            acc = old + a @ b.T
            new = acc.to(p.dtype)
            sums.add((new.float() - old).view(-1), None if new is acc else (acc - old).view(-1))
            p.copy_(new)
            continue
        add_noise_sum(name, p, active, sums, chunk)
