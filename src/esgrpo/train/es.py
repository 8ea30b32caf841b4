"""Evolution Strategies for LLM post-training (Qiu et al. 2025, as run by the paper), done right.

One iteration t (read `train_es` top to bottom):
    1. draw N noise seeds and a batch of prompts, both derived from (cfg.seed, t);
    2. for each member n: perturb theta + sigma * eps_n in place, score F_n = mean reward, restore;
    3. z_n = (F_n - mean F) / (std F + 1e-8);
    4. theta <- theta + (alpha / N) * sum_n z_n * eps_n     (1/sigma folded into alpha);
    5. log fitness, cost and the update (seeds + coefficients) to the run directory.

Unlike the public implementations, noise is independent per tensor and restoring is bit-exact
(noise.py). The update is accumulated in float32 per tensor and rounded once, by `apply_update`,
which `replay` also uses: the final weights can be rebuilt bit-exactly from the base checkpoint
and updates.jsonl (a few KB per iteration instead of a checkpoint). Everything random derives
from (cfg.seed, iteration), so a resumed run ends with exactly the weights of an uninterrupted one.

Files written into the run directory:
    metrics.jsonl    one row per iteration (fitness stats, cost, phase times, update norm, KL)
    updates.jsonl    one row per iteration: seeds, signs, coefficients, fitness, sigma, alpha
    checkpoints/     step-000000 (the base, for replay and weight analyses), every
                     checkpoint_every iterations, and final; each with trainer_state.json
    results.json     totals, final fitness, peak memory
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from torch import Tensor

from esgrpo.config import NON_NEGATIVE, POSITIVE, PROBABILITY, F, validate
from esgrpo.errors import ConfigError, EsgrpoError
from esgrpo.memory import process_peak_bytes, sync
from esgrpo.models.policy import Policy
from esgrpo.progress import Progress
from esgrpo.runs import RunDir, read_jsonl
from esgrpo.tasks.base import Example, Task
from esgrpo.train.budget import Budget
from esgrpo.train.checkpoint import load_weights, resume_point, save_checkpoint, step_name, truncate_jsonl
from esgrpo.train.kl import kl_to_reference
from esgrpo.train.noise import derive_seed, tensor_noise
from esgrpo.train.population import Batch, Member, PopulationEvaluator, SequentialEvaluator, TaskScorer


@dataclass
class ESConfig:
    """Evolution Strategies (the paper's ES; per-tensor noise, exact restore)."""

    population: int = F(30, "Population size N: noise seeds per iteration (the paper: 30).", POSITIVE)
    sigma: float = F(0.0015, "Noise scale sigma of the weight perturbations (the paper: 0.0015).",
                     NON_NEGATIVE)
    alpha: float = F(7.5e-4, "Step size alpha: theta += alpha/N * sum_n z_n eps_n, 1/sigma folded in "
                     "(the paper: 7.5e-4 = sigma/2).", NON_NEGATIVE)
    iterations: int = F(100, "Iterations to run (the paper: 100 or 300; 0 = no limit, then max_rollouts "
                        "must be set).", NON_NEGATIVE)
    max_rollouts: int = F(0, "Stop before an iteration would exceed this many rollouts (0 = no limit).",
                          NON_NEGATIVE)
    batch_size: int = F(0, "Prompts per iteration, drawn anew each iteration from a seeded generator "
                        "(0 = all training examples, as the paper).", NON_NEGATIVE)
    decoding: Literal["greedy", "sample"] = F("greedy", "Decoding while scoring members: greedy (Qiu et al.) "
                                              "or sample (the paper's public code; temperature, top_p).")
    temperature: float = F(1.0, "Sampling temperature (decoding=sample).", POSITIVE)
    top_p: float = F(0.95, "Nucleus mass (decoding=sample).", PROBABILITY)
    max_new_tokens: int = F(48, "Maximum generated tokens per response (the paper: 1024).", POSITIVE)
    gen_batch_size: int = F(64, "Prompts per generation micro-batch (memory only; responses do not depend "
                            "on it).", POSITIVE)
    antithetic: bool = F(False, "Mirrored sampling: score every seed at +eps and -eps (2N members, z-scored "
                         "together). Not in the paper.")
    kl_every: int = F(0, "Measure KL(policy || base) on sampled responses every k iterations (0 = off).",
                      NON_NEGATIVE)
    kl_prompts: int = F(32, "Training prompts used for the KL measurement.", POSITIVE)
    checkpoint_every: int = F(25, "Save a checkpoint every k iterations (0 = only the final one).",
                              NON_NEGATIVE)
    save_base: bool = F(True, "Save the starting weights as checkpoints/step-000000 (replay and weight "
                        "analyses need them).")
    seed: int = F(0, "Seed of the noise seeds, prompt batches and sampling seeds (derived per iteration); "
                  "give each stage of a task sequence its own seed, or stages reuse the same noise.")

    def check(self) -> None:
        if not self.iterations and not self.max_rollouts:
            raise ConfigError("es: set iterations or max_rollouts (both are 0, the run would never stop)")
        if self.members_per_iteration < 2:
            raise ConfigError("es.population must be >= 2 (or use es.antithetic=true): z-scores of one "
                              "member are all 0")

    @property
    def members_per_iteration(self) -> int:
        return self.population * (2 if self.antithetic else 1)


# Fields that may change when resuming without changing the weights the run produces.
RESUMABLE_CHANGES = {"iterations", "max_rollouts", "checkpoint_every", "kl_every", "kl_prompts", "save_base"}


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
def apply_update(params: list[tuple[str, Tensor]], members: list[Member], coefs: list[float]) -> float:
    """theta += sum_n coef_n * sign_n * eps_n, per tensor in float32, rounded once; returns ||delta||.

    The single place where weights change during ES: the trainer and `replay` both call it with the
    same (members, coefs) in the same order, which is what makes replay bit-exact. Members with a
    zero coefficient are skipped (adding 0 * eps would change nothing but cost a noise draw).
    """
    active = [(m, c) for m, c in zip(members, coefs, strict=True) if c != 0.0]
    if not active:
        return 0.0
    sq = 0.0
    for name, p in params:
        acc = p.detach().to(torch.float32, copy=True)
        for (seed, sign), coef in active:
            acc.add_(tensor_noise(seed, name, p.shape, p.device), alpha=coef * sign)
        new = acc.to(p.dtype)
        sq += float(torch.linalg.vector_norm(new.float() - p.float())) ** 2
        p.copy_(new)
    return math.sqrt(sq)


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
    validate(cfg, "es.")
    if not examples:
        raise EsgrpoError("ES needs at least one training example")
    if cfg.batch_size > len(examples):
        raise ConfigError(f"es.batch_size = {cfg.batch_size} exceeds the {len(examples)} training examples")
    params = policy.named_parameters()
    ref = _reference_model(policy, ref_model) if cfg.kl_every else None
    budget = Budget(max_steps=cfg.iterations, max_rollouts=cfg.max_rollouts)
    start = _resume(policy, run, cfg, budget) if resume else 0
    for name in ("metrics.jsonl", "updates.jsonl"):  # rows a crash left past the checkpoint are redone
        truncate_jsonl(run.path / name, "iteration", start)
    if start == 0 and cfg.save_base:
        save_checkpoint(policy, run.path, step_name(0), _state(0, budget, cfg))

    prompt_ids = policy.encode([task.messages(ex) for ex in examples])
    sample = cfg.decoding == "sample"
    scorer = TaskScorer(task, cfg.max_new_tokens, temperature=cfg.temperature if sample else 0.0,
                        top_p=cfg.top_p if sample else 1.0, gen_batch_size=cfg.gen_batch_size)
    evaluator = evaluator or SequentialEvaluator(policy, scorer, cfg.sigma)
    per_iteration = cfg.members_per_iteration * (cfg.batch_size or len(examples))
    progress = Progress(f"es {task.name}", budget.planned_steps(per_iteration) - start)
    last_fitness: list[float] | None = None

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

        # 4. Update: theta += (alpha / N) * sum_n z_n * sign_n * eps_n.
        t_update = time.perf_counter()
        coefs = [cfg.alpha / len(members) * zn for zn in z]
        update_norm = apply_update(params, members, coefs)
        sync(policy.device)
        t_update = time.perf_counter() - t_update
        budget.spend(pop.rollouts, pop.tokens, time.perf_counter() - t0)

        # 5. Log: the update (enough to replay it exactly), then the metrics.
        run.log({"iteration": it, "seeds": [s for s, _ in members], "signs": [g for _, g in members],
                 "coefs": coefs, "fitness": pop.fitness, "sigma": cfg.sigma, "alpha": cfg.alpha,
                 "indices": batch.indices}, file="updates.jsonl")
        row = {"iteration": it, **_stats(pop.fitness), "rollouts": budget.rollouts, "tokens": budget.tokens,
               "seconds": budget.seconds, "iteration_seconds": time.perf_counter() - t0,
               **{f"t_{k}": v for k, v in pop.seconds.items()}, "t_update": t_update,
               "reward_errors": pop.reward_errors, "update_norm": update_norm}
        if cfg.kl_every and it % cfg.kl_every == 0:
            row["kl"] = _measure_kl(policy, ref, cfg, it, prompt_ids)
        run.log(row)
        last_fitness = pop.fitness
        progress.update(it - start, reward=row["reward_mean"], norm=update_norm,
                        rollouts=budget.rollouts, **({"kl": row["kl"]} if "kl" in row else {}))

        if cfg.checkpoint_every and it % cfg.checkpoint_every == 0:
            save_checkpoint(policy, run.path, step_name(it), _state(it, budget, cfg))

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
        "final_fitness": _stats(last_fitness) if last_fitness else None,
        "reward_errors": sum(r.get("reward_errors", 0) for r in run.metrics()),
        "peak_memory_bytes": process_peak_bytes(policy.device)[0],
        "parameters": policy.num_parameters(),
        "final_checkpoint": str(final),
        "updates": str(run.path / "updates.jsonl"),
        "config": dataclasses.asdict(cfg),
    }
    run.write_results(results)
    return results


# ----------------------------------------------------------------------------------------------
# Helpers of the trainer


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
    """Load the latest checkpoint into `policy` and `budget`; returns the iterations already done."""
    point = resume_point(run.path, "iteration")
    if point is None:
        print(f"[es] no checkpoint in {run.path}; starting from the beginning", file=sys.stderr, flush=True)
        return 0
    ckpt, state = point
    old = state.get("config", {})
    changed = sorted(k for k, v in dataclasses.asdict(cfg).items()
                     if k not in RESUMABLE_CHANGES and k in old and old[k] != v)
    if changed:
        raise ConfigError(f"cannot resume {run.path}: es config changed in {', '.join(changed)} "
                          f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change)")
    load_weights(policy, ckpt)
    saved = Budget.from_dict(state["budget"])
    budget.steps, budget.rollouts, budget.tokens, budget.seconds = (saved.steps, saved.rollouts, saved.tokens,
                                                                    saved.seconds)
    print(f"[es] resuming {run.path} from {ckpt.name} (iteration {state['iteration']})", file=sys.stderr,
          flush=True)
    return int(state["iteration"])


# ----------------------------------------------------------------------------------------------
# Replay: rebuild the weights from the base checkpoint and the update log


def replay(base_checkpoint_dir: str | Path, updates_jsonl: str | Path, out_dir: str | Path | None = None,
           upto: int | None = None, device: str = "cpu") -> Policy:
    """Base weights + updates.jsonl -> the trained weights (bit-exact on the device they were trained on).

    upto: stop after this iteration (default: all logged). out_dir: also save the result there.
    Noise is drawn on the CPU, so a run can be replayed anywhere; but float32 arithmetic on another
    device type (CUDA vs CPU) may round differently, so compare on the training device for exactness.
    """
    from esgrpo.models.hub import load_hf

    rows = read_jsonl(Path(updates_jsonl))
    if [r["iteration"] for r in rows] != list(range(1, len(rows) + 1)):
        raise EsgrpoError(f"{updates_jsonl}: iterations are not 1, 2, ... in order; the log is damaged")
    if upto is not None and upto > len(rows):
        raise EsgrpoError(f"{updates_jsonl} holds {len(rows)} iterations; cannot replay up to {upto}")
    model, tokenizer = load_hf(str(base_checkpoint_dir), dtype="auto", device=device)
    policy = Policy(model, tokenizer, name="replay")
    params = policy.named_parameters()
    for row in rows[:upto]:
        apply_update(params, list(zip(row["seeds"], row["signs"], strict=True)), row["coefs"])
    if out_dir is not None:
        policy.save(out_dir)
    return policy


def same_weights(a: str | Path, b: str | Path) -> bool:
    """True if two checkpoint directories hold bit-identical tensors under the same names."""
    sa: dict[str, Tensor] = {}
    sb: dict[str, Tensor] = {}
    for d, s in ((a, sa), (b, sb)):
        for f in sorted(Path(d).glob("*.safetensors")):
            s.update(load_file(str(f)))
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k])
                                          for k in sa)


def replay_run(run_dir: str | Path, out_dir: str | Path | None = None, upto: int | None = None,
               base: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """`esgrpo replay RUN_DIR`: rebuild a run's weights from step-000000 + updates.jsonl.

    Writes them to out_dir (default RUN_DIR/replay) and, when replaying to the end, checks them
    against checkpoints/final. Returns {"out", "iterations", "matches_final"} (None if not checked).
    """
    run_dir = Path(run_dir)
    base = Path(base) if base is not None else run_dir / "checkpoints" / step_name(0)
    updates = run_dir / "updates.jsonl"
    if not base.exists():
        raise EsgrpoError(f"base checkpoint {base} not found (trained with es.save_base=false?); "
                          "pass the base checkpoint")
    if not updates.exists():
        raise EsgrpoError(f"{updates} not found: {run_dir} is not an ES run directory")
    out = Path(out_dir) if out_dir is not None else run_dir / "replay"
    n_logged = len(read_jsonl(updates))
    replay(base, updates, out, upto=upto, device=device)
    final = run_dir / "checkpoints" / "final"
    done = n_logged if upto is None else upto
    matches = same_weights(out, final) if final.exists() and done == n_logged else None
    return {"out": str(out), "iterations": done, "matches_final": matches}
