"""What `esgrpo analyze norms|cosine|sparsity|rank|kl|interpolate|probe` computes on checkpoints given by path.

Weight statistics read safetensors only; the behavioural analyses (kl, interpolate, probe) load the
checkpoints as models and evaluate them on the synthetic test split. Every function returns a JSON-able
dict; `full=False` drops the per-tensor / per-matrix detail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esgrpo.errors import EsgrpoError

WEIGHT_ANALYSES = {"norms": 2, "cosine": 3, "sparsity": 2, "rank": 2}  # name -> number of checkpoint paths
BEHAVIOUR_ANALYSES = {"kl": 2, "interpolate": 2, "probe": None}  # None: two or more


def weight_analysis(what: str, paths: list[str], atol: float = 0.0, top_k: int = 8,
                    full: bool = False) -> dict[str, Any]:
    """norms BASE CKPT | cosine BASE A B | sparsity BASE CKPT | rank BASE CKPT."""
    from esgrpo.analysis import weights

    need = WEIGHT_ANALYSES[what]
    if len(paths) != need:
        raise EsgrpoError(f"analyze {what} takes {need} checkpoint paths, got {len(paths)}")
    if what == "rank":
        out = weights.update_rank(*paths, top_k=top_k)
        if full:
            return out
        return {k: {"effective_rank": v["effective_rank"], "max_rank": v["max_rank"],
                    "top_singular_values": v["top_singular_values"][:3]} for k, v in out["per_matrix"].items()}
    if what == "norms":
        out = weights.update_norms(*paths)
    elif what == "cosine":
        out = weights.cosine(*paths)
        zero = [p for p, z in zip(paths[1:], (out["zero_delta"]["a"], out["zero_delta"]["b"]), strict=True) if z]
        if zero:  # the study records NaN for it; asked for on the command line, it is an error
            raise EsgrpoError(f"analyze cosine: {zero[0]} equals the base {paths[0]} (a zero update), so the cosine "
                              "is undefined")
    else:
        out = weights.sparsity(*paths, atol=atol)
    return out if full else {k: v for k, v in out.items() if k not in ("per_tensor", "per_matrix")}


def behaviour_analysis(what: str, paths: list[str], tasks: list[str], n: int = 100, seed: int = 1234,
                       samples: int = 1, points: int = 11, max_new_tokens: int = 48) -> dict[str, Any]:
    """kl CKPT REF | interpolate A B | probe BASE CKPT [CKPT ...], on the synthetic test split."""
    from esgrpo.analysis.connectivity import barriers, default_alphas, interpolate, make_evaluate_fn
    from esgrpo.checkpoints import checkpoint_policy
    from esgrpo.config import GenerationConfig, ModelConfig
    from esgrpo.tasks import load_examples

    need = BEHAVIOUR_ANALYSES[what]
    if (need and len(paths) != need) or len(paths) < 2:
        raise EsgrpoError(f"analyze {what} takes {need or 'two or more'} checkpoint paths, got {len(paths)}")
    examples = {t: load_examples(t, "synthetic", "test", n, seed=seed) for t in tasks}
    model = ModelConfig()  # only its dtype and device rules are used
    policy = checkpoint_policy(paths[0], model)
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    if what == "kl":
        from esgrpo.analysis.kl import kl_drift

        return kl_drift(policy, checkpoint_policy(paths[1], model), examples, samples, max_new_tokens, seed=0)
    if what == "interpolate":
        pts = interpolate(policy, paths[0], paths[1], default_alphas(points), make_evaluate_fn(examples, gen))
        return {"points": pts, "barriers": barriers(pts)}
    from esgrpo.analysis.probes import direction_probe, probe_grid
    from esgrpo.analysis.weights import update_norms

    dirs = {f"d{i}:{Path(c).name}": c for i, c in enumerate(paths[1:], start=1)}
    norms = [update_norms(paths[0], c)["total"]["abs"] for c in dirs.values()]
    return direction_probe(policy, paths[0], dirs, probe_grid(norms, n=points), make_evaluate_fn(examples, gen),
                           random_seed=seed)
