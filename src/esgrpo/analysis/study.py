"""All geometry analyses of a finished study, from its checkpoints and run records only.

For every trained task, with ES = the ES-long checkpoint, ES short its earlier checkpoint, GRPO the
GRPO checkpoint and each ES variant arm's final checkpoint (`es_variants`; all from the same base):
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from esgrpo.analysis import weights
from esgrpo.analysis.capability import heldout_nll, heldout_path
from esgrpo.analysis.connectivity import barriers, default_alphas, greedy_references, interpolate, make_evaluate_fn
from esgrpo.analysis.kl import kl_drift
from esgrpo.analysis.probes import direction_probe
from esgrpo.checkpoints import base_checkpoint, checkpoint_policy
from esgrpo.config import METHODS, AnalysisConfig, GenerationConfig, StudyConfig, variant_arms
from esgrpo.models.policy import Policy
from esgrpo.runs import JsonRecord, read_json
from esgrpo.tasks import load_task_examples
from esgrpo.tasks.base import Example
from esgrpo.tasks.prompting import make_task


def method_checkpoints(task_result: dict[str, Any], es_short_iterations: int) -> dict[str, Path]:
    """{arm: checkpoint} of one task: ES short, ES long, GRPO, then every ES variant arm the task trained."""
    runs = task_result["runs"]
    es, grpo = Path(runs["es"]), Path(runs["grpo"])
    return {"es_short": es / "checkpoints" / f"step-{es_short_iterations:06d}",
            "es_long": es / "checkpoints" / "final", "grpo": grpo / "checkpoints" / "final",
            **{arm: Path(run) / "checkpoints" / "final" for arm, run in runs.items() if arm not in ("es", "grpo")}}


def cosine_pairs(arms: list[str]) -> list[tuple[str, str]]:
    """The update pairs whose cosine is measured: ES long|GRPO, ES short|GRPO, ES short|ES long, and every
    variant arm with ES short, ES long, GRPO and each variant listed before it."""
    pairs = [("es_long", "grpo"), ("es_short", "grpo"), ("es_short", "es_long")]
    variants = variant_arms(arms)
    return pairs + [(a, v) for i, v in enumerate(variants) for a in (*METHODS, *variants[:i])]


def variant_paths(arms: list[str]) -> dict[str, tuple[str, str]]:
    """Interpolation paths of the variant arms: from ES short to the variant, and from the variant to GRPO."""
    return {p: ends for v in variant_arms(arms)
            for p, ends in ((f"es_short->{v}", ("es_short", v)), (f"{v}->grpo", (v, "grpo")))}


def log_grid(lo: float, hi: float, n: int, extra: list[float]) -> list[float]:
    """0, n log-spaced points from lo to hi, and the extra values; sorted, rounded duplicates removed."""
    pts = {0.0, *extra}
    if lo > 0 and hi > lo:
        pts |= {lo * (hi / lo) ** (i / (n - 1)) for i in range(n)}
    return sorted({float(f"{t:.6g}") for t in pts})


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
    for a, b in cosine_pairs(list(ckpts)):
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


class _Context:
    """What every analysis step needs: the checkpoints, the base model, the test data, a progress line."""

    def __init__(self, root: Path, cfg: StudyConfig, results: dict[str, Any], tasks: list[str],
                 store: JsonRecord) -> None:
        from esgrpo.models import load_policy, resolve_model_path

        self.root, self.cfg, self.a, self.store, self.tasks = root, cfg, cfg.analysis, store, tasks
        self.results = results
        self.t0 = time.time()
        self.base = base_checkpoint(resolve_model_path(cfg.model, cfg.tiny))
        self.ckpts = {t: method_checkpoints(results["tasks"][t], cfg.es.iterations) for t in tasks}
        self.policy: Policy = load_policy(cfg.model, cfg.tiny, engine=cfg.generation.engine)
        self.test: dict[str, list[Example]] = load_task_examples(cfg.data, "test", cfg.data.n_test)
        self.prompted = {t: make_task(t, cfg.prompt, cfg.data) for t in self.test}
        self.heldout = heldout_path(self.base) if self.a.heldout_docs else None
        self.gen = GenerationConfig(max_new_tokens=cfg.generation.max_new_tokens, batch_size=cfg.generation.batch_size)

    def say(self, msg: str) -> None:
        print(f"[analyze] {msg} ({time.time() - self.t0:.0f}s)", file=sys.stderr, flush=True)

    def trained(self, t: str, m: str) -> Policy:
        return checkpoint_policy(self.ckpts[t][m], self.cfg.model)


TASK_PIECES = ("weights", "capability", "kl", "interpolation", "probes")  # + theory.walks: per trained task


def analyze_study(root: str | Path, study_cfg: StudyConfig, results: dict[str, Any] | None = None,
                  ray: Any = None) -> dict[str, Any]:
    """Run every analysis of the study in `root` (resumable); returns the contents of analysis.json.

    The pieces shared by all tasks (cross-task cosines, the base model's held-out NLL and Fisher traces) run
    here; each trained task's pieces are one job (parallel.run_jobs: here one after another, or on Ray in
    parallel with `ray` a RayConfig) that keeps its progress in `analysis-<task>.json`, merged into
    analysis.json as it finishes. analysis.json belongs to the analysis settings it was made with: other
    settings are refused, naming the changed keys (delete the file to recompute)."""
    from esgrpo.parallel import Job, run_jobs

    root = Path(root)
    results = results or read_json(root / "results.json")
    tasks = [t for t in study_cfg.data.tasks if t in results.get("tasks", {})]
    store = JsonRecord(root / "analysis.json", header=asdict(study_cfg.analysis), what="analysis settings")
    store.data.pop("config", None)
    if not tasks:
        return store.data
    store.data["es_short_iterations"] = study_cfg.es.iterations
    t0 = time.time()
    ctx = _Context(root, study_cfg, results, tasks, store)
    _cross_task(ctx)                 # cosines between tasks' updates
    _capability_base(ctx)            # the base model's held-out NLL
    _fisher(ctx)                     # the base model's Fisher trace per task (off-task KL prediction)
    _random_walk_kl(ctx)             # the exact KL of base + a random step of ES short's and ES long's size
    todo = [t for t in tasks if not _task_done(store, t)]
    for t in todo:  # a task record starts from what analysis.json already holds (resume)
        _seed_task_record(store, root / f"analysis-{t}.json", t)

    def merge(i: int, data: dict[str, Any]) -> None:
        t = todo[i]
        for piece in TASK_PIECES:
            store.put(data[piece][t], piece, t)
        store.put(data["theory"]["walks"][t], "theory", "walks", t)

    run_jobs([Job(f"analysis {t}", analyze_task, (root, study_cfg, results, t)) for t in todo], ray, on_done=merge)
    store.put(time.time() - t0 + store.data.get("seconds", 0.0), "seconds")
    ctx.say("done")
    return store.data


def analyze_task(root: Path, study_cfg: StudyConfig, results: dict[str, Any], task: str) -> dict[str, Any]:
    """Every analysis of one trained task, resumable from `analysis-<task>.json`; returns that record."""
    store = JsonRecord(root / f"analysis-{task}.json")
    ctx = _Context(root, study_cfg, results, [task], store)
    _weight_statistics(ctx)        # 1. norms, cosines, sparsity, rank (streamed from the checkpoints)
    _capability(ctx)               # 2. held-out pretraining NLL
    _kl_drift(ctx)                 # 3. KL to the base on every task's prompts
    _connectivity(ctx)             # 4. interpolation paths and barriers
    _probes(ctx)                   # 5. direction probes
    _theory(ctx)                   # 6. the random-walk theory against the ES runs
    return store.data


def _task_done(store: JsonRecord, t: str) -> bool:
    return all(store.has(piece, t) for piece in TASK_PIECES) and store.has("theory", "walks", t)


def _seed_task_record(store: JsonRecord, path: Path, t: str) -> None:
    rec = JsonRecord(path)
    for piece in TASK_PIECES:
        if store.has(piece, t) and not rec.has(piece, t):
            rec.data.setdefault(piece, {})[t] = store.at(piece, t)
    if store.has("theory", "walks", t) and not rec.has("theory", "walks", t):
        rec.data.setdefault("theory", {}).setdefault("walks", {})[t] = store.at("theory", "walks", t)
    rec.save()


def _weight_statistics(ctx: _Context) -> None:
    for t in ctx.tasks:
        if not ctx.store.has("weights", t):
            ctx.say(f"weights: {t}")
            ctx.store.put(_weights_summary(ctx.base, ctx.ckpts[t], ctx.a), "weights", t)


def _cross_task(ctx: _Context) -> None:
    if not ctx.store.has("cross_task") and len(ctx.tasks) > 1:
        cross: dict[str, Any] = {}
        for m in ("es_long", "grpo"):
            for i, a in enumerate(ctx.tasks):
                for b in ctx.tasks[i + 1:]:
                    cross[f"{m}:{a}|{b}"] = weights.cosine(ctx.base, ctx.ckpts[a][m], ctx.ckpts[b][m])["cosine"]
        ctx.store.put(cross, "cross_task")


def _capability_base(ctx: _Context) -> None:
    if ctx.heldout is not None and not ctx.store.has("capability", "base"):
        ctx.say("held-out NLL: base")
        ctx.store.put(heldout_nll(ctx.policy, ctx.base, ctx.a.heldout_docs), "capability", "base")


def _capability(ctx: _Context) -> None:
    for t in ctx.tasks:
        if ctx.heldout is None:  # no held-out pretraining slice (only the tiny model has one)
            if not ctx.store.has("capability", t):
                ctx.store.put({}, "capability", t)
            continue
        for m in ctx.ckpts[t]:
            if not ctx.store.has("capability", t, m):
                ctx.store.put(heldout_nll(ctx.trained(t, m), ctx.base, ctx.a.heldout_docs), "capability", t, m)


def _kl_drift(ctx: _Context) -> None:
    examples = {k: v[:ctx.a.kl_prompts] for k, v in ctx.test.items()}
    for t in ctx.tasks:
        for m in ctx.ckpts[t]:
            if not ctx.store.has("kl", t, m):
                ctx.say(f"KL drift: {m} trained on {t}")
                ctx.store.put(kl_drift(ctx.trained(t, m), ctx.policy, examples, ctx.a.kl_samples,
                                       ctx.a.kl_max_new_tokens, ctx.a.seed, batch_size=ctx.cfg.generation.batch_size,
                                       tasks=ctx.prompted), "kl", t, m)


def _connectivity(ctx: _Context) -> None:
    alphas = default_alphas(ctx.a.alphas)
    for t in ctx.tasks:
        paths = {"base->es_long": (None, "es_long"), "base->grpo": (None, "grpo"), "es_long->grpo": ("es_long", "grpo"),
                 **variant_paths(list(ctx.ckpts[t]))}
        ev_tasks = [t] if ctx.a.interp_tasks == "trained" else list(ctx.test)
        ex = {k: ctx.test[k][:ctx.a.n_examples] for k in ev_tasks}
        refs = None
        for name, (a, b) in paths.items():
            if ctx.store.has("interpolation", t, name):
                continue
            if refs is None:  # the base model's greedy answers, the fixed responses whose NLL is tracked
                refs = greedy_references(ctx.policy, ex, ctx.gen.max_new_tokens, ctx.gen.batch_size, tasks=ctx.prompted)
            ctx.say(f"interpolation {name} on {t}")
            fn = make_evaluate_fn(ex, ctx.gen, references=refs, heldout=ctx.heldout,
                                  heldout_max_docs=min(ctx.a.heldout_docs, 200) or None, tasks=ctx.prompted)
            start = ctx.base if a is None else ctx.ckpts[t][a]
            pts = interpolate(ctx.policy, start, ctx.ckpts[t][b], alphas, fn)
            ctx.store.put({"alphas": alphas, "points": pts, "barriers": barriers(pts)}, "interpolation", t, name)


def _probes(ctx: _Context) -> None:
    probe_ex = {k: v[:ctx.a.probe_n_examples] for k, v in ctx.test.items()}
    for t in ctx.tasks:
        if ctx.store.has("probes", t):
            continue
        ne = ctx.store.at("weights", t, "norms", "es_long", "total", "abs")
        ng = ctx.store.at("weights", t, "norms", "grpo", "total", "abs")
        dirs = {k: v for k, v, n in (("es", ctx.ckpts[t]["es_long"], ne), ("grpo", ctx.ckpts[t]["grpo"], ng)) if n > 0}
        if not dirs:  # neither method moved (e.g. ES with zero fitness spread): nothing to probe
            ctx.store.put({"skipped": "both updates are zero"}, "probes", t)
            continue
        norms = [n for n in (ne, ng) if n > 0]
        ts = log_grid(min(norms) / 2, 1.5 * max(norms), ctx.a.probe_points, norms)
        ctx.say(f"direction probes on {t}: {len(ts)} points x {len(dirs) + 1} directions")
        res = direction_probe(ctx.policy, ctx.base, dirs, ts, make_evaluate_fn(probe_ex, ctx.gen, tasks=ctx.prompted),
                              random_seed=ctx.a.seed)
        ctx.store.put(res, "probes", t)


def _fisher(ctx: _Context) -> None:
    from esgrpo.theory.validate import fisher_trace

    if not ctx.store.has("theory", "fisher"):
        ctx.say("Fisher traces of the base model per task")
        ctx.store.put({k: fisher_trace(ctx.policy, v[:ctx.a.kl_prompts], k, ctx.a.kl_prompts,
                                       ctx.a.kl_max_new_tokens, ctx.a.seed, task=ctx.prompted[k])
                       for k, v in ctx.test.items()}, "theory", "fisher")


RANDOM_WALK_DRAWS = 2  # random steps per walk length for the exact random-walk KL


def _random_walk_kl(ctx: _Context) -> None:
    """The random-walk model's off-task KL evaluated exactly (theory/validate.random_walk_kl) for ES short's and
    ES long's T: one prediction per T, the same whichever task ES trained on (the walk is isotropic)."""
    from esgrpo.models import load_policy
    from esgrpo.theory.validate import random_walk_kl

    es = ctx.cfg.es
    for T in (es.iterations, es.iterations * ctx.cfg.es_long_factor):
        if ctx.store.has("theory", "random_walk_kl", str(T)):
            continue
        ctx.say(f"theory: exact KL of a random walk of T={T}")
        examples = {k: v[:ctx.a.kl_prompts] for k, v in ctx.test.items()}
        # sum over one iteration's members of coef^2 = (alpha / M)^2 sum z^2 = alpha^2 / M (z-scores, M members)
        scale = es.alpha * math.sqrt(T / es.members_per_iteration)
        walker = load_policy(ctx.cfg.model, ctx.cfg.tiny, engine=ctx.cfg.generation.engine)
        ctx.store.put(random_walk_kl(ctx.policy, walker, scale, examples,
                                     ctx.a.kl_samples, ctx.a.kl_max_new_tokens, ctx.a.seed, RANDOM_WALK_DRAWS,
                                     ctx.cfg.generation.batch_size, ctx.prompted),
                      "theory", "random_walk_kl", str(T))


def _theory(ctx: _Context) -> None:
    """ES long's walk replayed from its log against the predictions; GRPO's direction for the aligned part."""
    from esgrpo.theory.validate import walk_drift

    for t in ctx.tasks:
        if ctx.store.has("theory", "walks", t):
            continue
        ctx.say(f"theory: replaying the ES walk on {t}")
        w = walk_drift(ctx.results["tasks"][t]["runs"]["es"], ctx.cfg.es.alpha, ctx.cfg.es.population,
                       direction=ctx.ckpts[t]["grpo"], direction_base=ctx.base)
        w["tensor_ratios"] = {k: v["ratio"] for k, v in w.pop("per_tensor").items() if v["ndim"] == 2}
        w["variants"] = {v: _variant_norm(ctx, t, v, w["d"]) for v in variant_arms(ctx.ckpts[t])}
        ctx.store.put(w, "theory", "walks", t)


def _variant_norm(ctx: _Context, t: str, arm: str, d: int) -> dict[str, Any]:
    """A variant arm's update norm beside the walk's prediction: alpha sqrt(dT/N) (low-rank eps has unit-variance
    entries too), the Ornstein-Uhlenbeck level with the l2 anchor (theory/predict.awd_norm); none for l1."""
    from esgrpo.theory.predict import awd_norm

    es = ctx.cfg.variant_es(arm)
    T = ctx.results["tasks"][t]["budgets"][arm]["iterations"]
    step = es.alpha * es.anchor_lambda if es.anchor_decay == "l2" else 0.0
    predicted = None if es.anchor_decay == "l1" else awd_norm(es.alpha, es.members_per_iteration, T, d, step)
    measured = ctx.store.at("weights", t, "norms", arm, "total", "abs")
    return {"measured": measured, "predicted": predicted, "iterations": T, "members": es.members_per_iteration,
            "alpha": es.alpha, "rank": es.rank, "anchor_decay": es.anchor_decay, "anchor_step": step}
