"""All geometry analyses of a finished study, from its checkpoints and run records only.

For every trained task, with ES = the ES-long checkpoint, ES short its earlier checkpoint and GRPO the
GRPO checkpoint (all from the same base):
1. weights: update norms (overall, per layer, per module type), cosines between the updates (ES/GRPO,
   ES short/ES long, and across tasks), sparsity and per-matrix rank;
2. capability: NLL of the tiny model's held-out pretraining documents before and after;
3. KL drift KL(pi_method || pi_base) on every task's prompts (on-task and off-task);
4. linear connectivity along base->ES, base->GRPO and ES->GRPO, with barriers;
5. direction probes along the unit ES, GRPO and a random direction;
6. the random-walk theory: the ES walk replayed from its log against alpha sqrt(d T / N), and the base
   model's Fisher trace per task for the predicted off-task KL (theory/validate.py).
Each piece is stored in `<study>/analysis.json` as soon as it is done, so an interrupted analysis
resumes where it stopped; a finished one is not recomputed (delete the file to redo it).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from esgrpo.analysis import weights
from esgrpo.analysis.capability import heldout_nll, heldout_path
from esgrpo.analysis.connectivity import barriers, default_alphas, greedy_references, interpolate, make_evaluate_fn
from esgrpo.analysis.kl import kl_drift
from esgrpo.analysis.probes import direction_probe
from esgrpo.config import NON_NEGATIVE, POSITIVE, F, GenerationConfig
from esgrpo.runs import write_json

METHODS = ("es_short", "es_long", "grpo")


@dataclass
class AnalysisConfig:
    """Geometry analyses run after the study's training (esgrpo analyze study / the report)."""

    enabled: bool = F(True, "Run the analyses at the end of `esgrpo study`.")
    n_examples: int = F(100, "Test examples per task for the interpolation and probe curves (the first n of the "
                             "study's test split).", POSITIVE)
    alphas: int = F(11, "Interpolation grid: this many evenly spaced points from 0 to 1.", (lambda v: v >= 2, ">= 2"))
    interp_tasks: Literal["trained", "all"] = F("trained", "Tasks evaluated along the interpolation paths: the "
                                                "trained task only, or all tasks.")
    probe_points: int = F(6, "Direction probes: log-spaced t values between the smaller and 1.5x the larger "
                             "displacement norm (plus 0 and both norms).", (lambda v: v >= 2, ">= 2"))
    probe_n_examples: int = F(50, "Test examples per task at each probe point (every task is evaluated).", POSITIVE)
    kl_prompts: int = F(32, "Test prompts per task for KL drift.", POSITIVE)
    kl_samples: int = F(2, "Sampled responses per prompt for KL drift (temperature 1).", POSITIVE)
    kl_max_new_tokens: int = F(32, "Maximum tokens of the responses sampled for KL drift.", POSITIVE)
    heldout_docs: int = F(400, "Held-out pretraining documents for the capability NLL (tiny model; 0 = skip).",
                          NON_NEGATIVE)
    sparsity_atol: float = F(0.0, "A weight counts as changed when |delta| > this (0: any change).", NON_NEGATIVE)
    rank_top_k: int = F(8, "Singular values kept per update matrix.", POSITIVE)
    seed: int = F(0, "Seed of the random probe direction and of the KL samples.")


def base_checkpoint(model_path: str) -> Path:
    """The base model's local directory (a hub id is looked up in the local HF cache only)."""
    p = Path(model_path)
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_path, local_files_only=True))


def method_checkpoints(task_result: dict[str, Any], es_short_iterations: int) -> dict[str, Path]:
    es, grpo = Path(task_result["runs"]["es"]), Path(task_result["runs"]["grpo"])
    return {"es_short": es / "checkpoints" / f"step-{es_short_iterations:06d}",
            "es_long": es / "checkpoints" / "final", "grpo": grpo / "checkpoints" / "final"}


def log_grid(lo: float, hi: float, n: int, extra: list[float]) -> list[float]:
    """0, n log-spaced points from lo to hi, and the extra values; sorted, rounded duplicates removed."""
    pts = {0.0, *extra}
    if lo > 0 and hi > lo:
        pts |= {lo * (hi / lo) ** (i / (n - 1)) for i in range(n)}
    return sorted({float(f"{t:.6g}") for t in pts})


class _Store:
    """analysis.json, written after every finished piece."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        import json

        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        if self.data.get("config") not in (None, config):
            print(f"[analyze] {path} was made with another analysis config; recomputing", file=sys.stderr)
            self.data = {}
        self.data["config"] = config

    def has(self, *keys: str) -> bool:
        d = self.data
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return False
            d = d[k]
        return True

    def put(self, value: Any, *keys: str) -> None:
        d = self.data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
        write_json(self.path, self.data)


def _weights_summary(base: Path, ckpts: dict[str, Path], cfg: AnalysisConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"norms": {}, "sparsity": {}, "rank": {}, "cosine": {}}
    for m, path in ckpts.items():
        n = weights.update_norms(base, path)
        out["norms"][m] = {"total": n["total"], "per_layer": n["per_layer"], "per_module": n["per_module"]}
        s = weights.sparsity(base, path, atol=cfg.sparsity_atol)
        out["sparsity"][m] = {k: v for k, v in s.items() if k != "per_tensor"}
        r = weights.update_rank(base, path, top_k=cfg.rank_top_k)
        mats = r["per_matrix"]
        eff = [v["effective_rank"] / v["max_rank"] for v in mats.values() if v["effective_rank"] == v["effective_rank"]]
        out["rank"][m] = {"per_matrix": mats,
                          "mean_effective_rank_fraction": sum(eff) / len(eff) if eff else float("nan")}
    for a, b in (("es_long", "grpo"), ("es_short", "grpo"), ("es_short", "es_long")):
        c = weights.cosine(base, ckpts[a], ckpts[b])
        out["cosine"][f"{a}|{b}"] = {k: c[k] for k in ("cosine", "norm_a", "norm_b", "d", "random_baseline",
                                                       "inv_sqrt_d")}
        out["cosine"][f"{a}|{b}"]["per_module"] = _cosine_per_module(c["per_tensor"])
    return out


def _cosine_per_module(per_tensor: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Cosine restricted to each module type (recombined from per-tensor dots and norms)."""
    acc: dict[str, list[float]] = {}
    for name, t in per_tensor.items():
        dot = t["cosine"] * t["norm_a"] * t["norm_b"] if t["cosine"] == t["cosine"] else 0.0
        a = acc.setdefault(weights.module_type(name), [0.0, 0.0, 0.0])
        a[0] += dot
        a[1] += t["norm_a"] ** 2
        a[2] += t["norm_b"] ** 2
    return {k: v[0] / math.sqrt(v[1] * v[2]) if v[1] * v[2] > 0 else float("nan") for k, v in acc.items()}


def analyze_study(root: str | Path, study_cfg: Any, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every analysis of the study in `root` (resumable); returns the contents of analysis.json."""
    import json

    from esgrpo.models import load_policy, resolve_model_path
    from esgrpo.study import load_task_examples
    from esgrpo.train.launch import checkpoint_policy

    root = Path(root)
    cfg: AnalysisConfig = study_cfg.analysis
    results = results or json.loads((root / "results.json").read_text())
    tasks = [t for t in study_cfg.data.tasks if t in results.get("tasks", {})]
    store = _Store(root / "analysis.json", asdict(cfg))
    if not tasks:
        return store.data
    t0 = time.time()

    def say(msg: str) -> None:
        print(f"[analyze] {msg} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)

    base = base_checkpoint(resolve_model_path(study_cfg.model, study_cfg.tiny))
    short = study_cfg.es.iterations
    store.data["es_short_iterations"] = short
    ckpts = {t: method_checkpoints(results["tasks"][t], short) for t in tasks}

    # 1. weights (cheap, streaming)
    for t in tasks:
        if not store.has("weights", t):
            say(f"weights: {t}")
            store.put(_weights_summary(base, ckpts[t], cfg), "weights", t)
    if not store.has("cross_task") and len(tasks) > 1:
        cross: dict[str, Any] = {}
        for m in ("es_long", "grpo"):
            for i, a in enumerate(tasks):
                for b in tasks[i + 1:]:
                    c = weights.cosine(base, ckpts[a][m], ckpts[b][m])
                    cross[f"{m}:{a}|{b}"] = c["cosine"]
        store.put(cross, "cross_task")

    policy = load_policy(study_cfg.model, study_cfg.tiny)
    test = load_task_examples(study_cfg.data, "test", study_cfg.data.n_test)
    heldout = heldout_path(base) if cfg.heldout_docs else None

    # 2. capability: held-out corpus NLL
    if heldout is not None and not store.has("capability", "base"):
        say("held-out NLL: base")
        store.put(heldout_nll(policy, base, cfg.heldout_docs), "capability", "base")
    for t in tasks:
        for m in METHODS:
            if heldout is not None and not store.has("capability", t, m):
                p = checkpoint_policy(ckpts[t][m], study_cfg.model)
                store.put(heldout_nll(p, base, cfg.heldout_docs), "capability", t, m)

    # 3. KL drift on every task's prompts
    kl_examples = {k: v[:cfg.kl_prompts] for k, v in test.items()}
    for t in tasks:
        for m in METHODS:
            if store.has("kl", t, m):
                continue
            say(f"KL drift: {m} trained on {t}")
            p = checkpoint_policy(ckpts[t][m], study_cfg.model)
            store.put(kl_drift(p, policy, kl_examples, cfg.kl_samples, cfg.kl_max_new_tokens, cfg.seed,
                               batch_size=study_cfg.generation.batch_size), "kl", t, m)

    gen = GenerationConfig(max_new_tokens=study_cfg.generation.max_new_tokens,
                           batch_size=study_cfg.generation.batch_size)
    # 4. linear connectivity
    alphas = default_alphas(cfg.alphas)
    paths = {"base->es_long": (base, "es_long"), "base->grpo": (base, "grpo"), "es_long->grpo": ("es_long", "grpo")}
    for t in tasks:
        ev_tasks = [t] if cfg.interp_tasks == "trained" else list(test)
        ex = {k: test[k][:cfg.n_examples] for k in ev_tasks}
        refs = None
        for name, (a, b) in paths.items():
            if store.has("interpolation", t, name):
                continue
            if refs is None:  # the base model's greedy answers, the fixed responses whose NLL is tracked
                refs = greedy_references(policy, ex, gen.max_new_tokens, gen.batch_size)
            say(f"interpolation {name} on {t}")
            fn = make_evaluate_fn(ex, gen, references=refs, heldout=heldout,
                                  heldout_max_docs=min(cfg.heldout_docs, 200) or None)
            pa = a if isinstance(a, Path) else ckpts[t][a]
            pts = interpolate(policy, pa, ckpts[t][b], alphas, fn)
            store.put({"alphas": alphas, "points": pts, "barriers": barriers(pts)}, "interpolation", t, name)

    # 5. direction probes
    probe_ex = {k: v[:cfg.probe_n_examples] for k, v in test.items()}
    for t in tasks:
        if store.has("probes", t):
            continue
        ne = store.data["weights"][t]["norms"]["es_long"]["total"]["abs"]
        ng = store.data["weights"][t]["norms"]["grpo"]["total"]["abs"]
        dirs = {k: v for k, v, n in (("es", ckpts[t]["es_long"], ne), ("grpo", ckpts[t]["grpo"], ng)) if n > 0}
        if not dirs:  # neither method moved (e.g. ES with zero fitness spread): nothing to probe
            store.put({"skipped": "both updates are zero"}, "probes", t)
            continue
        norms = [n for n in (ne, ng) if n > 0]
        ts = log_grid(min(norms) / 2, 1.5 * max(norms), cfg.probe_points, norms)
        say(f"direction probes on {t}: {len(ts)} points x {len(dirs) + 1} directions")
        res = direction_probe(policy, base, dirs, ts, make_evaluate_fn(probe_ex, gen), random_seed=cfg.seed)
        store.put(res, "probes", t)
    # 6. the random-walk theory against the ES runs (ES long's walk; GRPO's direction for the aligned part)
    from esgrpo.theory.validate import fisher_trace, walk_drift

    if not store.has("theory", "fisher"):
        say("Fisher traces of the base model per task")
        store.put({k: fisher_trace(policy, v[:cfg.kl_prompts], k, cfg.kl_prompts, cfg.kl_max_new_tokens, cfg.seed)
                   for k, v in test.items()}, "theory", "fisher")
    for t in tasks:
        if store.has("theory", "walks", t):
            continue
        say(f"theory: replaying the ES walk on {t}")
        w = walk_drift(results["tasks"][t]["runs"]["es"], study_cfg.es.alpha, study_cfg.es.population,
                       direction=ckpts[t]["grpo"], direction_base=base)
        w["tensor_ratios"] = {k: v["ratio"] for k, v in w.pop("per_tensor").items() if v["ndim"] == 2}
        store.put(w, "theory", "walks", t)
    store.put(time.time() - t0 + store.data.get("seconds", 0.0), "seconds")
    say("done")
    return store.data
