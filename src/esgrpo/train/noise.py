"""ES noise: regenerated from seeds (never stored), independent per tensor; exact perturb/restore.

Two defects of the public ES implementations are avoided here (Hoy, Wang, Pan, arXiv 2604.01499; listed in the README):

- One generator seeded with the member seed for every tensor gives all same-shape tensors the
  same noise (every layer's q_proj moves identically). Here each tensor gets its own stream,
  seeded from sha256(f"{member_seed}:{tensor_name}"), so tensors are perturbed independently.
- Restoring by subtracting regenerated noise in bf16 does not round-trip: (w + s*e) - s*e != w
  after rounding, and the error accumulates over thousands of cycles. Here the unperturbed weights
  are kept in one parameter-sized buffer and copied back, which is bit-exact in any dtype.

Noise is drawn on the CPU in float32 and then moved, so a seed means the same numbers on every
device and dtype (a bf16 model and its fp32 twin see the same eps before rounding).
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any key, e.g. derive_seed(run_seed, "members", iteration, n).

    sha256 rather than Python's hash(): stable across processes, machines and Python versions,
    which replay and resume depend on.
    """
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def tensor_seed(member_seed: int, name: str) -> int:
    """The generator seed of one tensor's noise for one population member."""
    return derive_seed(member_seed, name)


def tensor_noise(member_seed: int, name: str, shape: torch.Size | tuple[int, ...],
                 device: torch.device | str | None = None) -> Tensor:
    """eps ~ N(0, I) in float32 for tensor `name` of member `member_seed` (same inputs, same numbers)."""
    g = torch.Generator(device="cpu").manual_seed(tensor_seed(member_seed, name))
    eps = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    return eps if device is None or torch.device(device).type == "cpu" else eps.to(device)


class Perturbation:
    """Perturb named parameters in place (theta + sign * sigma * eps) and restore them bit-exactly.

    Holds one copy of the unperturbed weights (the only extra parameter-sized memory ES needs);
    call `snapshot()` whenever the weights changed for another reason (an update, a resume).
    """

    def __init__(self, params: list[tuple[str, Tensor]]) -> None:
        self.params = params
        with torch.no_grad():
            self.backup = [p.detach().clone() for _, p in params]
        self.perturbed = False

    @torch.no_grad()
    def snapshot(self) -> None:
        """Take the current weights as the unperturbed ones."""
        if self.perturbed:
            raise RuntimeError("snapshot() while perturbed would keep the perturbed weights; restore() first")
        for b, (_, p) in zip(self.backup, self.params, strict=True):
            b.copy_(p)

    @torch.no_grad()
    def perturb(self, member_seed: int, sign: int, sigma: float) -> None:
        """Set every tensor to backup + sign * sigma * eps, computed in float32, rounded once."""
        if self.perturbed:
            raise RuntimeError("already perturbed; restore() before the next member")
        scale = float(sign) * float(sigma)
        for b, (name, p) in zip(self.backup, self.params, strict=True):
            eps = tensor_noise(member_seed, name, p.shape, p.device)
            p.copy_((b.float() + scale * eps).to(p.dtype))
        self.perturbed = True

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the unperturbed weights back (bit-exact; never subtracts regenerated noise)."""
        for b, (_, p) in zip(self.backup, self.params, strict=True):
            p.copy_(b)
        self.perturbed = False
