"""Direction probes: metrics along theta_base + t u for unit directions u.

For each labelled checkpoint (e.g. "es", "grpo"), u = (theta_label - theta_base) / ||theta_label - theta_base||,
the norm taken over all parameters at once (fp32 tensors, float64 sums). A seeded random direction
("random": a standard Gaussian per tensor, each tensor from its own generator seeded by (seed, tensor name),
normalised globally) is probed alongside as the null model. At every t in the grid the policy's parameters
are set to theta_base + t u (streamed tensor by tensor, computed in fp32, cast to the policy's dtype; t = 0
copies theta_base bitwise) and `evaluate_fn(policy)` is recorded. The policy's weights are restored at the end.

`probe_grid(norms)` gives a shared t grid from 0 to ~1.5x the largest displacement norm that includes each
method's own norm (t = ||theta_label - theta_base|| reproduces theta_label up to rounding). When the norms
differ by orders of magnitude (ES ~ 100x GRPO) pass a per-direction grid: `ts` may map label -> grid.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esgrpo.analysis.connectivity import (
    CheckpointTensors,
    EvaluateFn,
    parameter_table,
    set_parameters,
    snapshot,
)
from esgrpo.models.policy import Policy

RANDOM = "random"


def probe_grid(norms: Sequence[float | None], n: int = 9, scale: float = 1.5) -> list[float]:
    """n evenly spaced t from 0 to scale x max(norms), plus every norm itself; sorted, without repeats."""
    vals = [float(x) for x in norms if x is not None]
    if not vals or max(vals) <= 0:
        raise ValueError(f"need a positive displacement norm, got {list(norms)}")
    if n < 2:
        raise ValueError(f"need n >= 2 grid points, got {n}")
    top = scale * max(vals)
    grid = sorted({top * i / (n - 1) for i in range(n)} | set(vals))
    out: list[float] = []
    for t in grid:
        if not out or t - out[-1] > 1e-9 * top:
            out.append(t)
    return out


def _tensor_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def random_tensor(seed: int, name: str, shape: Sequence[int]) -> Tensor:
    """The (unnormalised) standard Gaussian of one tensor of the random direction, fp32 on CPU."""
    g = torch.Generator().manual_seed(_tensor_seed(seed, name))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


class _Direction:
    """A direction, raw (not unit) tensor by tensor: theta_label - theta_base, or a seeded Gaussian."""

    def __init__(self, label: str, ckpt: CheckpointTensors | None, seed: int | None):
        self.label, self.ckpt, self.seed = label, ckpt, seed
        self.norm = 0.0  # ||raw direction||, set by _measure

    def raw(self, name: str, aliases: Sequence[str], base: Tensor) -> Tensor:
        """fp32; `base` is the base tensor in fp32."""
        if self.ckpt is None:
            return random_tensor(self.seed, name, base.shape)
        return self.ckpt.get(*aliases).to(torch.float32) - base


def _measure(policy: Policy, base: CheckpointTensors, dirs: list[_Direction]) -> dict[str, dict[str, float]]:
    """Set each direction's norm; return the cosine between every pair (one streamed pass)."""
    dots = torch.zeros(len(dirs), len(dirs), dtype=torch.float64)
    for name, _, aliases in parameter_table(policy):
        b = base.get(*aliases).to(torch.float32)
        vs = [d.raw(name, aliases, b).flatten().double() for d in dirs]
        for i in range(len(vs)):
            for j in range(i, len(vs)):
                dots[i, j] += torch.dot(vs[i], vs[j])
    norms = dots.diagonal().sqrt()
    for d, nrm in zip(dirs, norms.tolist(), strict=True):
        d.norm = nrm
    cos: dict[str, dict[str, float]] = {d.label: {} for d in dirs}
    for i, di in enumerate(dirs):
        for j, dj in enumerate(dirs):
            v = float(dots[min(i, j), max(i, j)] / (norms[i] * norms[j])) if norms[i] * norms[j] > 0 else math.nan
            cos[di.label][dj.label] = v
    return cos


def _point_tensors(policy: Policy, base: CheckpointTensors, d: _Direction, t: float) -> Iterator[tuple[str, Tensor]]:
    """(name, theta_base + t u) per parameter; t = 0 yields the stored base tensors."""
    for name, _, aliases in parameter_table(policy):
        stored = base.get(*aliases)
        if t == 0.0:
            yield name, stored
        else:
            b = stored.to(torch.float32, copy=True)
            yield name, b.add_(d.raw(name, aliases, b), alpha=t / d.norm)


def unit_direction(policy: Policy, base_dir: str | Path, target_dir: str | Path | None = None,
                   random_seed: int = 0) -> tuple[dict[str, Tensor], float | None]:
    """The unit direction toward `target_dir` (or the seeded random one if None), materialized in fp32,
    keyed by canonical parameter name, and the raw displacement norm (None for the random direction).
    Holds a full fp32 copy of the model: meant for inspection and tests; the probe streams instead."""
    with ExitStack() as stack:
        base = stack.enter_context(CheckpointTensors(base_dir))
        target = stack.enter_context(CheckpointTensors(target_dir)) if target_dir is not None else None
        d = _Direction("target" if target is not None else RANDOM, target, random_seed)
        _measure(policy, base, [d])
        if d.norm == 0:
            raise ValueError(f"{target_dir} equals the base {base_dir}: no direction")
        out = {}
        for name, _, aliases in parameter_table(policy):
            b = base.get(*aliases).to(torch.float32)
            out[name] = d.raw(name, aliases, b) / d.norm
    return out, (d.norm if target is not None else None)


def direction_probe(policy: Policy, base_dir: str | Path, direction_dirs: Mapping[str, str | Path],
                    ts: Sequence[float] | Mapping[str, Sequence[float]], evaluate_fn: EvaluateFn,
                    random_seed: int = 0, include_random: bool = True, restore: bool = True) -> dict[str, Any]:
    """Evaluate theta_base + t u along each checkpoint's unit direction and a seeded random one.

    Returns {"base", "random_seed",
             "directions": {label: {"source": checkpoint dir or "random", "norm": ||theta_label - theta_base||
                                    (None for random), "points": [{"t", "metrics"}]}},
             "cosine": {label: {label: cos}}}  (between the directions, random included).
    `ts`: one grid for all directions, or {label: grid} covering every label (and "random").
    """
    if RANDOM in direction_dirs:
        raise ValueError(f"the label {RANDOM!r} is reserved for the random direction")
    labels = list(direction_dirs) + ([RANDOM] if include_random else [])
    if isinstance(ts, Mapping):
        missing = [lab for lab in labels if lab not in ts]
        if missing:
            raise ValueError(f"ts gives no grid for {missing}")
        grids = {lab: [float(t) for t in ts[lab]] for lab in labels}
    else:
        grids = {lab: [float(t) for t in ts] for lab in labels}
    saved = snapshot(policy) if restore else None
    result: dict[str, Any] = {"base": str(base_dir), "random_seed": random_seed, "directions": {}}
    try:
        with ExitStack() as stack:
            base = stack.enter_context(CheckpointTensors(base_dir))
            ckpts = {lab: stack.enter_context(CheckpointTensors(p)) for lab, p in direction_dirs.items()}
            dirs = [_Direction(lab, ckpts.get(lab), random_seed if lab == RANDOM else None) for lab in labels]
            result["cosine"] = _measure(policy, base, dirs)
            for d in dirs:
                if d.norm == 0:
                    raise ValueError(f"direction {d.label!r}: {direction_dirs[d.label]} equals the base")
            for d in dirs:
                points = []
                for t in grids[d.label]:
                    set_parameters(policy, _point_tensors(policy, base, d, t))
                    points.append({"t": t, "metrics": evaluate_fn(policy)})
                result["directions"][d.label] = {
                    "source": str(direction_dirs[d.label]) if d.ckpt is not None else RANDOM,
                    "norm": d.norm if d.ckpt is not None else None,
                    "points": points,
                }
    finally:
        if saved is not None:
            set_parameters(policy, saved)
    return result
