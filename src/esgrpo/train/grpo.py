"""GRPO: group relative policy optimization (the paper's gradient-based baseline).

One step, top to bottom (see `train_grpo`):
    1. sample `prompts_per_step` prompts            (seeded from (seed, step))
    2. generate K responses per prompt             (per-response seeds from (seed, step, index))
    3. score them with the task's binary reward    (errors count as reward 0 and are logged)
    4. group-relative advantages                   A_i = (r_i - mean_g) / max(std_g, 1e-6)  (grpo)
                                                   A_i =  r_i - mean_g                       (dr_grpo)
    5. clipped surrogate loss, gradient accumulated over micro-batches of responses
                                                   (grpo.shared_prompt: each prompt once per group)
    6. clip the gradient norm, AdamW step, linear LR schedule
    7. log a metrics row; checkpoint every `checkpoint_every` steps and at the end

Choices worth knowing:
- std_g is the *sample* standard deviation (Bessel-corrected, `torch.std`'s default), as in TRL and
  verl. A group whose rewards are all equal gets A = 0 exactly (not (r - mean) / 1e-6, which would
  blow float round-off up to O(1) advantages for non-binary rewards).
- mu = 1 (one optimizer step per batch), so pi_old is the policy that sampled the batch and
  logp_old = logp.detach() from the same forward pass; rho == 1 and the clip never binds (the
  clip fraction is logged anyway, it stays 0). The gradient is then exactly -A * grad log pi.
- KL to the frozen base (beta = 0, the paper) is a measurement: the reference copy, its forward
  passes and their time are accounted apart from training (`measure_seconds`,
  `measure_memory_bytes`); the reference's forward runs before the policy's, so its activations never
  add to the training peak. With beta > 0 the KL is part of the loss and counts as training.
- A finished run resumed with more steps equals an uninterrupted longer run only when no step's
  learning rate depends on the total: `lr_schedule: constant`, or a fixed `schedule_steps`; with a
  linear decay to the planned total, extending is refused.
- A run stops with an error the moment an update or a weight is not finite.
- Log-probs for the loss are taken at the sampling temperature (as TRL does); the nucleus cut
  (top_p) is not applied to them.
- KL to the frozen base is the k3 estimator on the step's sampled responses, measured with the
  weights that sampled them (i.e. before this step's update): it is exactly 0 at step 1.
- Weights that are not float32 (e.g. bf16) are trained through float32 master copies: an AdamW
  update of ~lr = 1e-5 is far below bf16's resolution (~4e-3 relative) and would round away.
- Determinism: every random choice derives from (seed, step), and the optimizer, scheduler and
  master weights are checkpointed, so a resumed run ends with the same weights as an
  uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from esgrpo.checkpoints import (
    load_resumable,
    load_weights,
    prune_checkpoints,
    save_checkpoint,
    step_name,
    truncate_jsonl,
)
from esgrpo.config import GRPOConfig, from_dict, identity, identity_changes, to_dict, validate
from esgrpo.errors import ConfigError, EsgrpoError
from esgrpo.memory import PeakMemory, sync, tensor_bytes
from esgrpo.models.policy import Policy
from esgrpo.progress import Progress
from esgrpo.rollout import response_logprobs, shared_prompt_logprobs
from esgrpo.runs import RunDir
from esgrpo.tasks.base import Example, Task, score_responses
from esgrpo.train.budget import Budget
from esgrpo.train.kl import k3
from esgrpo.train.noise import derive_seed
from esgrpo.train.precision import AuditSums

STD_EPS = 1e-6


__all__ = ["GRPOConfig", "accumulate_gradients", "group_advantages", "grpo_loss", "lr_factor", "train_grpo"]


def check_inputs(cfg: GRPOConfig, examples: list[Example]) -> None:
    """What a run needs of its config and data, checked before anything is written."""
    validate(cfg, "grpo.")
    if not examples:
        raise EsgrpoError("GRPO needs at least one training example")


# ----------------------------------------------------------------------------------------------
# Pure pieces (tested by hand)


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True) -> Tensor:
    """Group-relative advantages for rewards laid out group-major ((prompts * K,) -> (prompts * K,)).

    scale=True (GRPO): (r - mean) / max(sample std, 1e-6); scale=False (Dr.GRPO): r - mean.
    A group whose rewards are all equal gets exactly 0.
    """
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / r.std(dim=1, keepdim=True).clamp(min=STD_EPS)
    flat = (r.max(dim=1, keepdim=True).values == r.min(dim=1, keepdim=True).values)
    return torch.where(flat, torch.zeros_like(adv), adv).view(-1)


def grpo_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float,
              loss_type: str, max_new_tokens: int, logp_ref: Tensor | None = None, beta: float = 0.0,
              num_responses: int | None = None) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate loss over a (B, T) batch of responses.

    Per token: -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) + beta * k3(logp, logp_ref),
    rho = exp(logp - logp_old). Aggregation:
        grpo:    mean over each response's tokens, then sum over responses / num_responses
        dr_grpo: sum over all tokens / (num_responses * max_new_tokens)
    `num_responses` defaults to B; set it to the whole step's response count when this batch is one
    micro-batch of a larger step, so the micro-batch losses (and gradients) add up to the big batch's.
    A response with no tokens contributes 0 but still counts in num_responses.

    stats (plain floats, sums so callers can add them across micro-batches): tokens, clipped
    (tokens where the clipped term is the active one), kl_sum (sum of per-token k3, if logp_ref).
    """
    if beta > 0 and logp_ref is None:
        raise ValueError("beta > 0 needs logp_ref (the frozen reference's log-probs)")
    m = mask > 0
    n = num_responses if num_responses is not None else logp.shape[0]
    a = advantages.to(logp.dtype)[:, None]
    ratio = torch.exp(logp - logp_old)
    clipped_ratio = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per_token = -torch.min(ratio * a, clipped_ratio * a)
    kl_tok = k3(logp, logp_ref) if logp_ref is not None else None
    if beta > 0 and kl_tok is not None:
        per_token = per_token + beta * kl_tok
    per_token = torch.where(m, per_token, torch.zeros_like(per_token))  # padding may hold garbage
    if loss_type == "grpo":
        per_response = per_token.sum(dim=1) / m.sum(dim=1).clamp(min=1)
        loss = per_response.sum() / max(n, 1)
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (max(n, 1) * max_new_tokens)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose grpo or dr_grpo")
    with torch.no_grad():
        # The clip binds where the clipped term is the smaller (=chosen) one and differs from rho * A.
        is_clipped = ((ratio > 1 + clip_eps) & (a > 0)) | ((ratio < 1 - clip_eps) & (a < 0))
        stats = {"tokens": float(m.sum()), "clipped": float((is_clipped & m).sum())}
        if kl_tok is not None:
            stats["kl_sum"] = float(torch.where(m, kl_tok.detach(), torch.zeros_like(kl_tok)).sum())
    return loss, stats


def lr_factor(cfg: GRPOConfig, planned_steps: int):
    """LR multiplier for update s (0-based): (s + 1) / warmup during warmup; then constant, or a linear
    decay that reaches 0 after the schedule's length (schedule_steps, else the planned steps; the last
    update still gets a non-zero rate)."""
    warmup, total = cfg.warmup_steps, cfg.schedule_steps or planned_steps

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        return max(0.0, (total - s) / max(1, total - warmup))

    return factor


def schedule_horizon(cfg: GRPOConfig, planned_steps: int) -> int | None:
    """The number of steps every learning rate depends on (None: none, the schedule is constant)."""
    if cfg.lr_schedule == "constant":
        return None
    return cfg.schedule_steps or planned_steps


# ----------------------------------------------------------------------------------------------
# Gradient accumulation


def micro_batches(prompt_ids: list[list[int]], response_ids: list[list[int]], size: int,
                  group_size: int | None = None) -> list[list[int]]:
    """Response indices per micro-batch, similar lengths together (less padding; the order does not change the
    sum). With `group_size` (shared prompts; responses group-major, group_size per prompt) a micro-batch holds
    whole groups, or `size` responses of one group when a group is larger, so its prompts repeat in runs."""
    n = len(response_ids)
    if group_size is None:
        order = sorted(range(n), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
        return [order[s:s + size] for s in range(0, n, size)]
    chunk = min(group_size, size)
    chunks = [list(range(g + c, min(g + group_size, g + c + chunk)))
              for g in range(0, n, group_size) for c in range(0, group_size, chunk)]
    chunks.sort(key=lambda c: len(prompt_ids[c[0]]) + max(len(response_ids[i]) for i in c))
    per = max(1, size // chunk)
    return [[i for c in chunks[s:s + per] for i in c] for s in range(0, len(chunks), per)]


def _shared_prompts(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Runs of equal prompts: (the distinct prompt of each run, the run's length)."""
    distinct: list[list[int]] = []
    counts: list[int] = []
    for p in prompts:
        if distinct and p == distinct[-1]:
            counts[-1] += 1
        else:
            distinct.append(p)
            counts.append(1)
    return distinct, counts


@contextlib.contextmanager
def recomputed_layers(model: torch.nn.Module, on: bool) -> Iterator[None]:
    """grpo.gradient_checkpointing: inside, a Hugging Face model in training mode keeps only each decoder layer's
    input for the backward pass and recomputes the layer there (non-reentrant torch checkpointing: the
    recomputation repeats the forward's ops, so the gradient is the one without it up to float rounding)."""
    if not on:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"grpo.gradient_checkpointing: {type(model).__name__} does not support Hugging Face's "
                          "activation checkpointing; set grpo.gradient_checkpointing false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        if hasattr(model, "activation_checkpointing_disable"):
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()
        # enabling also hooked the embeddings to make their output require a gradient (for frozen embeddings);
        # full-parameter training does not need it, so it goes with the checkpointing
        if hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()


def accumulate_gradients(policy: Policy, prompt_ids: list[list[int]], response_ids: list[list[int]],
                         advantages: Tensor, cfg: GRPOConfig, ref_model: torch.nn.Module | None = None,
                         track_kl: bool = False) -> dict[str, float]:
    """Forward/backward the step's loss in micro-batches of `cfg.micro_batch_size` responses.

    Adds to the parameters' .grad (callers zero them first). Each micro-batch loss is normalised
    by the whole step's response count, so the accumulated gradient equals one big batch's.
    Returns loss (the step's total), tokens, clipped, and kl (mean per-token k3, or None).
    """
    n = len(response_ids)
    use_ref = ref_model is not None and (cfg.beta > 0 or track_kl)
    if (cfg.beta > 0 or track_kl) and ref_model is None:
        raise ValueError("KL (beta > 0 or tracking) needs ref_model")
    total = {"loss": 0.0, "tokens": 0.0, "clipped": 0.0, "kl_sum": 0.0, "t_ref": 0.0}
    for idx in micro_batches(prompt_ids, response_ids, cfg.micro_batch_size,
                             cfg.group_size if cfg.shared_prompt else None):
        p = [prompt_ids[i] for i in idx]
        r = [response_ids[i] for i in idx]
        a = advantages[idx].to(policy.device)
        if not any(r):
            continue  # no tokens: nothing to learn or measure
        if not use_ref and not bool((a != 0).any()):
            continue  # all-zero advantages and no KL term: the gradient is exactly 0
        shared = _shared_prompts(p) if cfg.shared_prompt else None
        logp_ref = None
        if use_ref:  # first, so the reference's activations are gone before the policy's graph is built
            t0 = time.perf_counter()
            with torch.no_grad():
                logp_ref, _ = (shared_prompt_logprobs(ref_model, *shared, r, policy.pad_id, cfg.temperature)
                               if shared else response_logprobs(ref_model, p, r, policy.pad_id, cfg.temperature))
            total["t_ref"] += time.perf_counter() - t0
        logp, mask = (policy.shared_prompt_logprobs(*shared, r, temperature=cfg.temperature) if shared
                      else policy.logprobs(p, r, temperature=cfg.temperature))
        loss, stats = grpo_loss(logp, logp.detach(), a, mask, cfg.clip_eps, cfg.loss_type, cfg.max_new_tokens,
                                logp_ref=logp_ref, beta=cfg.beta, num_responses=n)
        loss.backward()
        total["loss"] += float(loss.detach())
        for k, v in stats.items():
            total[k] += v
    kl = total.pop("kl_sum")
    total["kl"] = (kl / total["tokens"] if total["tokens"] else 0.0) if use_ref else None
    return total


# ----------------------------------------------------------------------------------------------
# Optimizer state


class _Optimizer:
    """AdamW over float32 masters (the parameters themselves when they already are float32), its LR
    schedule, and their checkpointed state."""

    def __init__(self, policy: Policy, cfg: GRPOConfig, planned: int) -> None:
        self.params = [p for _, p in policy.named_parameters()]
        self.published = cfg.numerics == "published"
        # published: AdamW on the weights themselves, whatever their dtype (the public code's pure bf16)
        self.masters = [p if p.dtype == torch.float32 or self.published
                        else p.detach().float().clone().requires_grad_(True) for p in self.params]
        self.opt = torch.optim.AdamW(self.masters, lr=cfg.lr, weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(cfg, planned))
        self.max_grad_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        # published with low-precision weights: the audit's intended update comes from a float32 AdamW fed the
        # same gradients (its own copy of the weights and moments; it never touches the model)
        self.shadow: list[Tensor] = []
        if self.published and any(p.dtype != torch.float32 for p in self.params):
            self.shadow = [p.detach().float().clone().requires_grad_(True) for p in self.params]
            self.shadow_opt = torch.optim.AdamW(self.shadow, lr=cfg.lr, weight_decay=0.0)
            self.shadow_sched = torch.optim.lr_scheduler.LambdaLR(self.shadow_opt, lr_factor(cfg, planned))

    def _low(self) -> list[tuple[Tensor, Tensor]]:
        return [(m, p) for m, p in zip(self.masters, self.params, strict=True) if m is not p]

    def load_moments(self, path: Path, device: torch.device) -> None:
        """AdamW moments of an earlier run (param_groups, i.e. lr and schedule, stay this run's)."""
        saved = torch.load(path, map_location=device)
        self.opt.load_state_dict({"state": saved["state"], "param_groups": self.opt.state_dict()["param_groups"]})

    def state(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}
        if self._low():
            extra["master"] = [m.detach() for m, _ in self._low()]
        return extra

    def load(self, ckpt: Path, device: torch.device) -> None:
        self.opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device))
        self.sched.load_state_dict(torch.load(ckpt / "scheduler.pt"))
        if (ckpt / "master.pt").exists():
            saved = torch.load(ckpt / "master.pt", map_location=device)
            with torch.no_grad():
                for (m, _), v in zip(self._low(), saved, strict=True):
                    m.copy_(v)

    def step(self, audit: dict[str, float] | None = None) -> tuple[float, float, float]:
        """Clip the gradient, take one AdamW step, advance the schedule; (grad_norm, lr, update_norm).

        update_norm is the change of the weights themselves; `audit` is filled with the precision audit
        (the float32 master update against the change after rounding to the weights' dtype; the same
        for float32 weights). Grads of skipped (all-zero) micro-batches are zeros, not missing: AdamW
        still advances its moments and step count, as with an explicit zero gradient."""
        if self.shadow:
            return self._published_step(audit)
        for m, p in zip(self.masters, self.params, strict=True):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            if m is p:
                p.grad = g
            else:
                m.grad = g.float()
                p.grad = None
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.masters, self.max_grad_norm))
        lr = self.sched.get_last_lr()[0]
        # One tensor at a time: AdamW updates each tensor on its own and skips a tensor without a gradient,
        # so stepping them one by one is the same step, and the copy that measures the change is one tensor's
        # (not a second copy of the model at the step's peak).
        held = [m.grad for m in self.masters]
        self.opt.zero_grad(set_to_none=True)
        sums = AuditSums(audit=audit is not None)
        with torch.no_grad():
            for i, (m, p) in enumerate(zip(self.masters, self.params, strict=True)):
                before = m.detach().clone()
                m.grad, held[i] = held[i], None
                self.opt.step()
                m.grad = None
                if m is p:  # float32 weights: the applied update is the intended one
                    sums.add(m - before, None)
                else:  # the weights held round(master) before the step too, so their change is exact from before
                    p.copy_(m)
                    sums.add(p.float() - before.to(p.dtype).float(), m - before)
                sums.count(p.numel())
        self.sched.step()
        if audit is not None:
            audit.update(sums.result())
        return grad_norm, lr, sums.applied_norm

    def _published_step(self, audit: dict[str, float] | None) -> tuple[float, float, float]:
        """numerics published, low-precision weights: AdamW steps the weights in their own dtype; the float32
        shadow takes the same gradient (clipped by its own float32 norm) and gives the intended update."""
        before = [p.detach().float() for p in self.params]
        shadow_before = [s.detach().clone() for s in self.shadow]
        for p, s in zip(self.params, self.shadow, strict=True):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            s.grad = p.grad.float()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        torch.nn.utils.clip_grad_norm_(self.shadow, self.max_grad_norm)
        lr = self.sched.get_last_lr()[0]
        for opt, sched in ((self.opt, self.sched), (self.shadow_opt, self.shadow_sched)):
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        sums = AuditSums(audit=audit is not None)
        with torch.no_grad():
            for p, b, s, sb in zip(self.params, before, self.shadow, shadow_before, strict=True):
                sums.add(p.float() - b, s - sb)
                sums.count(p.numel())
        if audit is not None:
            audit.update(sums.result())
        return grad_norm, lr, sums.applied_norm


# ----------------------------------------------------------------------------------------------
# Training loop


def train_grpo(policy: Policy, task: Task, examples: list[Example], cfg: GRPOConfig, run: RunDir,
               resume: bool = False, ref_model: torch.nn.Module | None = None,
               init_optimizer: Path | None = None) -> dict[str, Any]:
    """Post-train `policy` in place with GRPO on `examples`; returns budget and final numbers.

    `policy` must hold the *base* weights, also when resuming: the frozen reference for KL is copied
    from it (unless `ref_model` is given) before the latest checkpoint's weights are loaded.
    `init_optimizer`: an optimizer.pt of an earlier run (e.g. the previous stage of a sequence) whose
    AdamW moments start this run; its learning rate and schedule are this config's.
    """
    check_inputs(cfg, examples)
    run.path.mkdir(parents=True, exist_ok=True)
    device = policy.device
    per_step = cfg.prompts_per_step * cfg.group_size
    budget = Budget(max_steps=cfg.steps, max_rollouts=cfg.max_rollouts)
    planned = budget.planned_steps(per_step)
    made_ref = ref_model is None and (cfg.beta > 0 or cfg.kl_every > 0)
    if made_ref:  # a frozen copy of the base; made before memory is measured (with beta = 0: measurement)
        ref_model = copy.deepcopy(policy.model).requires_grad_(False).eval()

    # Everything from here on is training memory: the optimizer (masters, moments) and the steps.
    with PeakMemory(device) as mem:
        optim = _Optimizer(policy, cfg, planned)
        if init_optimizer is not None:
            optim.load_moments(init_optimizer, device)
        if resume:
            _resume(policy, optim, run, cfg, budget, planned)
        truncate_jsonl(run.path / "metrics.jsonl", "step", budget.steps)  # rows past the resume point are redone

        def checkpoint(name: str) -> None:
            state = {"trainer": "grpo", "step": budget.steps, "budget": budget.to_dict(), "planned_steps": planned,
                     "schedule_horizon": schedule_horizon(cfg, planned), "config": to_dict(cfg)}
            save_checkpoint(policy, run.path, name, state, extra=optim.state())

        progress = Progress(f"grpo {getattr(task, 'name', '')}".strip(), planned)
        progress.update(budget.steps, force=True)
        was_training = policy.model.training
        with recomputed_layers(policy.model, cfg.gradient_checkpointing):
            while not budget.stop(per_step):
                row = _train_step(policy, task, examples, cfg, optim, ref_model, budget, run, mem)
                run.log(row)
                progress.update(budget.steps, reward=row["reward_mean"],
                                kl=row["kl"] if row["kl"] is not None else "-", loss=row["loss"],
                                rollouts=budget.rollouts)
                if cfg.checkpoint_every and budget.steps % cfg.checkpoint_every == 0 and not budget.stop(per_step):
                    checkpoint(step_name(budget.steps))  # not at the last step: final holds the same state
                    prune_checkpoints(run.path, cfg.checkpoint_keep)
    policy.model.train(was_training)
    checkpoint("final")
    rows = [r for r in run.metrics() if r.get("trainer") == "grpo"]
    results = {
        "trainer": "grpo", "steps": budget.steps, "planned_steps": planned, "rollouts": budget.rollouts,
        "tokens": budget.tokens, "seconds": budget.seconds,
        "measure_seconds": sum(r.get("t_measure", 0.0) for r in rows),
        "final_reward": rows[-1]["reward_mean"] if rows else None,
        "reward_errors": sum(r.get("reward_errors", 0) for r in rows),
        **mem.report(), "model_bytes": tensor_bytes(optim.params),
        "measure_memory_bytes": tensor_bytes(ref_model.parameters()) if made_ref and cfg.beta == 0 else 0,
        "parameters": policy.num_parameters(),
        "checkpoint": str(run.path / "checkpoints" / "final"),
    }
    run.write_results(results)
    return results


def _train_step(policy: Policy, task: Task, examples: list[Example], cfg: GRPOConfig, optim: _Optimizer,
                ref_model: torch.nn.Module | None, budget: Budget, run: RunDir,
                mem: PeakMemory | None = None) -> dict[str, Any]:
    """One GRPO step (the numbered steps of the module docstring); returns its metrics row. `mem`: the run's
    memory measure, lapped per phase (the peak each phase adds over the run's start)."""
    device = policy.device
    K, P = cfg.group_size, cfg.prompts_per_step
    step = budget.steps  # 0-based index of this update; everything random derives from (seed, step)
    lap = mem.lap if mem is not None else lambda: None
    lap()  # what ran between steps (logging, a checkpoint) is no phase's
    t_start = time.perf_counter()

    # 1. Prompts for this step (without replacement while the pool allows it).
    rng = np.random.default_rng([cfg.seed, step, 0])
    picks = rng.choice(len(examples), size=P, replace=len(examples) < P).tolist()
    batch = [examples[i] for i in picks]
    prompt_ids = task.prompt_ids(policy, batch)

    # 2. K responses per prompt, laid out group-major (prompt 0's K responses, then prompt 1's ...).
    rep_prompts = [ids for ids in prompt_ids for _ in range(K)]
    seeds = [derive_seed(cfg.seed, step, 1, i) for i in range(P * K)]
    pushed = policy.engine.stats.push_seconds if policy.engine is not None else 0.0  # weights sent to an engine
    gen = policy.generate(rep_prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_p=cfg.top_p, seeds=seeds, batch_size=cfg.gen_batch_size, stop=task.stop,
                          shared_prefix=cfg.shared_prompt)
    sync(device)
    t_gen = time.perf_counter()
    mem_generate = lap()
    t_sync = policy.engine.stats.push_seconds - pushed if policy.engine is not None else 0.0

    # 3. Rewards (a failing reward scores 0 and is counted, never fatal).
    scores = score_responses(task, gen.texts, [ex for ex in batch for _ in range(K)])
    rewards = torch.tensor(scores.rewards, dtype=torch.float32)
    t_reward = time.perf_counter()

    # 4. Group-relative advantages.
    adv = group_advantages(rewards, K, scale=cfg.loss_type == "grpo")
    groups = rewards.view(P, K)
    frac_zero_adv = float((groups.max(dim=1).values == groups.min(dim=1).values).float().mean())

    # 5. Loss and gradient (micro-batched). KL to the base is measured on this step's samples.
    track_kl = cfg.beta > 0 or (cfg.kl_every > 0 and step % cfg.kl_every == 0)
    policy.model.train()
    for p in optim.params:
        p.grad = None
    acc = accumulate_gradients(policy, rep_prompts, gen.response_ids, adv, cfg, ref_model, track_kl)
    sync(device)
    t_backward = time.perf_counter()
    mem_backward = lap()  # with scoring and the reference's forward

    # 6. Clip, step, schedule; stop before a non-finite update reaches the log or a checkpoint.
    audit: dict[str, float] = {}
    grad_norm, lr, update_norm = optim.step(audit)
    sync(device)
    t_end = time.perf_counter()
    mem_step = lap()
    if not (math.isfinite(update_norm) and math.isfinite(acc["loss"])):
        raise EsgrpoError(f"grpo step {step + 1}: the update is not finite (loss {acc['loss']:.3g}, gradient norm "
                          f"{grad_norm:.3g}, update norm {update_norm:.3g}); grpo.lr = {cfg.lr:g} is too large or "
                          f"the model diverged. {run.path} keeps the last good checkpoint")

    # 7. Accounting: the reference's forward passes are measurement unless the KL is in the loss.
    t_measure = acc["t_ref"] if cfg.beta == 0 else 0.0
    budget.spend(rollouts=P * K, tokens=gen.n_tokens, seconds=t_end - t_start - t_measure)
    return {
        "trainer": "grpo", "step": budget.steps,
        "reward_mean": scores.mean, "reward_std": float(rewards.std(correction=0)),
        "reward_min": float(rewards.min()), "reward_max": float(rewards.max()),
        "frac_zero_adv": frac_zero_adv, "reward_errors": scores.errors,
        "loss": acc["loss"], "clip_frac": acc["clipped"] / acc["tokens"] if acc["tokens"] else 0.0,
        "grad_norm": grad_norm, "update_norm": update_norm, **audit, "lr": lr, "kl": acc["kl"],
        "response_len": gen.n_tokens / (P * K),
        "finished_frac": sum(gen.finished) / (P * K) if gen.finished else None,
        "rollouts": budget.rollouts, "tokens": budget.tokens, "seconds": budget.seconds,
        "t_generate": t_gen - t_start, "t_reward": t_reward - t_gen, "t_backward": t_backward - t_reward - acc["t_ref"],
        "t_ref": acc["t_ref"], "t_sync": t_sync, "t_measure": t_measure, "t_step": t_end - t_backward,
        "step_seconds": t_end - t_start,
        "mem_generate": mem_generate, "mem_backward": mem_backward, "mem_step": mem_step,
    }


def _resume(policy: Policy, optim: _Optimizer, run: RunDir, cfg: GRPOConfig, budget: Budget, planned: int) -> None:
    """Load the furthest usable checkpoint (weights, optimizer, schedule, masters, budget).

    Only run-control fields may differ from the checkpoint's config; more steps are allowed only when
    no learning rate depends on the planned total (see the module docstring)."""

    def log(msg: str) -> None:
        print(f"[grpo] {msg}", file=sys.stderr, flush=True)

    def load(ckpt: Path, state: dict[str, Any]) -> None:
        changed = identity_changes(identity(from_dict(GRPOConfig, state["config"])), identity(cfg))
        if changed:
            raise ConfigError(f"cannot resume {run.path}: the grpo settings changed ({'; '.join(changed)}); only "
                              "grpo.steps, grpo.max_rollouts, checkpoint and KL frequencies may change")
        old_horizon = state.get("schedule_horizon", state.get("planned_steps"))
        if old_horizon != schedule_horizon(cfg, planned):
            raise ConfigError(
                f"cannot continue {run.path} to {planned} steps: it planned {state.get('planned_steps')} steps and "
                f"its learning rate decays linearly to 0 at step {old_horizon}, so no continuation equals an "
                f"uninterrupted {planned}-step run. Train a new run, or start runs you may extend with "
                "grpo.lr_schedule=constant or a fixed grpo.schedule_steps")
        load_weights(policy, ckpt)
        optim.load(ckpt, policy.device)

    found = load_resumable(run.path, "step", load, require=("optimizer.pt",), log=log)
    if found is None:
        log(f"no usable checkpoint in {run.path}; starting from the beginning")
        return
    ckpt, state = found
    saved = Budget.from_dict(state["budget"])
    budget.steps, budget.rollouts, budget.tokens, budget.seconds = (saved.steps, saved.rollouts, saved.tokens,
                                                                    saved.seconds)
    log(f"resumed {run.path} from {ckpt.name} at step {budget.steps}")
