"""Evolution Strategies for LLM post-training (Qiu et al. 2025, as run by the paper), done right.

One iteration t (read `train_es` top to bottom):
    1. draw N noise seeds and a batch of prompts, both derived from (cfg.seed, t);
    2. for each member n: perturb theta + sigma * eps_n in place, score F_n = mean reward, restore;
    3. z_n = (F_n - mean F) / (std F + 1e-8);
    4. theta <- theta + (alpha / N) * sum_n z_n * eps_n     (1/sigma folded into alpha);
    5. log fitness, cost and the update (seeds + coefficients) to the run directory;
    6. checkpoint every `checkpoint_every` iterations, keeping the `checkpoint_keep` newest.

Unlike the public implementations (arXiv 2604.01499, whose known defects are listed in the README),
noise is independent per tensor and restoring is bit-exact (noise.py). The update is accumulated in
float32 per tensor and rounded once, by `apply_update`, which `replay` also uses: the final weights
can be rebuilt bit-exactly from the base checkpoint and updates.jsonl (a few KB per iteration instead
of a checkpoint). Everything random derives from (cfg.seed, iteration), so a resumed run ends with
exactly the weights of an uninterrupted one.

A run stops with an error the moment an update is not finite or larger than the weights
themselves (a step size far too large), instead of training on ruined weights.

Files written into the run directory (every metric is listed in the README's metrics table):
    metrics.jsonl    one row per iteration (fitness stats, cost, phase times, update norm, KL)
    updates.jsonl    one row per iteration: seeds, signs, coefficients, fitness, sigma, alpha
    checkpoints/     step-000000 (the base, for replay and weight analyses), every checkpoint_every
                     iterations (the checkpoint_keep newest, and the checkpoint_pin steps), and final;
                     each with trainer_state.json
    results.json     totals, final fitness, peak memory (training and measurement apart)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esgrpo.checkpoints import (
    load_resumable,
    load_weights,
    prune_checkpoints,
    same_weights,
    save_checkpoint,
    step_name,
    truncate_jsonl,
)
from esgrpo.config import ESConfig, from_dict, identity, identity_changes, validate
from esgrpo.errors import ConfigError, EsgrpoError
from esgrpo.memory import PeakMemory, sync, tensor_bytes
from esgrpo.models.policy import Policy
from esgrpo.progress import Progress
from esgrpo.runs import RunDir, read_jsonl
from esgrpo.tasks.base import Example, Task
from esgrpo.train.anchor import Anchor, anchor_step
from esgrpo.train.budget import Budget
from esgrpo.train.kl import kl_to_reference
from esgrpo.train.lowrank import LOWRANK_VERSION, check_rank, lowrank_update
from esgrpo.train.noise import CHUNK, NOISE_VERSION, add_noise_sum, derive_seed, warm_up
from esgrpo.train.population import Batch, Member, PopulationEvaluator, SequentialEvaluator, es_scorer
from esgrpo.train.precision import AuditSums
from esgrpo.train.published import published_update

__all__ = ["ESConfig", "apply_update", "draw_batch", "draw_members", "replay", "replay_run", "train_es", "zscore"]


def check_inputs(cfg: ESConfig, examples: list[Example]) -> None:
    """What a run needs of its config and data, checked before anything is written."""
    validate(cfg, "es.")
    if not examples:
        raise EsgrpoError("ES needs at least one training example")
    if cfg.batch_size > len(examples):
        raise ConfigError(f"es.batch_size = {cfg.batch_size} exceeds the {len(examples)} training examples "
                          "(data.n_train)")


# ----------------------------------------------------------------------------------------------
# The pieces of one iteration


def draw_members(cfg: ESConfig, iteration: int) -> list[Member]:
    """The iteration's (seed, sign) members; antithetic: (s, +1), (s, -1) pairs sharing a seed."""
    seeds = [derive_seed(cfg.seed, "member", iteration, n) for n in range(cfg.population)]
    if cfg.antithetic:
        return [(s, sign) for s in seeds for sign in (1, -1)]
    return [(s, 1) for s in seeds]


def draw_batch(cfg: ESConfig, iteration: int, examples: list[Example], prompt_ids: list[list[int]]) -> Batch:
    """The iteration's prompts and sampling seeds, shared by all members (common random numbers)."""
    n = len(examples)
    if cfg.batch_size and cfg.batch_size < n:
        # Rank by a hash of (seed, iteration, index): a seeded shuffle stable across library versions.
        ranked = sorted(range(n), key=lambda i: derive_seed(cfg.seed, "batch", iteration, i))
        indices = ranked[:cfg.batch_size]
    else:
        indices = list(range(n))
    seeds = None
    if cfg.decoding == "sample":
        seeds = [derive_seed(cfg.seed, "sample", iteration, pos) for pos in range(len(indices))]
    return Batch(iteration=iteration, indices=indices, examples=[examples[i] for i in indices],
                 prompt_ids=[prompt_ids[i] for i in indices], sample_seeds=seeds)


def zscore(fitness: list[float]) -> list[float]:
    """(F - mean) / (std + 1e-8), population std (numpy's default, as Qiu et al.), in float64."""
    n = len(fitness)
    mean = math.fsum(fitness) / n
    std = math.sqrt(math.fsum((f - mean) ** 2 for f in fitness) / n)
    return [(f - mean) / (std + 1e-8) for f in fitness]


@torch.no_grad()
def apply_update(params: list[tuple[str, Tensor]], members: list[Member], coefs: list[float],
                 chunk: int = CHUNK, audit: dict[str, float] | None = None, rank: int = 0,
                 other: str = "full") -> float:
    """theta += sum_n coef_n * sign_n * eps_n, per element in float32, rounded once; returns ||delta||.
    rank > 0: low-rank eps on matrices, the other tensors full-rank or frozen (`other`; train/lowrank.py).

    audit: filled with the precision audit of this update, the intended float32 update against the one
    applied after rounding to the weights' dtype (`precision_audit`).

    The single place where weights change during ES: the trainer, the Ray workers and `replay` all call it
    with the same (members, coefs) in the same order, which is what makes replay bit-exact. It works chunk
    by chunk (no parameter-sized float32 buffer); every element sums the members in the same order, so the
    result does not depend on the chunk size. Members with a zero coefficient are skipped (adding 0 * eps
    would change nothing but cost a noise draw).
    """
    sums = AuditSums(audit=audit is not None)
    if rank:
        lowrank_update(params, members, coefs, rank, other, sums, chunk)
    else:
        active = [(m, c) for m, c in zip(members, coefs, strict=True) if c != 0.0]
        for name, p in params:
            sums.count(p.numel())
            if active:
                add_noise_sum(name, p, active, sums, chunk)
    if audit is not None:
        audit.update(sums.result())
    return sums.applied_norm


# ----------------------------------------------------------------------------------------------
# The trainer


def train_es(policy: Policy, task: Task, examples: list[Example], cfg: ESConfig, run: RunDir,
             resume: bool = False, ref_model: Policy | torch.nn.Module | None = None,
             evaluator: PopulationEvaluator | None = None) -> dict[str, Any]:
    """Train `policy` in place with ES on `examples`; returns (and writes) the run's results.

    resume: continue from the run directory's latest checkpoint (the policy passed in must be the
    base model; its weights are replaced by the checkpoint's). ref_model: the frozen base for KL
    tracking (default: a copy of `policy` taken before any resume). evaluator: a population backend
    (default: SequentialEvaluator on this process's policy).
    """
    check_inputs(cfg, examples)
    params = policy.named_parameters()
    if cfg.rank:
        check_rank(params, cfg.rank)  # before anything is written
    run.path.mkdir(parents=True, exist_ok=True)
    # w0 of the anchored decay: the weights passed in, which are the run's start (also on resume)
    anchor = Anchor(params, cfg.anchor_decay, cfg.alpha * cfg.anchor_lambda) if cfg.anchor_decay != "none" else None
    ref = _reference_model(policy, ref_model) if cfg.kl_every else None  # a measurement, not training
    budget = Budget(max_steps=cfg.iterations, max_rollouts=cfg.max_rollouts)
    start = _resume(policy, run, cfg, budget) if resume else 0
    for name in ("metrics.jsonl", "updates.jsonl"):  # rows a crash left past the checkpoint are redone
        truncate_jsonl(run.path / name, "iteration", start)
    if start == 0 and cfg.save_base:
        save_checkpoint(policy, run.path, step_name(0), _state(0, budget, cfg))

    prompt_ids = task.prompt_ids(policy, examples)
    per_iteration = cfg.members_per_iteration * (cfg.batch_size or len(examples))
    progress = Progress(f"es {task.name}", budget.planned_steps(per_iteration) - start)
    last_fitness: list[float] | None = None
    weight_norm = _norm(params)
    warm_up(params)  # compile the noise kernels before time and memory are measured

    with PeakMemory(policy.device) as mem:  # after the reference copy (measurement); the backup copy counts
        evaluator = evaluator or _default_evaluator(policy, task, cfg)
        while not budget.stop(per_iteration):
            it = budget.steps + 1
            t0 = time.perf_counter()

            # 1. Noise seeds and prompts of this iteration (deterministic in (cfg.seed, it): resumable).
            members = draw_members(cfg, it)
            batch = draw_batch(cfg, it, examples, prompt_ids)

            # 2. Perturb, score and restore each member, all on the same prompts and sampling seeds.
            pop = evaluator.evaluate(members, batch)

            # 3. Fitness shaping: z-scores over the whole population (antithetic pairs included).
            z = zscore(pop.fitness)

            # 4. Update: theta += (alpha / N) * sum_n z_n * sign_n * eps_n (low-rank eps with es.rank); stop on a
            #    ruinous one; then the anchored decay toward w0 (es.anchor_decay).
            t_update = time.perf_counter()
            coefs = [cfg.alpha / len(members) * zn for zn in z]
            audit: dict[str, float] = {}
            if cfg.numerics == "published":
                update_norm = published_update(params, members, coefs, audit=audit)
            else:
                update_norm = apply_update(params, members, coefs, audit=audit, rank=cfg.rank,
                                           other=cfg.lowrank_other)
            if anchor is not None:
                audit["anchor_pull_norm"] = anchor.apply(params)
            sync(policy.device)
            t_update = time.perf_counter() - t_update
            _check_update(update_norm, weight_norm, it, cfg, run)
            budget.spend(pop.rollouts, pop.tokens, time.perf_counter() - t0)

            # 5. Log: the update (enough to replay it exactly), then the metrics (KL: a measurement,
            #    its time is not training time).
            run.log({"iteration": it, "seeds": [s for s, _ in members], "signs": [g for _, g in members],
                     "coefs": coefs, "fitness": pop.fitness, "sigma": cfg.sigma, "alpha": cfg.alpha,
                     "indices": batch.indices, "noise": NOISE_VERSION,
                     **({"numerics": "published"} if cfg.numerics == "published" else {}),
                     **({"lowrank": {"rank": cfg.rank, "other": cfg.lowrank_other, "version": LOWRANK_VERSION}}
                        if cfg.rank else {}),
                     **({"anchor": anchor.row()} if anchor is not None else {})}, file="updates.jsonl")
            row = {"iteration": it, **_stats(pop.fitness), "rollouts": budget.rollouts, "tokens": budget.tokens,
                   "seconds": budget.seconds, "iteration_seconds": time.perf_counter() - t0,
                   **{f"t_{k}": v for k, v in pop.seconds.items()}, "t_update": t_update,
                   "reward_errors": pop.reward_errors, "update_norm": update_norm, **audit, **pop.extra}
            if cfg.kl_every and it % cfg.kl_every == 0:
                t_kl = time.perf_counter()
                row["kl"] = _measure_kl(policy, ref, cfg, it, prompt_ids)
                row["t_measure"] = time.perf_counter() - t_kl
            run.log(row)
            last_fitness = pop.fitness
            progress.update(it - start, reward=row["reward_mean"], norm=update_norm,
                            rollouts=budget.rollouts, **({"kl": row["kl"]} if "kl" in row else {}))

            # 6. Checkpoint (not at the last iteration unless pinned: final holds the same weights).
            pinned = {0, *cfg.checkpoint_pin}
            due = cfg.checkpoint_every and it % cfg.checkpoint_every == 0 and not budget.stop(per_iteration)
            if due or it in pinned:
                save_checkpoint(policy, run.path, step_name(it), _state(it, budget, cfg))
                prune_checkpoints(run.path, cfg.checkpoint_keep, pinned)

    final = save_checkpoint(policy, run.path, "final", _state(budget.steps, budget, cfg))
    if last_fitness is None:  # nothing left to do after a resume: report the last logged iteration
        rows = run.metrics("updates.jsonl")
        last_fitness = rows[-1]["fitness"] if rows else []
    results = {
        "trainer": "es",
        "iterations": budget.steps,
        "rollouts": budget.rollouts,
        "tokens": budget.tokens,
        "seconds": budget.seconds,
        "measure_seconds": sum(r.get("t_measure", 0.0) for r in run.metrics()),
        "final_fitness": _stats(last_fitness) if last_fitness else None,
        "reward_errors": sum(r.get("reward_errors", 0) for r in run.metrics()),
        **mem.report(),
        "model_bytes": tensor_bytes(params),
        "measure_memory_bytes": tensor_bytes(ref.parameters()) if ref is not None and ref_model is None else 0,
        "parameters": policy.num_parameters(),
        "final_checkpoint": str(final),
        "updates": str(run.path / "updates.jsonl"),
        "config": dataclasses.asdict(cfg),
    }
    run.write_results(results)
    return results


# ----------------------------------------------------------------------------------------------
# Helpers of the trainer


def _default_evaluator(policy: Policy, task: Task, cfg: ESConfig) -> PopulationEvaluator:
    """Member by member in this process; with es.rank and es.lowrank_batched, the whole population in one
    batched decode where the model allows it (train/batched_population.py), else member by member."""
    if cfg.rank and cfg.lowrank_batched:
        from esgrpo.train.batched_population import BatchedLowRankEvaluator, batched_supported

        why = batched_supported(policy)
        if why is None:
            return BatchedLowRankEvaluator(policy, es_scorer(task, cfg), cfg.sigma, cfg.rank, cfg.lowrank_other,
                                           rows_per_batch=cfg.lowrank_rows)
        print(f"[es] es.lowrank_batched: {why}; scoring members one at a time", file=sys.stderr, flush=True)
    return SequentialEvaluator(policy, es_scorer(task, cfg), cfg.sigma, cfg.numerics, rank=cfg.rank,
                               other=cfg.lowrank_other)


def _norm(params: list[tuple[str, Tensor]]) -> float:
    return math.sqrt(sum(float(torch.linalg.vector_norm(p.detach().float())) ** 2 for _, p in params))


def _check_update(update_norm: float, weight_norm: float, it: int, cfg: ESConfig, run: RunDir) -> None:
    """Stop before a non-finite update, or one larger than the weights themselves, is logged or saved."""
    if math.isfinite(update_norm) and update_norm <= weight_norm:
        return
    raise EsgrpoError(f"es iteration {it}: the update has norm {update_norm:.3g} against weights of norm "
                      f"{weight_norm:.3g}, which would ruin the model: es.alpha = {cfg.alpha:g} (with es.sigma = "
                      f"{cfg.sigma:g}) is far too large. {run.path} keeps the last good checkpoint")


def _state(iteration: int, budget: Budget, cfg: ESConfig) -> dict[str, Any]:
    return {"trainer": "es", "iteration": iteration, "budget": budget.to_dict(),
            "config": dataclasses.asdict(cfg)}


def _stats(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = math.fsum(values) / n
    return {"reward_mean": mean, "reward_std": math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n),
            "reward_min": min(values), "reward_max": max(values)}


def _reference_model(policy: Policy, ref_model: Policy | torch.nn.Module | None) -> torch.nn.Module:
    if ref_model is None:  # a frozen copy of the starting weights (costs one model's memory)
        ref_model = copy.deepcopy(policy.model)
    ref = ref_model.model if isinstance(ref_model, Policy) else ref_model
    ref.eval()
    ref.requires_grad_(False)
    return ref


def _measure_kl(policy: Policy, ref: torch.nn.Module | None, cfg: ESConfig, iteration: int,
                prompt_ids: list[list[int]]) -> float:
    """k3 KL(policy || base) per token on responses sampled from the policy (temperature 1, no top-p:
    the estimator is unbiased only for samples of the policy itself). Same prompts every time."""
    assert ref is not None
    prompts = prompt_ids[:cfg.kl_prompts]
    seeds = [derive_seed(cfg.seed, "kl", iteration, i) for i in range(len(prompts))]
    out = policy.generate(prompts, max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=1.0, seeds=seeds,
                          batch_size=cfg.gen_batch_size)
    return kl_to_reference(policy.model, ref, prompts, out.response_ids, policy.pad_id,
                           batch_size=cfg.gen_batch_size)


def _resume(policy: Policy, run: RunDir, cfg: ESConfig, budget: Budget) -> int:
    """Load the furthest usable checkpoint into `policy` and `budget`; returns the iterations already done.

    Only run-control fields (iterations, max_rollouts, checkpoint and KL frequencies) may differ from the
    checkpoint's config: extending a run continues the same seeded walk, so it ends with exactly the
    weights of an uninterrupted longer run."""

    def load(ckpt: Path, state: dict[str, Any]) -> None:
        changed = identity_changes(identity(from_dict(ESConfig, state["config"])), identity(cfg))
        if changed:
            raise ConfigError(f"cannot resume {run.path}: the es settings changed ({'; '.join(changed)}); only "
                              "es.iterations, es.max_rollouts, checkpoint and KL frequencies may change")
        load_weights(policy, ckpt)

    def log(msg: str) -> None:
        print(f"[es] {msg}", file=sys.stderr, flush=True)

    logged = read_jsonl(run.path / "updates.jsonl")
    if logged:
        check_noise_version(logged[0], f"cannot resume {run.path}")
    found = load_resumable(run.path, "iteration", load, log=log)
    if found is None:
        log(f"no usable checkpoint in {run.path}; starting from the beginning")
        return 0
    ckpt, state = found
    saved = Budget.from_dict(state["budget"])
    budget.steps, budget.rollouts, budget.tokens, budget.seconds = (saved.steps, saved.rollouts, saved.tokens,
                                                                    saved.seconds)
    log(f"resuming {run.path} from {ckpt.name} (iteration {state['iteration']})")
    return int(state["iteration"])


# ----------------------------------------------------------------------------------------------
# Replay: rebuild the weights from the base checkpoint and the update log


UPDATE_KEYS = ("iteration", "seeds", "signs", "coefs")


def read_updates(updates_jsonl: str | Path) -> list[dict[str, Any]]:
    """The rows of an update log, checked: iterations 1, 2, ... and the keys replay needs."""
    rows = read_jsonl(Path(updates_jsonl))
    for i, row in enumerate(rows, start=1):
        missing = [k for k in UPDATE_KEYS if k not in row]
        if missing:
            raise EsgrpoError(f"{updates_jsonl}, line {i}: missing {', '.join(missing)}; the log is damaged")
        if row["iteration"] != i:
            raise EsgrpoError(f"{updates_jsonl}, line {i}: iteration {row['iteration']}, expected {i}; the log is "
                              "damaged")
        if not len(row["seeds"]) == len(row["signs"]) == len(row["coefs"]):
            raise EsgrpoError(f"{updates_jsonl}, line {i}: seeds, signs and coefs differ in length")
        _check_row_values(row, f"{updates_jsonl}, line {i}")
        check_noise_version(row, f"{updates_jsonl}, line {i}")
    return rows


def _check_row_values(row: dict[str, Any], where: str) -> None:
    """Integer seeds, signs +-1 and finite coefficients: anything else would write ruined weights."""
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in row["seeds"]):
        raise EsgrpoError(f"{where}: a seed is not an integer; the log is damaged")
    if not all(s in (1, -1) and not isinstance(s, bool) for s in row["signs"]):
        raise EsgrpoError(f"{where}: a sign is not +1 or -1; the log is damaged")
    bad = [c for c in row["coefs"] if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c)]
    if bad:
        raise EsgrpoError(f"{where}: coefficient {bad[0]!r} is not a finite number; the log is damaged")


def check_noise_version(row: dict[str, Any], where: str) -> None:
    """A log row made with another noise generator cannot be replayed or continued: its seeds would
    mean other noise, and so other weights."""
    low = row.get("lowrank")
    if low is not None and low.get("version") != LOWRANK_VERSION:
        raise EsgrpoError(f"{where}: made with low-rank noise version {low.get('version')!r}, but this esgrpo draws "
                          f"{LOWRANK_VERSION!r}; the seeds would give other noise and other weights")
    version = row.get("noise", "v1 (per-tensor torch.Generator, esgrpo before the counter-based noise)")
    if version != NOISE_VERSION:
        raise EsgrpoError(f"{where}: made with noise version {version!r}, but this esgrpo draws {NOISE_VERSION!r}; "
                          "the seeds would give other noise and other weights. Use the esgrpo version that made "
                          "the run, or start a new run")


def replay(base_checkpoint_dir: str | Path, updates_jsonl: str | Path, out_dir: str | Path | None = None,
           upto: int | None = None, device: str = "cpu") -> Policy:
    """Base weights + updates.jsonl -> the trained weights (bit-exact on the device they were trained on).

    upto: stop after this iteration (default: all logged). out_dir: also save the result there.
    Noise is drawn on the CPU, so a run can be replayed anywhere; but float32 arithmetic on another
    device type (CUDA vs CPU) may round differently, so compare on the training device for exactness.
    """
    from esgrpo.models.hub import load_hf

    rows = read_updates(updates_jsonl)
    if upto is not None and not 0 <= upto <= len(rows):
        raise EsgrpoError(f"{updates_jsonl} holds {len(rows)} iterations; cannot replay up to {upto} "
                          f"(use 0..{len(rows)})")
    model, tokenizer = load_hf(str(base_checkpoint_dir), dtype="auto", device=device)
    policy = Policy(model, tokenizer, name="replay")
    params = policy.named_parameters()
    w0 = [p.detach().clone() for _, p in params] if any("anchor" in r for r in rows) else None
    for row in rows[:upto]:
        apply_logged(params, row, w0)
    if out_dir is not None:
        policy.save(out_dir)
    return policy


def apply_logged(params: list[tuple[str, Tensor]], row: dict[str, Any], w0: list[Tensor] | None = None) -> None:
    """Repeat one logged iteration's weight change: its update (full or low rank, or the published arithmetic
    with its perturb / restore cycles) and its anchored decay toward w0 (the run's starting weights)."""
    members = list(zip(row["seeds"], row["signs"], strict=True))
    if row.get("numerics") == "published":  # the perturb/restore cycles drift the weights: repeat them
        from esgrpo.train.published import PublishedPerturbation

        cycles = PublishedPerturbation(params)
        for seed, sign in members:
            cycles.perturb(seed, sign, row["sigma"])
            cycles.restore()
        published_update(params, members, row["coefs"])
    else:
        low = row.get("lowrank") or {}
        apply_update(params, members, row["coefs"], rank=int(low.get("rank", 0)), other=low.get("other", "full"))
    if "anchor" in row:
        if w0 is None:
            raise EsgrpoError(f"iteration {row['iteration']} has an anchored decay but no starting weights were given")
        anchor_step(params, w0, row["anchor"]["decay"], float(row["anchor"]["step"]))


REPLAY_MARKER = "replayed-from.json"  # in a directory `esgrpo replay` wrote (and may therefore write again)


def _check_replay_target(run_dir: Path, out: Path, default_out: Path) -> None:
    """Never write replayed weights into a run's checkpoints or over any checkpoint that replay did not write:
    `--out RUN/checkpoints/step-000000` would overwrite the base that replay and the weight analyses read."""
    target = out.resolve()
    if target.is_relative_to((run_dir / "checkpoints").resolve()):
        raise EsgrpoError(f"--out {out} is inside the run's checkpoints; replay writes elsewhere (default "
                          f"{default_out})")
    if target.is_file():
        raise EsgrpoError(f"--out {out} is a file; give a directory that does not exist yet")
    is_checkpoint = target.is_dir() and any((target / f).exists() for f in ("config.json", "model.safetensors",
                                                                               "trainer_state.json"))
    if is_checkpoint and not (target / REPLAY_MARKER).exists() and target != default_out.resolve():
        raise EsgrpoError(f"--out {out} already holds a checkpoint that replay did not write; give a directory "
                          "that does not exist yet")
    if target.is_dir() and not is_checkpoint and any(target.iterdir()):
        raise EsgrpoError(f"--out {out} is a directory with other files in it; give a directory that does not "
                          "exist yet")


def replay_run(run_dir: str | Path, out_dir: str | Path | None = None, upto: int | None = None,
               base: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """`esgrpo replay RUN_DIR`: rebuild a run's weights from step-000000 + updates.jsonl.

    Writes them to out_dir (default RUN_DIR/replay) and, when replaying to the end, checks them
    against checkpoints/final. Returns {"out", "iterations", "matches_final"} (None if not checked).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EsgrpoError(f"run directory {run_dir} does not exist")
    updates = run_dir / "updates.jsonl"
    if not updates.exists():
        kind = "a GRPO run" if (run_dir / "checkpoints").exists() else "not a training run"
        raise EsgrpoError(f"{run_dir} has no updates.jsonl: it is {kind}, and only ES runs can be replayed")
    if upto is not None and upto < 0:
        raise EsgrpoError(f"--upto must be >= 0, got {upto}")
    base = Path(base) if base is not None else run_dir / "checkpoints" / step_name(0)
    if not base.exists():
        raise EsgrpoError(f"base checkpoint {base} not found (the run was trained with es.save_base=false?); "
                          "pass the base model's directory with --base")
    default_out = run_dir / "replay"
    out = Path(out_dir) if out_dir is not None else default_out
    _check_replay_target(run_dir, out, default_out)
    rows = read_updates(updates)  # a damaged log fails here, before anything is written
    n_logged = len(rows)
    # Written next to `out` and renamed into place once complete: a replay that fails leaves nothing behind.
    partial = out.parent / f".{out.name}.partial"
    created = next((p for p in reversed([out.parent, *out.parent.parents]) if not p.exists()), None)
    try:
        replay(base, updates, partial, upto=upto, device=device)
        (partial / REPLAY_MARKER).write_text(json.dumps({"run": str(run_dir), "upto": upto}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        if created is not None:  # the folders made for --out go too
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    final = run_dir / "checkpoints" / "final"
    done = n_logged if upto is None else upto
    matches = same_weights(out, final) if final.exists() and done == n_logged else None
    return {"out": str(out), "iterations": done, "matches_final": matches}
