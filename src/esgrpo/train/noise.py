"""ES noise: counter-based Gaussians computed on the tensor's own device, never stored; exact restore.

eps for (member seed, tensor name, element index i), noise version NOISE_VERSION:
    key (k0, k1)  = the first two 32-bit words of sha256(f"{member_seed}:{tensor_name}")
    words x0..x3  = Philox4x32-10(counter = (c mod 2^32, c div 2^32, 0, 0), key), c = i // 4
                    (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), written with
                    int32 tensor ops on the words' bit patterns, whose multiplies and adds wrap modulo
                    2^32 (two's complement, as CPU vector units and CUDA do; checked against the Random123
                    known answers on each device before any noise is drawn): the same integers on CPU
                    and CUDA. 32-bit lanes, because 64-bit integer multiplies have no AVX2 instruction
                    (ATen emulates them lane by lane): int64 words made the generator 1.9x slower there
    u_j           = ((x_j >> 8) + 0.5) / 2^24, uniforms in (0, 1) exactly representable in float32
    eps[4c + 0, 1] = sqrt(-2 ln u0) (cos 2 pi u1, sin 2 pi u1);  eps[4c + 2, 3] likewise from u2, u3
So an element's noise depends on (seed, name, index) only: not on the device, the chunking or which
other elements are drawn. The float transforms (log, sqrt, sin, cos in float32) can differ in their
last bits between math libraries (CPU vs CUDA, compiled vs eager; the tests measure it); a run and its
replay on the same machine use the same implementation and agree bit for bit.

Perturb and update work through the tensors in chunks of CHUNK (1M) elements, so ES needs no
parameter-sized noise buffer: its extra memory is the backup copy of the weights plus one chunk.
On CPU and CUDA the chunk kernels are compiled with torch.compile (fused: the noise is never
materialized), falling back to the same ops eagerly where compiling is unavailable
(ESGRPO_NOISE_COMPILE=0 forces eager).

Two defects of the public ES implementations are avoided here (Hoy, Wang, Pan, arXiv 2604.01499;
listed in the README):
- One generator seeded with the member seed for every tensor gives all same-shape tensors the same
  noise (every layer's q_proj moves identically). Here each tensor has its own key.
- Restoring by subtracting regenerated noise in bf16 does not round-trip: (w + s*e) - s*e != w after
  rounding, and the error accumulates over thousands of cycles. Here the unperturbed weights are kept
  in one parameter-sized buffer and copied back, which is bit-exact in any dtype.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

NOISE_VERSION = "philox4x32-10/box-muller-f32/v2"  # recorded in updates.jsonl; replay refuses other versions
CHUNK = 1 << 20  # elements per chunk (4 MiB of float32)

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_MASK = 0xFFFFFFFF
_ROUNDS = 10
_PAD = 64  # counters per vector block (256 elements)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any key, e.g. derive_seed(run_seed, "members", iteration, n).

    sha256 rather than Python's hash(): stable across processes, machines and Python versions,
    which replay and resume depend on.
    """
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def tensor_key(member_seed: int, name: str) -> tuple[int, int]:
    """The Philox key of one tensor's noise for one population member."""
    digest = hashlib.sha256(f"{member_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "big"), int.from_bytes(digest[4:8], "big")


# ----------------------------------------------------------------------------------------------
# The generator, in integer tensor ops


def _bits(v: int) -> int:
    """A 32-bit word (0 <= v < 2^32) as the int32 value with the same bits."""
    return v - (1 << 32) if v >= 1 << 31 else v


def _to_bits(x: Tensor) -> Tensor:
    """int64 tensor of 32-bit words -> int32 with the same bits (subtracting 2^32 first: no overflow)."""
    return (x - ((x >> 31) << 32)).to(torch.int32)


def _srl(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int32 bit patterns (>> on int32 copies the sign bit: masked off)."""
    return (x >> k) & ((1 << (32 - k)) - 1)


def _mulhilo(m: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of m * b as int32 bit patterns, for a constant m < 2^32 and int32 b holding a
    word. The low word is the wrapped product; the high word is assembled from the 16-bit halves' products
    (each < 2^32, exact modulo 2^32) and the carry out of the low 32 bits."""
    mh, ml = m >> 16, m & 0xFFFF
    bh, bl = _srl(b, 16), b & 0xFFFF
    hl, lh, ll = bh * ml, bl * mh, bl * ml
    carry = _srl((hl & 0xFFFF) + (lh & 0xFFFF) + _srl(ll, 16), 16)
    return bh * mh + _srl(hl, 16) + _srl(lh, 16) + carry, b * _bits(m)


def _rounds(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor,
            k1: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10's rounds on int32 bit patterns (counter words c0..c3, key words k0, k1)."""
    for _ in range(_ROUNDS):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = k0 + _bits(_W0), k1 + _bits(_W1)
    return c0, c1, c2, c3


def philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor | int,
               k1: Tensor | int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 on int64 tensors holding 32-bit words, returning int64 words (checked against the Random123
    known answers): the interface to the int32 rounds the kernels use."""
    dev = c0.device
    key = [_to_bits(k) if isinstance(k, Tensor) else torch.tensor(_bits(k), dtype=torch.int32, device=dev)
           for k in (k0, k1)]
    out = _rounds(*(_to_bits(c) for c in (c0, c1, c2, c3)), *key)
    return tuple(w.to(torch.int64) & _MASK for w in out)  # type: ignore[return-value]


def _words(k0: Tensor, k1: Tensor, first: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four int32 words (bit patterns) of the counters first .. first + count - 1 (int64 scalars)."""
    ctr = torch.arange(count, dtype=torch.int64, device=k0.device) + first
    c0 = _to_bits(ctr & _MASK)
    zero = torch.zeros_like(c0)
    return _rounds(c0, _to_bits(ctr >> 32), zero, zero, _to_bits(k0), _to_bits(k1))


def _normals(k0: Tensor, k1: Tensor, first: Tensor, count: int) -> Tensor:
    """4 * count float32 normals for the counters first .. first + count - 1 (k0, k1, first: int64 scalars)."""
    u = [(_srl(w, 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0) for w in _words(k0, k1, first, count)]
    r0, r1 = torch.sqrt(-2.0 * torch.log(u[0])), torch.sqrt(-2.0 * torch.log(u[2]))
    a0, a1 = (2.0 * math.pi) * u[1], (2.0 * math.pi) * u[3]
    return torch.stack([r0 * torch.cos(a0), r0 * torch.sin(a0), r1 * torch.cos(a1), r1 * torch.sin(a1)],
                       dim=1).reshape(-1)


def _perturbed(backup: Tensor, k0: Tensor, k1: Tensor, first: Tensor, offset: int, scale: Tensor) -> Tensor:
    """backup + scale * eps, computed in float32 and rounded once to backup's dtype (backup: a flat chunk
    starting at element 4 * first + offset)."""
    n = backup.numel()
    eps = _normals(k0, k1, first, _padded(offset, n))[offset:offset + n]
    return (backup.to(torch.float32) + scale * eps).to(backup.dtype)


def _padded(offset: int, n: int) -> int:
    """Counters to draw for n elements at `offset`: a multiple of _PAD, so vectorized kernels have no scalar
    tail (a tail's math library can round differently, which would tie an element's value to the chunking)."""
    return -(-(offset + n) // (4 * _PAD)) * _PAD


def _noise(k0: Tensor, k1: Tensor, first: Tensor, offset: int, n: int) -> Tensor:
    """The n normals starting at element 4 * first + offset."""
    return _normals(k0, k1, first, _padded(offset, n))[offset:offset + n]


def _accumulated(acc: Tensor, k0: Tensor, k1: Tensor, first: Tensor, offset: int, coef: Tensor) -> Tensor:
    """acc + coef * eps in float32 (acc: a flat float32 chunk starting at element 4 * first + offset)."""
    n = acc.numel()
    return acc + coef * _normals(k0, k1, first, _padded(offset, n))[offset:offset + n]


# ----------------------------------------------------------------------------------------------
# Compiled kernels (fused, so the noise is never materialized), eager where compiling is unavailable


_KERNELS: dict[tuple[str, str], Callable[..., Tensor]] = {}
_KNOWN_ANSWERS = (  # Random123's kat_vectors for Philox4x32-10: counter, key, words
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
)
_CHECKED: set[str] = set()


def check_integers(device: torch.device) -> None:
    """The Random123 known answers through the int32 rounds with eager ops on `device`, once per device type: the
    generator assumes integer multiplies and adds wrap modulo 2^32; a device where they do not would give every
    member wrong noise, so it is refused here."""
    if device.type in _CHECKED:
        return
    for ctr, key, want in _KNOWN_ANSWERS:
        got = philox4x32(*(torch.tensor([c], dtype=torch.int64, device=device) for c in ctr), *key)
        if [int(w) for w in got] != list(want):
            raise RuntimeError(f"the ES noise generator's integer ops give wrong Philox words on {device.type} "
                               f"({[hex(int(w)) for w in got]} instead of {[hex(w) for w in want]}): its int32 "
                               "multiplies or adds do not wrap modulo 2^32 here")
    _CHECKED.add(device.type)


def _kernel(fn: Callable[..., Tensor], device: torch.device) -> Callable[..., Tensor]:
    key = (fn.__name__, device.type)
    if key not in _KERNELS:
        check_integers(device)
        _KERNELS[key] = fn
        if os.environ.get("ESGRPO_NOISE_COMPILE", "1") != "0" and device.type in ("cpu", "cuda"):
            compiled = torch.compile(fn, dynamic=True)
            checked: set[torch.dtype] = set()

            def eager(reason: str) -> None:
                print(f"[noise] {reason}; drawing noise eagerly (slower, correct)", file=sys.stderr, flush=True)
                _KERNELS[key] = fn

            def guarded(*args: object) -> Tensor:
                dtype = args[0].dtype if fn is _perturbed else torch.float32  # type: ignore[union-attr]
                try:
                    if dtype not in checked:
                        checked.add(dtype)
                        worst = _disagreement(fn, compiled, device, dtype)
                        if worst is not None:
                            eager(f"the compiled kernel {fn.__name__} differs from its eager ops by up to "
                                  f"{worst:.3g} on this {device.type} ({dtype})")
                            return fn(*args)
                    return compiled(*args)
                except Exception as e:  # no C++ compiler, no Triton, ...: the eager ops give the same integers
                    eager(f"torch.compile unavailable on {device.type} ({type(e).__name__})")
                    return fn(*args)

            _KERNELS[key] = guarded
    return _KERNELS[key]


@contextlib.contextmanager
def eager_kernels() -> Iterator[None]:
    """Within the block, draw the noise with the eager ops instead of the compiled kernels (the same integers;
    the float transforms may differ in their last bits): for benchmarks that compare the two."""
    saved = dict(_KERNELS)
    _KERNELS.update({(fn.__name__, d): fn for fn in (_noise, _perturbed, _accumulated) for d in ("cpu", "cuda")})
    try:
        yield
    finally:
        _KERNELS.clear()
        _KERNELS.update(saved)


def _disagreement(fn: Callable[..., Tensor], compiled: Callable[..., Tensor], device: torch.device,
                  dtype: torch.dtype) -> float | None:
    """A known-answer check of a compiled kernel against its eager ops before it draws any noise for weights of
    `dtype`: torch.compile's vectorized code for these integer kernels was wrong on some CPU set-ups (torch 2.13,
    its AVX2 code on an AVX-512 host: half of the elements wrong, or garbage, depending on size, offset and
    thread count), which would give every member wrong noise, silently. The probes span several vectorized
    blocks at unaligned offsets and a whole chunk. Returns None when they agree (the float transforms may differ
    in their last bits; wrong integers differ by order 1), else the largest difference."""
    k0, k1 = _scalars(0, "self-check", device)
    first = torch.tensor(5, dtype=torch.int64, device=device)
    one = torch.ones((), dtype=torch.float32, device=device)
    for n, offset in ((12 * 4 * _PAD + 5, 3), (CHUNK, 0), (4 * _PAD - 3, 1)):
        zeros = torch.zeros(n, dtype=dtype, device=device)
        args: tuple[object, ...] = {
            "_noise": (k0, k1, first, offset, n),
            "_perturbed": (zeros, k0, k1, first, offset, one),
            "_accumulated": (zeros, k0, k1, first, offset, one),
        }[fn.__name__]
        want, got = fn(*args).float(), compiled(*args).float()
        diff = (want - got).abs().nan_to_num(nan=math.inf)  # a NaN is a disagreement too
        if bool((diff > 1e-4 + torch.finfo(dtype).eps * want.abs()).any()):
            return float(diff.max())
    return None


def _scalars(member_seed: int, name: str, device: torch.device) -> tuple[Tensor, Tensor]:
    k0, k1 = tensor_key(member_seed, name)
    return (torch.tensor(k0, dtype=torch.int64, device=device), torch.tensor(k1, dtype=torch.int64, device=device))


def chunks(numel: int, chunk: int = CHUNK) -> Iterator[tuple[int, int]]:
    """(start, stop) element ranges covering 0..numel; starts are multiples of 4 when chunk is."""
    for s in range(0, numel, chunk):
        yield s, min(numel, s + chunk)


def _counter(start: int, device: torch.device) -> tuple[Tensor, int]:
    return torch.tensor(start // 4, dtype=torch.int64, device=device), start % 4


def tensor_noise(member_seed: int, name: str, shape: torch.Size | tuple[int, ...],
                 device: torch.device | str | None = None, chunk: int = CHUNK) -> Tensor:
    """eps ~ N(0, I) in float32 for tensor `name` of member `member_seed`, computed on `device` (default CPU).

    A full tensor, for analyses and tests; the trainer never materializes it (Perturbation, accumulate)."""
    device = torch.device(device or "cpu")
    k0, k1 = _scalars(member_seed, name, device)
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    run = _kernel(_noise, device)
    for s, e in chunks(numel, chunk):
        first, offset = _counter(s, device)
        out[s:e] = run(k0, k1, first, offset, e - s)
    return out.view(tuple(shape))


def accumulate(acc: Tensor, start: int, member_seed: int, name: str, coef: float) -> Tensor:
    """acc + coef * eps[start : start + len(acc)] of tensor `name` (acc: flat float32): the update's inner step."""
    k0, k1 = _scalars(member_seed, name, acc.device)
    first, offset = _counter(start, acc.device)
    return _kernel(_accumulated, acc.device)(acc, k0, k1, first, offset,
                                            torch.tensor(coef, dtype=torch.float32, device=acc.device))


@torch.no_grad()
def add_noise_sum(name: str, p: Tensor, active: list[tuple[tuple[int, int], float]], sums: object,
                  chunk: int = CHUNK) -> None:
    """p += sum over active ((seed, sign), coef) of coef * sign * eps(seed, name): per element in float32, members
    in the given order, rounded once to p's dtype, chunk by chunk (no parameter-sized buffer; the result does
    not depend on the chunk size). `sums` (the update's precision audit) gets each chunk's applied and intended
    change (`add`)."""
    flat = p.view(-1)
    for s, e in chunks(p.numel(), chunk):
        old = flat[s:e].to(torch.float32, copy=True)
        acc = old  # accumulate returns a new tensor; `old` stays the weights before the update
        for (seed, sign), coef in active:
            acc = accumulate(acc, s, seed, name, coef * sign)
        new = acc.to(p.dtype)  # float32 weights: `acc` itself, nothing is rounded
        sums.add(new.float() - old, None if new is acc else acc - old)  # type: ignore[attr-defined]
        flat[s:e] = new


def warm_up(params: list[tuple[str, Tensor]]) -> None:
    """Compile the noise kernels for these tensors' devices and dtypes now (a one-time cost that should not
    be counted as a training iteration's time or memory)."""
    for device, dtype in sorted({(p.device, p.dtype) for _, p in params}, key=str):
        k0, k1 = _scalars(0, "warm-up", device)
        first, offset = _counter(0, device)
        _kernel(_perturbed, device)(torch.zeros(8, dtype=dtype, device=device), k0, k1, first, offset,
                                    torch.ones((), device=device))
        _kernel(_accumulated, device)(torch.zeros(8, device=device), k0, k1, first, offset,
                                      torch.ones((), device=device))


class Perturbation:
    """Perturb named parameters in place (theta + sign * sigma * eps) and restore them bit-exactly.

    Holds one copy of the unperturbed weights (the only parameter-sized memory ES adds); the noise is
    computed chunk by chunk on the weights' device. Call `snapshot()` whenever the weights changed for
    another reason (an update, a resume).
    """

    def __init__(self, params: list[tuple[str, Tensor]], chunk: int = CHUNK) -> None:
        self.params = params
        self.chunk = chunk
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
        self._perturb_full([(b, name, p) for b, (name, p) in zip(self.backup, self.params, strict=True)],
                           member_seed, sign, sigma)
        self.perturbed = True

    def _perturb_full(self, tensors: list[tuple[Tensor, str, Tensor]], member_seed: int, sign: int,
                      sigma: float) -> None:
        """(backup, name, tensor) triples: tensor = backup + sign * sigma * eps(member_seed, name), chunk by chunk."""
        for b, name, p in tensors:
            device = p.device
            k0, k1 = _scalars(member_seed, name, device)
            scale = torch.tensor(float(sign) * float(sigma), dtype=torch.float32, device=device)
            run = _kernel(_perturbed, device)
            flat, back = p.view(-1), b.view(-1)
            for s, e in chunks(p.numel(), self.chunk):
                first, offset = _counter(s, device)
                flat[s:e] = run(back[s:e], k0, k1, first, offset, scale)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the unperturbed weights back (bit-exact; never subtracts regenerated noise)."""
        for b, (_, p) in zip(self.backup, self.params, strict=True):
            p.copy_(b)
        self.perturbed = False
