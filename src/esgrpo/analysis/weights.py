"""Weight-space statistics of an update theta - theta_base, read from checkpoints only.

A checkpoint is a Hugging Face model directory holding one or more ``*.safetensors`` files (a sharded one
also has ``model.safetensors.index.json``), or a single ``.safetensors`` file. Tensors are matched by
name, upcast to fp32 and streamed one name at a time, so at most a few tensors per checkpoint are in memory.
Non-float tensors are skipped. Only what is stored is counted: a tied ``lm_head.weight`` that is absent
from the file is not counted twice. Totals are accumulated in float64.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import torch

from esgrpo.checkpoints import CheckpointError, CheckpointTensors

PathLike = str | Path

_CHUNK = 1 << 22  # elements per float64 chunk in reductions (32 MiB)
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "self_attn"}
_MLP = {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "mlp"}
_EMBEDDING = {"embed_tokens", "lm_head"}
_MODULE_ORDER = ("attention", "mlp", "embedding", "norm", "other")
_BF16_MIN_EXP = -125  # frexp exponent of 2**-126, the smallest normal bf16; below it the spacing is constant


# --- reading checkpoints ------------------------------------------------------------------------------------


def _float_names(base: CheckpointTensors, others: list[CheckpointTensors]) -> list[str]:
    """The float tensor names of base, after checking every other checkpoint stores the same ones, same shapes."""
    base_names = set(base.names())
    for other in others:
        other_names = set(other.names())
        for name in sorted(base_names ^ other_names):
            has, lacks = (base, other) if name in base_names else (other, base)
            raise CheckpointError(f"tensor {name!r} is in {has.path} but not in {lacks.path}")
        for name in sorted(base_names):
            if base.is_float(name) != other.is_float(name):
                raise CheckpointError(
                    f"tensor {name!r} is float in one checkpoint and not in the other: {base.path}, {other.path}"
                )
            if base.shape(name) != other.shape(name):
                raise CheckpointError(
                    f"tensor {name!r} has shape {list(base.shape(name))} in {base.path} "
                    f"but {list(other.shape(name))} in {other.path}"
                )
    return [name for name in sorted(base_names) if base.is_float(name)]


def iter_tensors(ckpt: PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, fp32 tensor) for every float tensor stored in a checkpoint, in sorted name order."""
    with CheckpointTensors(ckpt) as checkpoint:
        for name in checkpoint.names():
            if checkpoint.is_float(name):
                yield name, checkpoint.get(name).to(torch.float32)


def iter_deltas(base: PathLike, *ckpts: PathLike) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
    """Yield (name, base tensor, [ckpt_i - base for each ckpt]) in fp32, in sorted name order.

    Names and shapes are checked up front (headers only): a tensor missing from a checkpoint, a shape
    mismatch, or a tensor that is float in one checkpoint and not in another raises CheckpointError naming the
    tensor and both paths. Non-float tensors are skipped. A tensor holding a NaN or an infinity raises
    CheckpointError naming it and its checkpoint (every statistic over it would be NaN).
    """
    with ExitStack() as stack:
        base_ckpt = stack.enter_context(CheckpointTensors(base))
        others = [stack.enter_context(CheckpointTensors(c)) for c in ckpts]
        for name in _float_names(base_ckpt, others):
            theta = _finite(base_ckpt, name)
            yield name, theta, [_finite(other, name) - theta for other in others]


def _finite(checkpoint: CheckpointTensors, name: str) -> torch.Tensor:
    x = checkpoint.get(name).to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise CheckpointError(f"tensor {name!r} in {checkpoint.path} holds {bad} NaN or infinite value(s); "
                              "the checkpoint is damaged or its training diverged")
    return x


# --- naming ---------------------------------------------------------------------------------------------------


def module_type(name: str) -> str:
    """The kind of module a parameter belongs to: "attention", "mlp", "embedding", "norm" or "other".

    Norms inside attention (Qwen3's ``self_attn.q_norm``) count as "norm".
    """
    parts = name.split(".")
    if any(p in _EMBEDDING for p in parts):
        return "embedding"
    if any("norm" in p for p in parts):
        return "norm"
    if any(p in _ATTENTION for p in parts):
        return "attention"
    if any(p in _MLP for p in parts):
        return "mlp"
    return "other"


def layer_index(name: str) -> int | None:
    """The transformer block index i of a parameter named ``...layers.<i>....``, else None."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def _layer_key(name: str) -> str:
    index = layer_index(name)
    return "non-layer" if index is None else f"layer {index}"


def _layer_sort_key(key: str) -> tuple[int, int]:
    return (1, 0) if key == "non-layer" else (0, int(key.split()[1]))


# --- float64 reductions ---------------------------------------------------------------------------------------


def _sumsq(x: torch.Tensor) -> float:
    """Sum of squares of x, accumulated in float64 chunk by chunk."""
    return sum(float(c.double().square().sum()) for c in x.reshape(-1).split(_CHUNK))


def _dot(x: torch.Tensor, y: torch.Tensor) -> float:
    """Dot product of x and y (same shape), accumulated in float64 chunk by chunk."""
    chunks = zip(x.reshape(-1).split(_CHUNK), y.reshape(-1).split(_CHUNK), strict=True)
    return sum(float(torch.dot(a.double(), b.double())) for a, b in chunks)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


# --- update norms ---------------------------------------------------------------------------------------------


def _norm_stats(delta_sq: float, base_sq: float, numel: int) -> dict:
    abs_norm, base_norm = math.sqrt(delta_sq), math.sqrt(base_sq)
    return {"abs": abs_norm, "base_norm": base_norm, "relative": _ratio(abs_norm, base_norm), "numel": numel}


def update_norms(base: PathLike, ckpt: PathLike) -> dict:
    """L2 norm of the update theta - theta_base, overall and broken down.

    Returns ``{"base", "ckpt", "total", "per_tensor", "per_layer", "per_module"}``. Every statistic is a dict
    ``{"abs": ||theta - theta_base||_2, "base_norm": ||theta_base||_2, "relative": abs / base_norm,
    "numel"}`` over its group of weights (relative is NaN when base_norm is 0). ``per_layer`` is keyed
    "layer 0", "layer 1", ..., then "non-layer" (embeddings, final norm); ``per_module`` by
    :func:`module_type`; ``per_tensor`` entries also carry "module" and "layer".
    """
    sums: dict[tuple[str, str], list] = {}  # (group kind, key) -> [delta_sq, base_sq, numel]
    per_tensor = {}
    for name, theta, (delta,) in iter_deltas(base, ckpt):
        delta_sq, base_sq, numel = _sumsq(delta), _sumsq(theta), theta.numel()
        per_tensor[name] = {
            **_norm_stats(delta_sq, base_sq, numel),
            "module": module_type(name),
            "layer": layer_index(name),
        }
        for group in (("total", ""), ("layer", _layer_key(name)), ("module", module_type(name))):
            acc = sums.setdefault(group, [0.0, 0.0, 0])
            acc[0] += delta_sq
            acc[1] += base_sq
            acc[2] += numel
    layer_keys = sorted((k for g, k in sums if g == "layer"), key=_layer_sort_key)
    module_keys = [m for m in _MODULE_ORDER if ("module", m) in sums]
    return {
        "base": str(base),
        "ckpt": str(ckpt),
        "total": _norm_stats(*sums.get(("total", ""), [0.0, 0.0, 0])),
        "per_tensor": per_tensor,
        "per_layer": {k: _norm_stats(*sums[("layer", k)]) for k in layer_keys},
        "per_module": {m: _norm_stats(*sums[("module", m)]) for m in module_keys},
    }


# --- cosine between two updates -------------------------------------------------------------------------------


def random_cosine_baseline(d: int) -> float:
    """E|cos| between two independent uniformly random directions in d dimensions.

    Exact: Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)), computed with lgamma for d < 1e4 and with the asymptotic
    series sqrt(2 / (pi d)) (1 + 1/(4d) + 1/(32 d^2)) above (relative error < 1e-11 there; lgamma would
    lose digits). For large d this is sqrt(2 / (pi d)) ~ 0.80 / sqrt(d); the standard deviation of cos is
    exactly 1 / sqrt(d).
    """
    if d < 1:
        return math.nan
    if d < 10_000:
        return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    return math.sqrt(2 / (math.pi * d)) * (1 + 1 / (4 * d) + 1 / (32 * d * d))


def cosine(base: PathLike, a: PathLike, b: PathLike) -> dict:
    """Cosine between the updates of two checkpoints from a shared base: <da, db> / (|da| |db|).

    Returns ``{"base", "a", "b", "cosine", "dot", "norm_a", "norm_b", "zero_delta", "d", "random_baseline",
    "inv_sqrt_d", "per_tensor"}``. ``cosine`` is over all d float weights (accumulated in float64);
    ``zero_delta`` is ``{"a": bool, "b": bool}`` and the cosine is NaN when either update is exactly zero.
    ``random_baseline`` is E|cos| of two independent random directions in d dimensions (exact, see
    :func:`random_cosine_baseline`; ~ sqrt(2 / (pi d))), ``inv_sqrt_d`` = 1 / sqrt(d), the standard
    deviation of that cosine, as quoted in the paper. ``per_tensor[name]`` is
    ``{"cosine", "norm_a", "norm_b", "numel"}`` (cosine NaN where either delta of that tensor is zero).
    """
    dot = sq_a = sq_b = 0.0
    d = 0
    per_tensor = {}
    for name, _theta, (da, db) in iter_deltas(base, a, b):
        t_dot, t_a, t_b = _dot(da, db), _sumsq(da), _sumsq(db)
        dot, sq_a, sq_b, d = dot + t_dot, sq_a + t_a, sq_b + t_b, d + da.numel()
        per_tensor[name] = {
            "cosine": _ratio(t_dot, math.sqrt(t_a * t_b)),
            "norm_a": math.sqrt(t_a),
            "norm_b": math.sqrt(t_b),
            "numel": da.numel(),
        }
    return {
        "base": str(base),
        "a": str(a),
        "b": str(b),
        "cosine": _ratio(dot, math.sqrt(sq_a * sq_b)),
        "dot": dot,
        "norm_a": math.sqrt(sq_a),
        "norm_b": math.sqrt(sq_b),
        "zero_delta": {"a": sq_a == 0, "b": sq_b == 0},
        "d": d,
        "random_baseline": random_cosine_baseline(d),
        "inv_sqrt_d": 1 / math.sqrt(d) if d else math.nan,
        "per_tensor": per_tensor,
    }


# --- sparsity -------------------------------------------------------------------------------------------------


def bf16_spacing(x: torch.Tensor) -> torch.Tensor:
    """Distance between adjacent bf16 numbers at |x|: 2**(floor(log2|x|) - 7) for normal x, 2**-133 below
    the smallest normal bf16 (2**-126) and at 0. For x exactly a power of two this is the spacing above x."""
    exponent = torch.frexp(x.abs()).exponent  # |x| = m * 2**exponent, m in [0.5, 1); frexp(0) gives 0
    exponent = exponent.masked_fill(x == 0, _BF16_MIN_EXP).clamp(min=_BF16_MIN_EXP)
    return torch.ldexp(torch.ones_like(x), exponent - 8)


def sparsity(base: PathLike, ckpt: PathLike, atol: float = 0.0, rel_spacing: bool = False) -> dict:
    """How many weights the update touched, and how many of the touches are below bf16 resolution.

    A weight counts as changed when |theta - theta_base| > tol, with tol = atol, or, with rel_spacing, tol =
    atol * bf16_spacing(theta_base) (so atol=1, rel_spacing=True counts changes of more than one bf16 step).
    Returns ``{"base", "ckpt", "atol", "rel_spacing", "tolerance", "numel", "changed", "frac_changed",
    "below_bf16_spacing", "frac_below_bf16_spacing", "frac_changed_below_bf16_spacing", "per_tensor"}``:
    ``tolerance`` states the rule in words; ``below_bf16_spacing`` counts the weights with
    |delta| < bf16_spacing(theta_base) (unchanged ones included), i.e. changes a bf16 copy of the base would
    round away; ``frac_changed_below_bf16_spacing`` is the share of the nonzero changes that are that small
    (NaN if none). ES steps are often below bf16 spacing. ``per_tensor[name]`` has "numel", "changed",
    "frac_changed", "nonzero", "below_bf16_spacing", "frac_below_bf16_spacing".
    """
    rule = f"|delta| > {atol:g} * bf16_spacing(|theta_base|)" if rel_spacing else f"|delta| > {atol:g}"
    numel = changed = below = nonzero_below = nonzero = 0
    per_tensor = {}
    for name, theta, (delta,) in iter_deltas(base, ckpt):
        magnitude = delta.abs()
        spacing = bf16_spacing(theta)
        tol = atol * spacing if rel_spacing else atol
        t_changed = int((magnitude > tol).sum())
        small = magnitude < spacing
        t_below = int(small.sum())
        t_nonzero = int((magnitude > 0).sum())
        nonzero_below += int((small & (magnitude > 0)).sum())
        n = theta.numel()
        numel, changed, below, nonzero = numel + n, changed + t_changed, below + t_below, nonzero + t_nonzero
        per_tensor[name] = {
            "numel": n,
            "changed": t_changed,
            "frac_changed": _ratio(t_changed, n),
            "nonzero": t_nonzero,
            "below_bf16_spacing": t_below,
            "frac_below_bf16_spacing": _ratio(t_below, n),
        }
    return {
        "base": str(base),
        "ckpt": str(ckpt),
        "atol": atol,
        "rel_spacing": rel_spacing,
        "tolerance": f"changed means {rule}",
        "numel": numel,
        "changed": changed,
        "frac_changed": _ratio(changed, numel),
        "below_bf16_spacing": below,
        "frac_below_bf16_spacing": _ratio(below, numel),
        "frac_changed_below_bf16_spacing": _ratio(nonzero_below, nonzero),
        "per_tensor": per_tensor,
    }


# --- spectrum of the update -----------------------------------------------------------------------------------


def _spectrum_stats(singular: torch.Tensor, top_k: int, energy: float) -> dict:
    """Stats of a vector of singular values (descending, float64)."""
    total = float(singular.sum())
    sq = singular.square()
    frob_sq = float(sq.sum())
    if frob_sq == 0:
        return {
            "frobenius": 0.0,
            "top_singular_values": singular[:top_k].tolist(),
            "effective_rank": math.nan,
            "energy_rank": 0,
            "stable_rank": math.nan,
        }
    p = singular[singular > 0] / total
    effective_rank = math.exp(float(-(p * p.log()).sum()))
    cumulative = sq.cumsum(0) / frob_sq
    energy_rank = int((cumulative < energy * (1 - 1e-12)).sum()) + 1
    return {
        "frobenius": math.sqrt(frob_sq),
        "top_singular_values": singular[:top_k].tolist(),
        "effective_rank": effective_rank,
        "energy_rank": min(energy_rank, singular.numel()),
        "stable_rank": frob_sq / float(sq[0]),
    }


def update_rank(
    base: PathLike, ckpt: PathLike, top_k: int = 8, energy: float = 0.9, random_baseline: bool = False, seed: int = 0
) -> dict:
    """Spectrum of the update of each 2-D weight matrix: is the change low-rank (GRPO-like) or diffuse (ES-like)?

    Singular values come from torch.linalg.svdvals in fp32, statistics are computed in float64. Per matrix:
    ``top_singular_values`` (the largest top_k), ``effective_rank`` = exp(entropy of s / sum(s)) (Roy &
    Vetterli 2007: 1 for rank one, n for n equal singular values), ``energy_rank`` = the number of singular
    values holding ``energy`` of ||delta||_F^2, ``stable_rank`` = ||delta||_F^2 / s_1^2, ``frobenius``,
    ``shape`` and ``max_rank`` = min(shape). A zero update has effective and stable rank NaN and energy rank 0.
    With random_baseline, ``random`` holds the same stats for a Gaussian matrix of the same shape and
    Frobenius norm (seeded; one more SVD per matrix).

    Returns ``{"base", "ckpt", "top_k", "energy", "per_matrix": {name: stats}, "skipped": [non-2-D names]}``.
    """
    generator = torch.Generator().manual_seed(seed)
    per_matrix = {}
    skipped = []
    for name, _theta, (delta,) in iter_deltas(base, ckpt):
        if delta.ndim != 2:
            skipped.append(name)
            continue
        singular = torch.linalg.svdvals(delta).double()
        stats = {"shape": list(delta.shape), "max_rank": min(delta.shape), **_spectrum_stats(singular, top_k, energy)}
        if random_baseline:
            noise = torch.randn(delta.shape, generator=generator)
            noise *= stats["frobenius"] / math.sqrt(_sumsq(noise))
            stats["random"] = _spectrum_stats(torch.linalg.svdvals(noise).double(), top_k, energy)
        per_matrix[name] = stats
    return {
        "base": str(base),
        "ckpt": str(ckpt),
        "top_k": top_k,
        "energy": energy,
        "per_matrix": per_matrix,
        "skipped": skipped,
    }
