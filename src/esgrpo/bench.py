"""`esgrpo bench es|grpo|rollout|noise`: where the time of an ES iteration / GRPO step goes, peak memory, the
decoding speed of our rollouts against Hugging Face's `generate`, and ES's noise work per member.

Runs a few iterations/steps of the configured trainer in a scratch run directory and prints the
mean seconds per phase (from the trainer's own per-phase timers in metrics.jsonl), their share of
the iteration, throughput, and the trainer's peak memory (the definitions of memory.py).

With `--es.backend ray` the Ray backend is timed beside the sequential one in the same command,
interleaved (sequential, Ray, sequential, Ray), and the report adds the speed-up (median seconds per
iteration), Ray's start-up seconds, each worker's memory and the bytes moved per iteration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Literal

from esgrpo.config import TrainConfig
from esgrpo.models import load_policy, resolve_model_path
from esgrpo.runs import RunDir
from esgrpo.tasks import task_examples
from esgrpo.tasks.prompting import make_task
from esgrpo.train.es import train_es
from esgrpo.train.grpo import train_grpo

PHASES = {"es": ("perturb", "generate", "reward", "restore", "update"),
          "grpo": ("generate", "reward", "backward", "ref", "step")}  # backward includes the scoring forward
MIB = 2 ** 20


def _one(method: Literal["es", "grpo"], cfg: TrainConfig, iterations: int) -> tuple[list[dict], dict, Any]:
    """Train `iterations` iterations/steps in a scratch directory: (metrics rows, results, Ray evaluator)."""
    task = make_task(cfg.task, cfg.prompt, cfg.data)
    d = cfg.data
    train = task_examples(d, cfg.task, "train", d.n_train)
    policy = load_policy(cfg.model, cfg.tiny, engine=cfg.generation.engine)
    evaluator = None
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "bench")
        if method == "grpo":
            res = train_grpo(policy, task, train, dataclasses.replace(cfg.grpo, steps=iterations, checkpoint_every=0,
                                                                      max_rollouts=0), run)
            return run.metrics(), res, None
        es_cfg = dataclasses.replace(cfg.es, iterations=iterations, checkpoint_every=0, save_base=False, max_rollouts=0)
        if cfg.es.backend == "ray":
            from esgrpo.train.ray_population import evaluator_for

            evaluator = evaluator_for(cfg, policy, task, run.path / "updates.jsonl")
        try:
            res = train_es(policy, task, train, es_cfg, run, evaluator=evaluator)
            if evaluator is not None:
                evaluator.close()
        finally:
            if evaluator is not None:
                evaluator.close(check=False)
        return run.metrics(), res, evaluator


def _steady(rows: list[dict]) -> list[dict]:
    """The iterations after the first when there are several: the first one also compiles kernels."""
    return rows[1:] if len(rows) > 1 else rows


def _table(method: str, rows: list[dict]) -> list[str]:
    # per-iteration rollouts and tokens from the cumulative counts, before the first iteration is dropped
    counts = [{k: b[k] - a.get(k, 0) for k in ("rollouts", "tokens")}
              for a, b in zip([{}] + rows, rows, strict=False)]
    # a phase's peak memory over every step, the first included (it allocates the optimizer's state)
    mem = {ph: max(r[f"mem_{ph}"] for r in rows) for ph in PHASES[method]
           if rows and all(r.get(f"mem_{ph}") is not None for r in rows)}
    counts, rows = _steady(counts), _steady(rows)
    per = [r.get("iteration_seconds", r.get("step_seconds", 0.0)) for r in rows]
    total = statistics.mean(per) if per else float("nan")
    lines = [f"  {'phase':10s} {'s/iter':>9s} {'share':>7s}" + (f" {'peak added MiB':>15s}" if mem else "")]
    for ph in PHASES[method]:
        v = statistics.mean(r.get(f"t_{ph}", 0.0) for r in rows) if rows else 0.0
        peak = (f" {mem[ph] / MIB:15.1f}" if ph in mem else f" {'':>14s}-") if mem else ""
        lines.append(f"  {ph:10s} {v:9.3f} {100 * v / total if total else 0:6.1f}%{peak}")
    lines.append(f"  {'total':10s} {total:9.3f}")
    roll = statistics.mean(c["rollouts"] for c in counts)
    toks = statistics.mean(c["tokens"] for c in counts)
    lines.append(f"  throughput: {roll / total:.1f} rollouts/s, {toks / total:.0f} generated tokens/s")
    return lines


def _memory(res: dict) -> str:
    return (f"  peak memory ({res['memory_kind']}): {res['peak_memory_bytes'] / MIB:.1f} MiB in the process, "
            f"{res['peak_memory_added_bytes'] / MIB:.1f} MiB added by training; model weights "
            f"{res['model_bytes'] / MIB:.1f} MiB; measurement (KL reference copy) "
            f"{res['measure_memory_bytes'] / MIB:.1f} MiB, {res['measure_seconds']:.2f} s")


def bench(method: Literal["es", "grpo"], cfg: TrainConfig, iterations: int = 3, repeats: int = 2,
          as_json: bool = False) -> str:
    """Run `iterations` iterations/steps and return the printed report (Ray: beside sequential, `repeats`
    times each, interleaved). as_json: one JSON line with the median seconds per iteration/step instead."""
    head = (f"{method} on {cfg.model.name}, task {cfg.task}, {iterations} "
            f"{'iterations' if method == 'es' else 'steps'} per run (times without the first, which also compiles)")
    if cfg.generation.engine == "vllm":
        return _bench_engines(method, cfg, iterations, repeats, head)
    if method == "grpo" or cfg.es.backend == "sequential":
        rows, res, _ = _one(method, cfg, iterations)
        if as_json:
            import json

            return json.dumps({"median": statistics.median(r.get("iteration_seconds", r.get("step_seconds", 0.0))
                                                           for r in _steady(rows)), **{k: res[k] for k in (
                                                               "peak_memory_bytes", "peak_memory_added_bytes",
                                                               "model_bytes")}})
        return "\n".join([f"{head}, {res['parameters']:,} parameters:", *_table(method, rows), _memory(res)])
    seq_cfg = dataclasses.replace(cfg, es=dataclasses.replace(cfg.es, backend="sequential"))
    runs: dict[str, list[tuple[list[dict], dict, Any]]] = {"sequential": [], "ray": []}
    for _ in range(repeats):  # interleaved: A, B, A, B
        runs["sequential"].append(_one("es", seq_cfg, iterations))
        runs["ray"].append(_one("es", cfg, iterations))
    med = {k: statistics.median(r["iteration_seconds"] for rows, _, _ in v for r in _steady(rows))
           for k, v in runs.items()}
    ray_rows = [r for rows, _, _ in runs["ray"] for r in _steady(rows)]
    ev = runs["ray"][-1][2]
    lines = [f"{head}, {runs['ray'][-1][1]['parameters']:,} parameters; {repeats} runs of each backend, interleaved",
             f"sequential (model.threads {cfg.model.threads or 'default'}):", *_table("es", runs["sequential"][-1][0]),
             f"ray ({cfg.ray.workers} workers x {cfg.ray.threads_per_worker} thread(s); phase times summed over "
             "workers):", *_table("es", runs["ray"][-1][0]),
             f"  median seconds per iteration: sequential {med['sequential']:.3f}, ray {med['ray']:.3f}: "
             f"speed-up {med['sequential'] / med['ray']:.2f}x",
             f"  ray start-up: {statistics.median(e.startup_seconds for _, _, e in runs['ray']):.1f} s (median); "
             "worker memory (RSS): " + ", ".join(f"{w['rss_bytes'] / MIB:.0f} MiB" for w in ev.worker_info),
             "  bytes per iteration (median): to workers "
             f"{statistics.median(r['bytes_to_workers'] for r in ray_rows):.0f}, from workers "
             f"{statistics.median(r['bytes_from_workers'] for r in ray_rows):.0f}; prompts and sampling seeds "
             f"{statistics.median(r['bytes_batch'] for r in ray_rows):.0f} (all workers, counted apart)",
             _memory(runs["sequential"][-1][1]) + " [sequential driver]"]
    return "\n".join(lines)


def _bench_engines(method: Literal["es", "grpo"], cfg: TrainConfig, iterations: int, repeats: int, head: str) -> str:
    """generation.engine vllm: the same run with the native loop and with vLLM, `repeats` times each, interleaved
    (A, B, A, B) in this process (one vLLM engine, started by the first vLLM run and not timed: that run's first
    iteration is dropped as every first iteration is)."""
    native = dataclasses.replace(cfg, generation=dataclasses.replace(cfg.generation, engine="native"))
    runs: dict[str, list[tuple[list[dict], dict, Any]]] = {"native": [], "vllm": []}
    for _ in range(repeats):
        runs["native"].append(_one(method, native, iterations))
        runs["vllm"].append(_one(method, cfg, iterations))
    key = "iteration_seconds" if method == "es" else "step_seconds"
    med = {k: statistics.median(r[key] for rows, _, _ in v for r in _steady(rows)) for k, v in runs.items()}
    sync = statistics.median(r.get("t_sync", 0.0) for rows, _, _ in runs["vllm"] for r in _steady(rows))
    lines = [f"{head}, {runs['vllm'][-1][1]['parameters']:,} parameters; {repeats} runs per engine, interleaved",
             "native (esgrpo's decoding loop):", *_table(method, runs["native"][-1][0]),
             _memory(runs["native"][-1][1]),
             "vllm (in-process engine; sync = weight pushes, inside generate):", *_table(method, runs["vllm"][-1][0]),
             _memory(runs["vllm"][-1][1]),
             f"  median seconds per {'iteration' if method == 'es' else 'step'}: native {med['native']:.3f}, vllm "
             f"{med['vllm']:.3f} (native / vllm {med['native'] / med['vllm']:.2f}x); weight sync {sync:.3f} s per "
             f"{'iteration' if method == 'es' else 'step'}"]
    return "\n".join(lines)


def bench_rollout(cfg: TrainConfig, batch: int = 64, repeats: int = 3) -> str:
    """Our decoding (the lean Llama step where it applies, and the generic loop) against Hugging Face's
    `generate` on the same model, prompts and batch, greedy, interleaved `repeats` times: generated tokens
    per second (medians) and how many responses are token-identical."""
    import time

    import torch

    from esgrpo.rollout import generate, left_pad

    task = make_task(cfg.task, cfg.prompt, cfg.data)
    d = cfg.data
    examples = task_examples(d, cfg.task, "test", batch)
    policy = load_policy(cfg.model, cfg.tiny)
    prompts = task.prompt_ids(policy, examples)
    new = cfg.generation.max_new_tokens
    eos = sorted(policy.eos_ids)

    def ours(lean: bool) -> list[list[int]]:
        out = generate(policy.model, prompts, eos_ids=policy.eos_ids, pad_id=policy.pad_id, max_new_tokens=new,
                       lean=lean)
        return out.response_ids

    @torch.no_grad()
    def hf() -> list[list[int]]:
        ids, mask = left_pad(prompts, policy.pad_id, policy.device)
        out = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                    pad_token_id=policy.pad_id, eos_token_id=eos)
        rows = []
        for row in out[:, ids.shape[1]:].tolist():  # up to and including the first EOS, as ours
            n = next((i + 1 for i, t in enumerate(row) if t in policy.eos_ids), len(row))
            rows.append(row[:n])
        return rows

    methods = {"esgrpo lean": lambda: ours(True), "esgrpo generic": lambda: ours(False), "HF generate": hf}
    from esgrpo.models.vllm_engine import vllm_available

    if vllm_available():  # a vLLM row where vLLM is installed (its start-up is not timed: the warm-up round)
        from esgrpo.models import with_engine
        from esgrpo.models.policy import Policy

        engine = with_engine(Policy(policy.model, policy.tokenizer, name=policy.name), "vllm",
                             resolve_model_path(cfg.model, cfg.tiny))
        engine.generate(prompts[:1], max_new_tokens=1)
        methods["vLLM"] = lambda: engine.generate(prompts, max_new_tokens=new).response_ids
    times: dict[str, list[float]] = {k: [] for k in methods}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(repeats):  # interleaved: every method once per round
        for name, fn in methods.items():
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
    n_tok = {k: sum(len(r) for r in v) for k, v in tokens.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = "HF generate"
    lines = [f"rollout on {cfg.model.name} ({policy.num_parameters():,} parameters, {policy.device}, "
             f"{torch.get_num_threads()} threads), task {cfg.task}, batch {batch}, max_new_tokens {new}, greedy, "
             f"{repeats} interleaved rounds:",
             f"  {'decoder':16s} {'median s':>9s} {'tokens/s':>9s} {'vs HF':>6s} {'identical to HF':>16s}"]
    for k in methods:
        same = sum(a == b for a, b in zip(tokens[k], tokens[ref], strict=True))
        lines.append(f"  {k:16s} {med[k]:9.3f} {n_tok[k] / med[k]:9.0f} {med[ref] / med[k]:5.2f}x "
                     f"{same:>7d}/{batch} rows")
    same_tok = sum(x == y for a, b in zip(tokens["esgrpo lean"], tokens[ref], strict=True)
                   for x, y in zip(a, b, strict=False))
    lines.append(f"  identical tokens, lean vs HF generate: {same_tok}/{n_tok[ref]}")
    return "\n".join(lines)


def bench_lowrank(cfg: TrainConfig, repeats: int = 3) -> str:
    """One population of es.population members (x2 with es.antithetic) on es.batch_size prompts, greedy or as
    configured, interleaved `repeats` times: (a) full-rank noise, member by member (perturb, decode, restore);
    (b) low-rank noise (es.rank, 1 if unset) in one batched decode; (c) pure batched generation of the same
    rows with the unperturbed model (the bound (b) can approach). Seconds per population and the memory each
    adds over the weights (peak RSS / CUDA memory)."""
    import time

    import torch

    from esgrpo.memory import PeakMemory, tensor_bytes
    from esgrpo.rollout import generate
    from esgrpo.train.batched_population import BatchedLowRankEvaluator
    from esgrpo.train.es import draw_batch, draw_members
    from esgrpo.train.noise import warm_up
    from esgrpo.train.population import SequentialEvaluator, es_scorer

    es = dataclasses.replace(cfg.es, rank=cfg.es.rank or 1)
    task = make_task(cfg.task, cfg.prompt, cfg.data)
    examples = task_examples(cfg.data, cfg.task, "train", cfg.data.n_train)
    policy = load_policy(cfg.model, cfg.tiny)
    params = policy.named_parameters()
    warm_up(params)
    members, batch = draw_members(es, 1), draw_batch(es, 1, examples, task.prompt_ids(policy, examples))
    scorer = es_scorer(task, es)
    full = SequentialEvaluator(policy, scorer, es.sigma)
    low = BatchedLowRankEvaluator(policy, scorer, es.sigma, es.rank, es.lowrank_other, rows_per_batch=es.lowrank_rows)
    rows = [ids for _ in members for ids in batch.prompt_ids]
    seeds = None if batch.sample_seeds is None else [s for _ in members for s in batch.sample_seeds]

    def pure() -> int:
        n = 0
        for s in range(0, len(rows), es.lowrank_rows):
            out = generate(policy.model, rows[s:s + es.lowrank_rows], eos_ids=policy.eos_ids, pad_id=policy.pad_id,
                           max_new_tokens=scorer.max_new_tokens, temperature=scorer.temperature, top_p=scorer.top_p,
                           seeds=None if seeds is None else seeds[s:s + es.lowrank_rows], decode=policy.decode,
                           stop=task.stop)
            n += out.n_tokens
        return n

    runs = {"full-rank, member by member": lambda: full.evaluate(members, batch).tokens,
            f"rank {es.rank}, batched": lambda: low.evaluate(members, batch).tokens,
            "pure batched generation": pure}
    times: dict[str, list[float]] = {k: [] for k in runs}
    added: dict[str, float] = {}
    tokens: dict[str, int] = {}
    pure()  # warm-up (allocator, kernels)
    for _ in range(repeats):
        for name, fn in runs.items():
            with PeakMemory(policy.device) as mem:
                t0 = time.perf_counter()
                tokens[name] = fn()
                times[name].append(time.perf_counter() - t0)
            added[name] = max(added.get(name, 0.0), mem.report()["peak_memory_added_bytes"])
    med = {k: statistics.median(v) for k, v in times.items()}
    weights = tensor_bytes(params)
    low_name, pure_name = f"rank {es.rank}, batched", "pure batched generation"
    lines = [f"ES population on {cfg.model.name} ({policy.num_parameters():,} parameters, {policy.device}, "
             f"{torch.get_num_threads()} threads), task {cfg.task}: {len(members)} members x {len(batch.prompt_ids)} "
             f"prompts = {len(rows)} rows, {es.lowrank_rows} rows per batched decode, {repeats} interleaved rounds",
             f"  {'':28s} {'median s':>9s} {'tokens':>7s} {'memory added':>13s}"]
    for k in runs:
        lines.append(f"  {k:28s} {med[k]:9.2f} {tokens[k]:7d} {added[k] / MIB:9.0f} MiB ({added[k] / weights:.2f}x "
                     "the weights)")
    lines.append(f"  full-rank / low-rank batched: {med['full-rank, member by member'] / med[low_name]:.2f}x; "
                 f"low-rank batched / pure generation: {med[low_name] / med[pure_name]:.2f}")
    return "\n".join(lines)


def bench_noise(cfg: TrainConfig, repeats: int = 3, members: int = 4) -> str:
    """ES's noise work on the configured model's weights, in seconds per population member: perturb (the member's
    noise drawn and added to the backup copy), restore (the copy back) and the member's share of the update
    (`members` members' noise summed into the weights by `apply_update`, divided by `members`: the update's cost
    is linear in the members, so its share per member does not depend on es.population). The compiled noise
    kernels beside the eager ops, interleaved `repeats` times (medians); then the generator alone, in normals
    per second, and the floor it sets: every member draws its noise twice (perturb, update)."""
    import time

    import torch

    from esgrpo.train.es import apply_update, draw_members
    from esgrpo.train.noise import CHUNK, Perturbation, eager_kernels, tensor_key, tensor_noise, warm_up

    policy = load_policy(cfg.model, cfg.tiny)
    params = policy.named_parameters()
    d = sum(p.numel() for _, p in params)
    warm_up(params)
    pert = Perturbation(params)
    es = dataclasses.replace(cfg.es, population=members, antithetic=False)
    coefs = [(-1.0) ** n * cfg.es.alpha / members for n in range(members)]  # any nonzero coefficients

    def one_round(rnd: int) -> dict[str, float]:
        seeds = draw_members(es, rnd)
        t0 = time.perf_counter()
        pert.perturb(seeds[0][0], 1, cfg.es.sigma)
        t1 = time.perf_counter()
        pert.restore()
        t2 = time.perf_counter()
        apply_update(params, seeds, coefs)
        t3 = time.perf_counter()
        pert.snapshot()  # the weights moved: the next perturb starts from them, as in training
        return {"perturb": t1 - t0, "restore": t2 - t1, "update share": (t3 - t2) / members}

    def generator() -> float:
        t0 = time.perf_counter()
        tensor_noise(0, "bench", (8 * CHUNK,), device=policy.device)
        return 8 * CHUNK / (time.perf_counter() - t0)

    k0, k1 = (torch.tensor(k, dtype=torch.int64, device=policy.device) for k in tensor_key(0, "bench"))
    words = torch.compile(_philox_words, dynamic=True) if os.environ.get("ESGRPO_NOISE_COMPILE", "1") != "0" \
        else _philox_words

    def integer_part() -> float:  # the Philox words alone (no Gaussian transform): normals-equivalent per second
        t0 = time.perf_counter()
        for c in range(8):
            words(k0, k1, torch.tensor(c * CHUNK // 4, device=policy.device), CHUNK // 4)
        return 8 * CHUNK / (time.perf_counter() - t0)

    modes = {"compiled": contextlib.nullcontext, "eager": eager_kernels}
    times: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for rnd in range(repeats + 1):  # interleaved: compiled, eager, compiled, eager, ...; round 0 compiles, untimed
        for mode, ctx in modes.items():
            with ctx():
                res, rate = one_round(1 + rnd), generator()
            if rnd:
                for k, v in res.items():
                    times[mode].setdefault(k, []).append(v)
                rates[mode].append(rate)
        philox = integer_part()
        if rnd:
            rates.setdefault("philox", []).append(philox)
    med = {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}
    rate = {m: statistics.median(v) for m, v in rates.items()}
    lines = [f"ES noise work on {cfg.model.name} ({d:,} parameters, {params[0][1].dtype}, {policy.device}, "
             f"{torch.get_num_threads()} thread(s)): seconds per member, median of {repeats} interleaved rounds "
             f"(update: {members} members, divided by {members})",
             f"  {'':14s} {'compiled':>9s} {'eager':>9s} {'eager/compiled':>15s}"]
    for k in ("perturb", "restore", "update share"):
        c, e = med["compiled"][k], med["eager"][k]
        lines.append(f"  {k:14s} {c:9.3f} {e:9.3f} {e / c:14.2f}x")
    tot = {m: sum(med[m][k] for k in ("perturb", "restore", "update share")) for m in modes}
    lines.append(f"  {'total':14s} {tot['compiled']:9.3f} {tot['eager']:9.3f} {tot['eager'] / tot['compiled']:14.2f}x")
    lines.append(f"  generator alone: {rate['compiled'] / 1e6:.0f} M normals/s compiled, {rate['eager'] / 1e6:.0f} M "
                 f"eager; two draws of {d / 1e6:.1f} M per member: a floor of {2 * d / rate['compiled']:.3f} s per "
                 "member (compiled)")
    share = rate["compiled"] / rate["philox"]
    lines.append(f"  of the generator's time (compiled), the Philox words alone take {share:.0%}; the rest is the "
                 "Gaussian transform (log, sqrt, cos, sin) and the writes")
    return "\n".join(lines)


def _philox_words(k0: Any, k1: Any, first: Any, count: int) -> Any:
    """The generator's integer part for `count` counters, folded to one float32 per counter (XOR of the four
    words): what bench noise times to split the generator's cost."""
    import torch

    from esgrpo.train.noise import _words

    x = _words(k0, k1, first, count)
    return (x[0] ^ x[1] ^ x[2] ^ x[3]).to(torch.float32)
