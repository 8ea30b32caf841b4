"""ES arithmetic "as published": what the public ES code does to the weights, for comparison with ours.

`es.numerics: published` reproduces the arithmetic of the public ES implementation (arXiv 2604.01499
describes it) while keeping everything else of esgrpo's ES (per-tensor counter-based noise, the same
members, prompts and fitness shaping), so that a run in each mode differs only in rounding:

    perturb  theta <- theta + round(sigma * sign * round(eps))      in place, in the weights' dtype
    restore  theta <- theta - round(sigma * sign * round(eps))      the noise regenerated, no saved copy
    update   for n = 1..N: theta <- theta + round(coef_n * sign_n * round(eps_n))   N in-place adds

round() is rounding to the weights' dtype (bf16 at paper scale): the noise is drawn in that dtype, scaled
there and added there. Restoring by subtraction does not give the weights back ((w + d) - d != w after
rounding), so the weights drift with every member; each update is rounded N times instead of once.

In float32 the two modes differ only in the last bits; in bf16 the drift and the per-member rounding are
what the precision audit measures (restore_drift_norm, restore_drift_frac, update_cosine, changed_frac).
A published-mode run is still deterministic and replayable: replay repeats each iteration's
perturb/restore cycles (they depend on the noise, never on the scores) before its update.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from esgrpo.train.noise import CHUNK, Perturbation, _counter, _kernel, _noise, _scalars, chunks
from esgrpo.train.precision import AuditSums

Member = tuple[int, int]


def _noise_chunks(p: Tensor, member_seed: int, name: str, chunk: int) -> Iterator[tuple[int, int, Tensor]]:
    """(start, stop, eps[start:stop] in float32) of tensor `name` of one member."""
    k0, k1 = _scalars(member_seed, name, p.device)
    run = _kernel(_noise, p.device)
    for s, e in chunks(p.numel(), chunk):
        first, offset = _counter(s, p.device)
        yield s, e, run(k0, k1, first, offset, e - s)


@torch.no_grad()
def add_scaled_noise(p: Tensor, name: str, member_seed: int, scale: float, chunk: int = CHUNK) -> None:
    """p += round(scale * round(eps)) in place in p's dtype: one member's add of the public code."""
    flat = p.view(-1)
    for s, e, eps in _noise_chunks(p, member_seed, name, chunk):
        flat[s:e].add_(eps.to(p.dtype) * scale)


class PublishedPerturbation(Perturbation):
    """Perturb in place and restore by subtracting the regenerated noise (no copy of the weights kept)."""

    def __init__(self, params: list[tuple[str, Tensor]], chunk: int = CHUNK) -> None:
        self.params = params
        self.chunk = chunk
        self.backup = []
        self.perturbed = False
        self._current: tuple[int, float] | None = None

    def snapshot(self) -> None:
        if self.perturbed:
            raise RuntimeError("snapshot() while perturbed; restore() first")

    @torch.no_grad()
    def perturb(self, member_seed: int, sign: int, sigma: float) -> None:
        if self.perturbed:
            raise RuntimeError("already perturbed; restore() before the next member")
        scale = float(sign) * float(sigma)
        for name, p in self.params:
            add_scaled_noise(p, name, member_seed, scale, self.chunk)
        self._current = (member_seed, scale)
        self.perturbed = True

    @torch.no_grad()
    def restore(self) -> None:
        if self._current is None:
            return
        member_seed, scale = self._current
        for name, p in self.params:
            add_scaled_noise(p, name, member_seed, -scale, self.chunk)
        self._current = None
        self.perturbed = False


@torch.no_grad()
def published_update(params: list[tuple[str, Tensor]], members: list[Member], coefs: list[float],
                     chunk: int = CHUNK, audit: dict[str, float] | None = None) -> float:
    """theta += round(coef_n * sign_n * round(eps_n)) for n = 1..N, in place; returns ||applied change||.

    audit: the applied change against the intended float32 update sum_n coef_n sign_n eps_n (precision_audit).
    """
    sums = AuditSums(audit=audit is not None)
    active = [(m, c) for m, c in zip(members, coefs, strict=True) if c != 0.0]
    for name, p in params:
        old = p.detach().to(torch.float32, copy=True).view(-1)
        intended = torch.zeros_like(old) if audit is not None else None
        for (seed, sign), coef in active:
            scale = coef * sign
            flat = p.view(-1)
            for s, e, eps in _noise_chunks(p, seed, name, chunk):
                flat[s:e].add_(eps.to(p.dtype) * scale)
                if intended is not None:
                    intended[s:e].add_(eps, alpha=scale)
        sums.add(p.detach().view(-1).float() - old, intended)
        sums.count(p.numel())
    if audit is not None:
        audit.update(sums.result())
    return sums.applied_norm


@torch.no_grad()
def drift(params: list[tuple[str, Tensor]], start: list[Tensor]) -> dict[str, float]:
    """What the perturb/restore cycles left in the weights: restore_drift_norm (L2 of theta - theta_start) and
    restore_drift_frac (share of weights that differ)."""
    sq, changed, numel = 0.0, 0, 0
    for (_, p), s in zip(params, start, strict=True):
        d = p.detach().float() - s.float()
        sq += float(torch.linalg.vector_norm(d)) ** 2
        changed += int(torch.count_nonzero(d))
        numel += p.numel()
    return {"restore_drift_norm": math.sqrt(sq), "restore_drift_frac": changed / numel if numel else 0.0}
