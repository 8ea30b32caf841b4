"""Across seeds: the null baselines between seeds' checkpoints, and every study number's mean and interval.

A study with `seeds: [s1, s2, ...]` holds one complete study per seed (`<out>/seed-<s>/`). This module
reads only those studies' records and checkpoints:

1. `between_seeds`: per task, the cosine of the updates ES-vs-ES and GRPO-vs-GRPO (two seeds, same task)
   beside ES-vs-GRPO (same seed and other seeds) and the random-direction scale 1/sqrt(d); and the
   interpolation barrier along ES_a -> ES_b, GRPO_a -> GRPO_b (every pair of seeds) and ES_s -> GRPO_s
   (every seed), greedy accuracy on `nulls.n_examples` test examples, each with a paired bootstrap interval
   over those examples. Each checkpoint's end point and each path's inner points are one job
   (parallel.run_jobs: one after another, or on the Ray workers with `parallel: ray`). Stored in
   `<out>/seeds.json` piece by piece as the jobs finish (an interrupted run resumes).
2. `aggregate`: Table 1, the geometry numbers and the sequential metrics of every seed, each as a mean
   with its Student-t 95% interval over seeds (analysis/stats.py).
3. `findings`: the paper's claims, each decided from the intervals: yes (the interval excludes the null
   in the claimed direction), no (it excludes it the other way) or undecided.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from esgrpo.analysis import weights
from esgrpo.analysis.connectivity import barrier, interpolate
from esgrpo.analysis.stats import bootstrap_interval, excludes, mean_interval
from esgrpo.config import METHODS, GenerationConfig, StudyConfig, variant_arms
from esgrpo.evaluate import evaluate_task
from esgrpo.runs import JsonRecord, read_json

PATH_KINDS = ("es_long|es_long", "grpo|grpo", "es_long|grpo")  # between seeds, between seeds, same seed


def _say(msg: str) -> None:
    print(f"[seeds] {msg}", file=sys.stderr, flush=True)


def seed_checkpoints(study_dir: Path, es_short_iterations: int) -> dict[str, dict[str, Path]]:
    """{task: {method: checkpoint dir}} of one seed's study (from its results.json)."""
    from esgrpo.analysis.study import method_checkpoints

    results = read_json(study_dir / "results.json")
    return {t: method_checkpoints(r, es_short_iterations) for t, r in results["tasks"].items() if "runs" in r}


def pairs(seeds: list[int]) -> list[tuple[int, int]]:
    return list(itertools.combinations(seeds, 2))


def path_list(seeds: list[int], variants: list[str] | tuple[str, ...] = ()
              ) -> list[tuple[str, tuple[int, str], tuple[int, str]]]:
    """(kind, (seed, method) at alpha 0, (seed, method) at alpha 1) of every null and ES-vs-GRPO path; each
    ES variant arm adds its own seed-vs-seed null and its path to GRPO (same seed)."""
    out = [(f"{m}|{m}", (a, m), (b, m)) for m in ("es_long", "grpo", *variants) for a, b in pairs(seeds)]
    return out + [(f"{m}|grpo", (s, m), (s, "grpo")) for m in ("es_long", *variants) for s in seeds]


# ----------------------------------------------------------------------------------------------
# 1. Between seeds


def between_seeds(root: Path, cfg: StudyConfig, dirs: dict[int, Path]) -> dict[str, Any]:
    """Cosines and barriers between the seeds' checkpoints (see the module docstring); `<root>/seeds.json`."""
    from esgrpo.checkpoints import base_checkpoint
    from esgrpo.models import resolve_model_path
    from esgrpo.parallel import Job, run_jobs

    seeds = list(dirs)
    store = JsonRecord(root / "seeds.json", header={**asdict(cfg.nulls), "seeds": seeds},
                       what="nulls settings or seeds")
    ckpts = {s: seed_checkpoints(d, cfg.es.iterations) for s, d in dirs.items()}
    tasks = [t for t in cfg.data.tasks if all(t in ckpts[s] for s in seeds)]
    base = base_checkpoint(resolve_model_path(cfg.model, cfg.tiny))
    t0 = time.time()

    # 1a. Cosines (streamed from the checkpoints; cheap).
    for t in tasks:
        if store.has("cosine", t):
            continue
        _say(f"cosines between seeds: {t}")
        cos: dict[str, Any] = {}
        for m in cfg.arms():
            cos[f"{m}|{m}"] = {f"{a}|{b}": weights.cosine(base, ckpts[a][t][m], ckpts[b][t][m])["cosine"]
                               for a, b in pairs(seeds)}
        cos["es_long|grpo"] = {f"{s}|{s}": weights.cosine(base, ckpts[s][t]["es_long"], ckpts[s][t]["grpo"])["cosine"]
                               for s in seeds}
        cos["es_long|grpo (other seeds)"] = {
            f"{a}|{b}": weights.cosine(base, ckpts[a][t]["es_long"], ckpts[b][t]["grpo"])["cosine"]
            for a, b in itertools.permutations(seeds, 2)}
        c = weights.cosine(base, ckpts[seeds[0]][t]["es_long"], ckpts[seeds[0]][t]["grpo"])
        cos["random_baseline"], cos["inv_sqrt_d"], cos["d"] = c["random_baseline"], c["inv_sqrt_d"], c["d"]
        store.put(cos, "cosine", t)

    # 1b. Barriers: greedy per-example rewards at every point. Each checkpoint's end point is evaluated once (a
    # job of its own) and each path's inner points are one job: one after another here, or on the Ray workers
    # with `parallel: ray`. Every result is stored as it finishes, and a path as soon as its ends are there.
    alphas = [i / (cfg.nulls.alphas - 1) for i in range(cfg.nulls.alphas)]
    jobs: list[Job] = []
    job_of: list[tuple[str, ...]] = []  # what each job's result is: ("endpoint", t, m@s) or ("inner", t, key)
    paths: dict[tuple[str, str], tuple[str, str, str]] = {}  # (t, key) -> (kind, end point a, end point b)
    for t in tasks:
        for kind, (sa, ma), (sb, mb) in path_list(seeds, list(cfg.es_variants)):
            key = f"{ma}@{sa}->{mb}@{sb}"
            if store.has("barriers", t, key):
                continue
            paths[(t, key)] = (kind, f"{ma}@{sa}", f"{mb}@{sb}")
            for s, m in ((sa, ma), (sb, mb)):
                if not store.has("endpoints", t, f"{m}@{s}") and ("endpoint", t, f"{m}@{s}") not in job_of:
                    ck = ckpts[s][t][m]
                    jobs.append(Job(f"end point {m}@{s} on {t}", path_rewards, (cfg, t, ck, ck, [0.0])))
                    job_of.append(("endpoint", t, f"{m}@{s}"))
            jobs.append(Job(f"barrier {key} on {t}", path_rewards,
                            (cfg, t, ckpts[sa][t][ma], ckpts[sb][t][mb], alphas[1:-1])))
            job_of.append(("inner", t, key))
    inner: dict[tuple[str, str], list[list[float]]] = {}

    def finished(i: int, rewards: list[list[float]]) -> None:
        what, t, key = job_of[i]
        if what == "endpoint":
            store.put(rewards[0], "endpoints", t, key)
        else:
            inner[(t, key)] = rewards
        for (pt, pkey), (kind, a, b) in list(paths.items()):
            if (pt, pkey) in inner and store.has("endpoints", pt, a) and store.has("endpoints", pt, b):
                per_point = [store.at("endpoints", pt, a), *inner.pop((pt, pkey)), store.at("endpoints", pt, b)]
                iv = bootstrap_interval(per_point, lambda acc: barrier(acc, alphas), cfg.nulls.resamples,
                                        cfg.nulls.seed)
                store.put({"kind": kind, "alphas": alphas, "accuracy": [sum(r) / len(r) for r in per_point],
                           "barrier": iv}, "barriers", pt, pkey)
                del paths[(pt, pkey)]

    if jobs:
        _say(f"barriers: {len(paths)} paths, {len(jobs)} jobs ({cfg.nulls.n_examples} examples, "
             f"{len(alphas)} points per path)")
        run_jobs(jobs, cfg.ray if cfg.parallel == "ray" else None, on_done=finished)
    store.put(time.time() - t0 + store.data.get("seconds", 0.0), "seconds")
    return store.data


def path_rewards(cfg: StudyConfig, task_name: str, theta_a: Path, theta_b: Path, alphas: list[float]
                 ) -> list[list[float]]:
    """Greedy per-example rewards on the first `nulls.n_examples` test examples of `task_name` at each alpha of
    the straight path theta_a -> theta_b (one barrier job; loads its own model, so it can run on a Ray worker)."""
    from esgrpo.models import load_policy
    from esgrpo.tasks import load_task_examples
    from esgrpo.tasks.prompting import make_task

    policy = load_policy(cfg.model, cfg.tiny, engine=cfg.generation.engine)
    gen = GenerationConfig(max_new_tokens=cfg.generation.max_new_tokens, batch_size=cfg.generation.batch_size)
    examples = load_task_examples(cfg.data, "test", cfg.data.n_test)[task_name][:cfg.nulls.n_examples]
    task = make_task(task_name, cfg.prompt, cfg.data)

    def rewards(p: Any) -> dict[str, Any]:
        return {"rewards": evaluate_task(p, task, examples, gen, per_example=True, label=f"null {task.name}")
                ["rewards"]}

    return [p["metrics"]["rewards"] for p in interpolate(policy, theta_a, theta_b, alphas, rewards, restore=False)]


# ----------------------------------------------------------------------------------------------
# 2. Aggregate over seeds


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _off_task_kl(kl: dict[str, Any] | None, trained: str) -> float | None:
    if not kl:
        return None
    vals = [v["kl"] for t, v in kl.items() if t != trained and isinstance(v, dict) and "kl" in v]
    return sum(vals) / len(vals) if vals else None


def per_seed_numbers(study_dir: Path) -> dict[str, dict[str, float | None]]:
    """The numbers one seed's study contributes, flat: {"table1": {"math/es_long": 0.31, ...}, "geometry":
    {...}, "sequence": {...}} (None where that part was not run)."""
    res = read_json(study_dir / "results.json")
    t1: dict[str, float | None] = {}
    for task, base in res.get("base", {}).items():
        acc = _get(res, "tasks", task, "accuracy") or {}
        variants = variant_arms(acc)
        t1[f"{task}/base"] = base
        for m in (*METHODS, *variants):
            t1[f"{task}/{m}"] = acc.get(m)
            t1[f"{task}/gain {m}"] = acc[m] - base if m in acc else None
        for v in variants:
            for other in ("es_short", "grpo"):
                t1[f"{task}/{v} - {other}"] = acc[v] - acc[other] if other in acc else None
        if "es_short" in acc and "grpo" in acc:
            t1[f"{task}/es_short - grpo"] = acc["es_short"] - acc["grpo"]
        if "es_short" in acc and "es_long" in acc:
            t1[f"{task}/es_long - es_short"] = acc["es_long"] - acc["es_short"]
    geo: dict[str, float | None] = {}
    a_path = study_dir / "analysis.json"
    a = read_json(a_path) if a_path.exists() else {}
    for task in a.get("weights", {}):
        w = a["weights"][task]
        ne, ng = _get(w, "norms", "es_long", "total", "abs"), _get(w, "norms", "grpo", "total", "abs")
        geo[f"{task}/norm es_long"], geo[f"{task}/norm grpo"] = ne, ng
        geo[f"{task}/norm ratio es_long/grpo"] = ne / ng if ne and ng else None
        geo[f"{task}/cosine es_long|grpo"] = _get(w, "cosine", "es_long|grpo", "cosine")
        for m in ("es_long", "grpo"):
            kl = _get(a, "kl", task, m)
            geo[f"{task}/on-task KL {m}"] = _get(kl, task, "kl")
            geo[f"{task}/off-task KL {m}"] = _off_task_kl(kl, task)
            nll, nll0 = _get(a, "capability", task, m, "nll"), _get(a, "capability", "base", "nll")
            geo[f"{task}/held-out NLL change {m}"] = nll - nll0 if nll is not None and nll0 is not None else None
        geo[f"{task}/barrier es_long->grpo"] = _get(a, "interpolation", task, "es_long->grpo", "barriers",
                                                     "mean_accuracy")
        ko, kg = geo[f"{task}/off-task KL es_long"], geo[f"{task}/off-task KL grpo"]
        geo[f"{task}/off-task KL es_long - grpo"] = ko - kg if ko is not None and kg is not None else None
        ne_, ng_ = geo[f"{task}/held-out NLL change es_long"], geo[f"{task}/held-out NLL change grpo"]
        geo[f"{task}/held-out NLL change es_long - grpo"] = ne_ - ng_ if ne_ is not None and ng_ is not None else None
        walk = _get(a, "theory", "walks", task) or {}
        if walk.get("predicted_norm_paper"):
            geo[f"{task}/norm es_long / alpha sqrt(dT/N)"] = walk["measured_norm"] / walk["predicted_norm_paper"]
        rw = _get(a, "theory", "random_walk_kl", str(walk.get("iterations")), "kl") or {}
        kl = _get(a, "kl", task, "es_long") or {}
        ratios = [kl[b]["kl"] / rw[b] for b in rw if b != task and rw[b] and isinstance(kl.get(b), dict)]
        if ratios:
            geo[f"{task}/off-task KL es_long / exact random walk"] = sum(ratios) / len(ratios)
        geo.update(_variant_geometry(a, task, walk))
    seq: dict[str, float | None] = {}
    s_path = study_dir / "sequence" / "sequence.json"
    if s_path.exists():
        s = read_json(s_path)
        for m, v in s.get("methods", {}).items():
            met = v.get("metrics", {})
            for k in ("average_accuracy", "bwt", "mean_forgetting"):
                seq[f"{m}/{k}"] = met.get(k)
            for k in ("diagonal", "off_diagonal"):
                seq[f"{m}/KL {k}"] = _get(v, "kl_split", k)
        variants = variant_arms(s.get("methods", {}))
        for a_, b_ in (("es_long", "grpo"), ("es_short", "grpo"), ("es_long", "es_short"),
                       *((v, o) for v in variants for o in ("es_short", "grpo"))):
            fa, fb = seq.get(f"{a_}/mean_forgetting"), seq.get(f"{b_}/mean_forgetting")
            if fa is not None and fb is not None:
                seq[f"mean_forgetting {a_} - {b_}"] = fa - fb
    return {"table1": t1, "geometry": geo, "sequence": seq}


def _diff(x: float | None, y: float | None) -> float | None:
    return x - y if x is not None and y is not None else None


def _variant_geometry(a: dict[str, Any], task: str, walk: dict[str, Any]) -> dict[str, float | None]:
    """One seed's geometry numbers of every ES variant arm on `task`: norm (and over its prediction and over
    GRPO's), cosines with the other arms, on/off-task KL and its differences to ES short and GRPO, held-out NLL
    change, the barriers from ES short and to GRPO."""
    w, geo = a["weights"][task], {}
    for v in variant_arms(w["norms"]):
        nv, ng = _get(w, "norms", v, "total", "abs"), _get(w, "norms", "grpo", "total", "abs")
        geo[f"{task}/norm {v}"] = nv
        geo[f"{task}/norm ratio {v}/grpo"] = nv / ng if nv is not None and ng else None
        pred = _get(walk, "variants", v, "predicted")
        geo[f"{task}/norm {v} / predicted"] = nv / pred if nv is not None and pred else None
        for pair, c in w["cosine"].items():
            if v in pair.split("|"):
                geo[f"{task}/cosine {pair}"] = c.get("cosine")
        kl = _get(a, "kl", task, v)
        geo[f"{task}/on-task KL {v}"] = _get(kl, task, "kl")
        geo[f"{task}/off-task KL {v}"] = off = _off_task_kl(kl, task)
        for other in ("es_short", "grpo"):
            geo[f"{task}/off-task KL {v} - {other}"] = _diff(off, _off_task_kl(_get(a, "kl", task, other), task))
        nll, nll0 = _get(a, "capability", task, v, "nll"), _get(a, "capability", "base", "nll")
        geo[f"{task}/held-out NLL change {v}"] = _diff(nll, nll0)
        for path in (f"es_short->{v}", f"{v}->grpo"):
            geo[f"{task}/barrier {path}"] = _get(a, "interpolation", task, path, "barriers", "mean_accuracy")
    return geo


def aggregate(dirs: dict[int, Path], nulls: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every per-seed number as {"mean", "lo", "hi", "sd", "n", "values"} over seeds, per part; with the
    between-seed nulls summarised per task (cosines and barriers: mean and interval over the pairs)."""
    per = {s: per_seed_numbers(d) for s, d in dirs.items()}
    out: dict[str, Any] = {"seeds": list(dirs)}
    for part in ("table1", "geometry", "sequence"):
        keys = list(dict.fromkeys(k for s in per for k in per[s][part]))
        out[part] = {k: mean_interval([per[s][part].get(k) for s in per]) for k in keys}
    if nulls:
        out["nulls"] = summarise_nulls(nulls)
    return out


def summarise_nulls(nulls: dict[str, Any]) -> dict[str, Any]:
    """Per task: each cosine kind and each barrier kind as a mean and interval over its pairs."""
    out: dict[str, Any] = {}
    for t, cos in nulls.get("cosine", {}).items():
        row = out.setdefault(t, {})
        for kind, vals in cos.items():
            if isinstance(vals, dict):
                row[f"cosine {kind}"] = mean_interval(list(vals.values()))
        row["random_baseline"] = cos.get("random_baseline")
        row["inv_sqrt_d"] = cos.get("inv_sqrt_d")
    for t, paths in nulls.get("barriers", {}).items():
        row = out.setdefault(t, {})
        for kind in dict.fromkeys([*PATH_KINDS, *(p["kind"] for p in paths.values())]):
            got = [{"path": key, **p["barrier"]} for key, p in paths.items() if p["kind"] == kind]
            if got:
                row[f"barrier {kind}"] = {**mean_interval([g["value"] for g in got]), "paths": got}
    return out


# ----------------------------------------------------------------------------------------------
# 3. Findings


def _verdict(iv: dict[str, Any] | None, null: float, above: bool) -> str:
    """yes: the interval excludes `null` on the claimed side; no: on the other side; undecided: it contains it."""
    if not iv or iv.get("mean") is None:
        return "not measured"
    ex = excludes(iv, null)
    if ex is None:
        return "undecided (one seed)"
    if not ex:
        return "undecided"
    return "yes" if (iv["lo"] > null) == above else "no"


def _within(iv: dict[str, Any] | None, lo: float, hi: float) -> str:
    """yes: the interval lies inside [lo, hi]; no: it lies outside; undecided otherwise."""
    if not iv or iv.get("mean") is None:
        return "not measured"
    if iv.get("lo") is None:
        return "undecided (one seed)"
    if lo <= iv["lo"] and iv["hi"] <= hi:
        return "yes"
    return "no" if iv["hi"] < lo or iv["lo"] > hi else "undecided"


def _ivs(iv: dict[str, Any] | None, scale: float = 100.0, spec: str = ".1f") -> str:
    if not iv or iv.get("mean") is None:
        return "-"
    if iv.get("lo") is None:
        return format(scale * iv["mean"], spec)
    return f"{format(scale * iv['mean'], spec)} [{format(scale * iv['lo'], spec)}, {format(scale * iv['hi'], spec)}]"


def findings(agg: dict[str, Any]) -> list[dict[str, str]]:
    """The paper's claims (arXiv 2604.01499) on this study: claim, task, numbers (mean [95% interval]), verdict."""
    rows: list[dict[str, str]] = []
    t1, geo, seq, nulls = agg["table1"], agg["geometry"], agg["sequence"], agg.get("nulls", {})
    tasks = list(dict.fromkeys(k.split("/")[0] for k in t1))
    for task in tasks:
        for m, label in (("es_short", "ES short"), ("grpo", "GRPO")):
            iv = t1.get(f"{task}/gain {m}")
            rows.append({"claim": f"{label} improves on the base model", "task": task,
                         "numbers": f"gain {_ivs(iv)} points", "verdict": _verdict(iv, 0.0, True)})
        iv = t1.get(f"{task}/es_long - es_short")
        rows.append({"claim": "More ES iterations help (accuracy ES long - ES short > 0)", "task": task,
                     "numbers": f"{_ivs(iv)} points", "verdict": _verdict(iv, 0.0, True)})
        iv = t1.get(f"{task}/es_short - grpo")
        rows.append({"claim": "ES short matches or beats GRPO (accuracy ES short - GRPO > 0: yes; < 0: no; "
                              "undecided is consistent with matching)", "task": task,
                     "numbers": f"{_ivs(iv)} points", "verdict": _verdict(iv, 0.0, True)})
        iv = geo.get(f"{task}/norm ratio es_long/grpo")
        rows.append({"claim": "ES moves the weights further than GRPO (norm ratio > 1)", "task": task,
                     "numbers": f"ratio {_ivs(iv, 1.0, '.3g')}", "verdict": _verdict(iv, 1.0, True)})
        iv = geo.get(f"{task}/norm es_long / alpha sqrt(dT/N)")
        rows.append({"claim": "ES's norm is the random walk's alpha sqrt(dT/N) (measured / predicted within 10%)",
                     "task": task, "numbers": _ivs(iv, 1.0, ".4g"), "verdict": _within(iv, 0.9, 1.1)})
        n = nulls.get(task, {})
        eg, gg = n.get("cosine es_long|grpo"), n.get("cosine grpo|grpo")
        if eg and gg and eg.get("mean") is not None and gg.get("mean") is not None:
            verdict = ("yes" if eg["hi"] is not None and gg["lo"] is not None and eg["hi"] < gg["lo"]
                       else "undecided" if eg["hi"] is not None else "undecided (one pair)")
            rows.append({"claim": "ES and GRPO reach different solutions: cosine ES-vs-GRPO below the GRPO-vs-GRPO "
                                  "null", "task": task,
                         "numbers": f"ES-vs-GRPO {_ivs(eg, 1.0, '.3g')}, GRPO-vs-GRPO {_ivs(gg, 1.0, '.3g')}, "
                                    f"ES-vs-ES {_ivs(n.get('cosine es_long|es_long'), 1.0, '.3g')}, "
                                    f"1/sqrt(d) {n.get('inv_sqrt_d', float('nan')):.2g}", "verdict": verdict})
        iv = geo.get(f"{task}/off-task KL es_long - grpo")
        rows.append({"claim": "ES drifts more off-task than GRPO (off-task KL ES long - GRPO > 0)", "task": task,
                     "numbers": f"{_ivs(iv, 1.0, '.3g')} nats", "verdict": _verdict(iv, 0.0, True)})
        iv = geo.get(f"{task}/off-task KL es_long / exact random walk")
        rows.append({"claim": "The random walk predicts ES long's off-task KL within 2x (measured / exact "
                              "random-walk KL in [0.5, 2])", "task": task, "numbers": _ivs(iv, 1.0, ".3g"),
                     "verdict": _within(iv, 0.5, 2.0)})
        iv = geo.get(f"{task}/held-out NLL change es_long - grpo")
        rows.append({"claim": "ES costs more held-out capability than GRPO (held-out NLL change ES long - GRPO > 0)",
                     "task": task, "numbers": f"{_ivs(iv, 1.0, '.3g')} nats/token", "verdict": _verdict(iv, 0.0, True)})
        bg = n.get("barrier es_long|grpo")
        if bg:
            nb = [n.get(f"barrier {k}") for k in ("es_long|es_long", "grpo|grpo")]
            null_hi = max((b["hi"] if b.get("hi") is not None else b["mean"]) for b in nb if b) if any(nb) else None
            tol = 1e-9  # sums of zeros: a barrier of 1e-17 points is none
            if bg.get("lo") is None or null_hi is None:
                verdict = "undecided (one seed)"
            elif bg["lo"] > null_hi + tol:
                verdict = "no"  # a barrier beyond what two seeds of one method show
            elif bg["hi"] <= null_hi + tol:
                verdict = "yes"
            else:
                verdict = "undecided"
            rows.append({"claim": "No barrier between ES and GRPO (the ES-vs-GRPO accuracy barrier is no higher "
                                  "than the seed-vs-seed barriers: yes when its interval lies below their upper "
                                  "bound, no when above it)", "task": task,
                         "numbers": f"ES-vs-GRPO {_ivs(bg)}, ES-vs-ES {_ivs(nb[0])}, GRPO-vs-GRPO {_ivs(nb[1])} "
                                    "points", "verdict": verdict})
        rows += _variant_findings(task, t1, geo, n)
    variants = variant_arms(dict.fromkeys(k.split(" ")[1] for k in seq if k.startswith("mean_forgetting ")))
    for a_, b_ in (("es_long", "grpo"), ("es_long", "es_short"), ("es_short", "grpo"),
                   *((v, o) for v in variants for o in ("es_short", "grpo"))):
        iv = seq.get(f"mean_forgetting {a_} - {b_}")
        if iv:
            la, lb = (x.replace("es_long", "ES long").replace("es_short", "ES short").replace("grpo", "GRPO")
                      for x in (a_, b_))
            rows.append({"claim": f"In sequence, {la} forgets more than {lb} (mean forgetting {la} - {lb} > 0)",
                         "task": "sequence", "numbers": f"{_ivs(iv)} points", "verdict": _verdict(iv, 0.0, True)})
    return rows


def _variant_findings(task: str, t1: dict[str, Any], geo: dict[str, Any], nulls: dict[str, Any]
                      ) -> list[dict[str, str]]:
    """The three questions about each ES variant arm on `task`: does it learn as well as full-rank ES and GRPO,
    does its update share ES's geometry (norm, orthogonality to GRPO, off-task KL), does it drift less."""
    rows: list[dict[str, str]] = []
    prefix = f"{task}/gain "
    for v in variant_arms(k[len(prefix):] for k in t1 if k.startswith(prefix)):
        def row(claim: str, numbers: str, verdict: str, v: str = v) -> None:
            rows.append({"claim": f"[{v}] {claim}", "task": task, "numbers": numbers, "verdict": verdict})

        iv = t1.get(f"{task}/gain {v}")
        row("improves on the base model", f"gain {_ivs(iv)} points", _verdict(iv, 0.0, True))
        for other, label in (("es_short", "ES short"), ("grpo", "GRPO")):
            iv = t1.get(f"{task}/{v} - {other}")
            row(f"matches or beats {label} (accuracy {v} - {label} > 0: yes; < 0: no; undecided is consistent "
                "with matching)", f"{_ivs(iv)} points", _verdict(iv, 0.0, True))
        iv = geo.get(f"{task}/norm {v} / predicted")
        if iv:
            row("its norm is the walk's prediction (alpha sqrt(dT/N), or the anchored OU level; within 10%)",
                _ivs(iv, 1.0, ".4g"), _within(iv, 0.9, 1.1))
        iv = geo.get(f"{task}/norm ratio {v}/grpo")
        row("moves the weights further than GRPO (norm ratio > 1)", f"ratio {_ivs(iv, 1.0, '.3g')}",
            _verdict(iv, 1.0, True))
        vg, gg = geo.get(f"{task}/cosine grpo|{v}"), nulls.get("cosine grpo|grpo")
        if vg and gg and vg.get("hi") is not None and gg.get("lo") is not None:
            row("reaches another solution than GRPO (cosine with GRPO, same seed, below the GRPO-vs-GRPO null)",
                f"{_ivs(vg, 1.0, '.3g')} vs {_ivs(gg, 1.0, '.3g')}", "yes" if vg["hi"] < gg["lo"] else "undecided")
        iv = geo.get(f"{task}/cosine es_short|{v}")
        if iv:
            ee = nulls.get("cosine es_short|es_short")
            row("its update is as orthogonal to full-rank ES short's (same seed) as two ES short seeds are "
                "(cosine inside the ES-short-vs-ES-short null's interval)",
                f"{_ivs(iv, 1.0, '.3g')} vs {_ivs(ee, 1.0, '.3g')}",
                _within(iv, ee["lo"], ee["hi"]) if ee and ee.get("lo") is not None else "undecided (no null)")
        for other, label in (("es_short", "ES short"), ("grpo", "GRPO")):
            iv = geo.get(f"{task}/off-task KL {v} - {other}")
            row(f"drifts more off-task than {label} (off-task KL {v} - {label} > 0)", f"{_ivs(iv, 1.0, '.3g')} nats",
                _verdict(iv, 0.0, True))
    return rows


def refresh(root: Path) -> dict[str, Any]:
    """Recompute the statistics and findings of a multi-seed study from its records (the seeds' studies and
    seeds.json) into its results.json; nothing is trained or evaluated."""
    record = JsonRecord(Path(root) / "results.json")
    dirs = {int(s): Path(d) for s, d in record.data["seed_dirs"].items()}
    nulls_path = Path(root) / "seeds.json"
    agg = aggregate(dirs, read_json(nulls_path) if nulls_path.exists() else None)
    record.data.update(agg)
    record.data["findings"] = findings(agg)
    record.save()
    return record.data


def interval_note() -> str:
    return ("Intervals: mean and 95% Student-t interval over seeds (mean +- t(0.975, n-1) sd / sqrt(n)); "
            "barriers: paired percentile bootstrap over test examples per path, and over paths the t interval. "
            "A finding is *yes* when its interval excludes the null on the claimed side, *no* when it excludes it "
            "on the other side, *undecided* otherwise.")


__all__ = ["aggregate", "between_seeds", "findings", "interval_note", "path_list", "per_seed_numbers", "refresh",
           "seed_checkpoints", "summarise_nulls"]
