"""GRPO: group relative policy optimization (the paper's gradient-based baseline).

One step, top to bottom (see `train_grpo`):
    1. sample `prompts_per_step` prompts            (seeded from (seed, step))
    2. generate K responses per prompt             (per-response seeds from (seed, step, index))
    3. score them with the task's binary reward    (errors count as reward 0 and are logged)
    4. group-relative advantages                   A_i = (r_i - mean_g) / max(std_g, 1e-6)  (grpo)
                                                   A_i =  r_i - mean_g                       (dr_grpo)
    5. clipped surrogate loss, gradient accumulated over micro-batches of responses
    6. clip the gradient norm, AdamW step, linear LR schedule
    7. log a metrics row; checkpoint every `checkpoint_every` steps and at the end

Choices worth knowing:
- std_g is the *sample* standard deviation (Bessel-corrected, `torch.std`'s default), as in TRL and
  verl. A group whose rewards are all equal gets A = 0 exactly (not (r - mean) / 1e-6, which would
  blow float round-off up to O(1) advantages for non-binary rewards).
- mu = 1 (one optimizer step per batch), so pi_old is the policy that sampled the batch and
  logp_old = logp.detach() from the same forward pass; rho == 1 and the clip never binds (the
  clip fraction is logged anyway, it stays 0). The gradient is then exactly -A * grad log pi.
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

import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from esgrpo.config import NON_NEGATIVE, POSITIVE, PROBABILITY, F, to_dict
from esgrpo.errors import ConfigError
from esgrpo.memory import process_peak_bytes, sync
from esgrpo.models.policy import Policy
from esgrpo.progress import Progress
from esgrpo.rollout import response_logprobs
from esgrpo.runs import RunDir
from esgrpo.tasks.base import Example, Task
from esgrpo.train.budget import Budget
from esgrpo.train.checkpoint import load_weights, resume_point, save_checkpoint, step_name, truncate_jsonl
from esgrpo.train.kl import k3
from esgrpo.train.noise import derive_seed

STD_EPS = 1e-6


@dataclass
class GRPOConfig:
    """GRPO post-training (group relative policy optimization)."""

    steps: int = F(80, "Optimizer steps (0 = no step limit; then max_rollouts must be set).", NON_NEGATIVE)
    max_rollouts: int = F(0, "Stop before a step would exceed this many sampled responses (0 = no limit). "
                          "The paper: 40,000 per task.", NON_NEGATIVE)
    prompts_per_step: int = F(8, "Prompts per step (the paper: 21 x 3 ranks = 63).", POSITIVE)
    group_size: int = F(8, "K: responses sampled per prompt (a group).", (lambda v: v >= 2, ">= 2"))
    temperature: float = F(1.0, "Sampling temperature (also used for the loss's log-probs).", POSITIVE)
    top_p: float = F(0.95, "Nucleus sampling mass.", PROBABILITY)
    max_new_tokens: int = F(48, "Maximum generated tokens per response (the paper: 1024).", POSITIVE)
    gen_batch_size: int = F(64, "Responses decoded together per generation batch.", POSITIVE)
    lr: float = F(1e-5, "Peak AdamW learning rate (the paper: 1e-5; its public configs: 3e-6).", POSITIVE)
    warmup_steps: int = F(0, "Linear warmup steps (then linear decay to 0 over the planned steps).",
                          NON_NEGATIVE)
    clip_eps: float = F(0.2, "PPO clip range: rho is clipped to [1 - eps, 1 + eps].", POSITIVE)
    beta: float = F(0.0, "KL penalty coefficient (k3 to the frozen base); 0 = KL only tracked.", NON_NEGATIVE)
    loss_type: Literal["grpo", "dr_grpo"] = F(
        "grpo", "grpo: A = (r - mean) / std, loss averaged over each response's tokens then over "
        "responses; dr_grpo: A = r - mean, loss summed over tokens / (responses x max_new_tokens).")
    max_grad_norm: float = F(1.0, "Clip the gradient's global L2 norm to this (0 = no clipping).",
                             NON_NEGATIVE)
    micro_batch_size: int = F(16, "Responses per forward/backward (gradient accumulation bounds memory; "
                              "the gradient does not depend on it).", POSITIVE)
    kl_every: int = F(1, "Measure KL to the frozen base every k steps (0 = never; every step when beta > 0).",
                      NON_NEGATIVE)
    checkpoint_every: int = F(20, "Save a resumable checkpoint every k steps (0 = only the final one).",
                              NON_NEGATIVE)
    seed: int = F(0, "Seed for prompt sampling and response sampling.")

    def check(self) -> None:
        if not self.steps and not self.max_rollouts:
            raise ConfigError("grpo needs a budget: set steps or max_rollouts (both are 0)")


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


def linear_schedule(warmup_steps: int, total_steps: int):
    """LR multiplier for update s (0-based): (s + 1) / warmup during warmup, then linear decay that
    reaches 0 after `total_steps` updates (the last update still gets a non-zero rate)."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))

    return factor


# ----------------------------------------------------------------------------------------------
# Gradient accumulation


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
    # Similar lengths together: less padding per micro-batch. The order does not change the sum.
    order = sorted(range(n), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    total = {"loss": 0.0, "tokens": 0.0, "clipped": 0.0, "kl_sum": 0.0, "t_ref": 0.0}
    for s in range(0, n, cfg.micro_batch_size):
        idx = order[s:s + cfg.micro_batch_size]
        p = [prompt_ids[i] for i in idx]
        r = [response_ids[i] for i in idx]
        a = advantages[idx].to(policy.device)
        if not any(r):
            continue  # no tokens: nothing to learn or measure
        if not use_ref and not bool((a != 0).any()):
            continue  # all-zero advantages and no KL term: the gradient is exactly 0
        logp, mask = policy.logprobs(p, r, temperature=cfg.temperature)
        logp_ref = None
        if use_ref:
            t0 = time.perf_counter()
            with torch.no_grad():
                logp_ref, _ = response_logprobs(ref_model, p, r, policy.pad_id, cfg.temperature)
            total["t_ref"] += time.perf_counter() - t0
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
# Training loop


def _make_reference(policy: Policy) -> torch.nn.Module:
    ref = copy.deepcopy(policy.model)
    ref.requires_grad_(False)
    ref.eval()
    return ref


def train_grpo(policy: Policy, task: Task, examples: list[Example], cfg: GRPOConfig, run: RunDir,
               resume: bool = False, ref_model: torch.nn.Module | None = None,
               init_optimizer: Path | None = None) -> dict[str, Any]:
    """Post-train `policy` in place with GRPO on `examples`; returns budget and final numbers.

    `policy` must hold the *base* weights, also when resuming: the frozen reference for KL is copied
    from it (unless `ref_model` is given) before the latest checkpoint's weights are loaded.
    `init_optimizer`: an optimizer.pt of an earlier run (e.g. the previous stage of a sequence) whose
    AdamW moments start this run; its learning rate and schedule are this config's.
    """
    device = policy.device
    K, P = cfg.group_size, cfg.prompts_per_step
    per_step = P * K
    budget = Budget(max_steps=cfg.steps, max_rollouts=cfg.max_rollouts)
    planned = budget.planned_steps(per_step)
    if not examples:
        raise ValueError("train_grpo needs at least one training example")

    needs_ref = cfg.beta > 0 or cfg.kl_every > 0
    if needs_ref and ref_model is None:
        ref_model = _make_reference(policy)

    # Optimizer over float32 masters (the parameters themselves when they already are float32).
    params = [p for _, p in policy.named_parameters()]
    masters = [p if p.dtype == torch.float32 else p.detach().float().clone().requires_grad_(True)
               for p in params]
    opt = torch.optim.AdamW(masters, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(cfg.warmup_steps, planned))

    if init_optimizer is not None:  # the moments only: param_groups (lr, schedule) stay this run's
        saved_opt = torch.load(init_optimizer, map_location=device)
        opt.load_state_dict({"state": saved_opt["state"], "param_groups": opt.state_dict()["param_groups"]})

    if resume:
        found = resume_point(run.path, "step", require=("optimizer.pt",))
        if found is not None:
            ckpt, saved_state = found
            load_weights(policy, ckpt)
            opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device))
            sched.load_state_dict(torch.load(ckpt / "scheduler.pt"))
            if (ckpt / "master.pt").exists():
                saved = torch.load(ckpt / "master.pt", map_location=device)
                low = [m for m, p in zip(masters, params, strict=True) if m is not p]
                with torch.no_grad():
                    for m, v in zip(low, saved, strict=True):
                        m.copy_(v)
            budget = Budget.from_dict(saved_state["budget"])
            budget.max_steps, budget.max_rollouts = cfg.steps, cfg.max_rollouts
            if saved_state.get("planned_steps") != planned:
                print(f"[grpo] warning: checkpoint planned {saved_state.get('planned_steps')} steps, this "
                      f"config plans {planned}; the LR schedule follows the new plan", file=sys.stderr)
            truncate_jsonl(run.path / "metrics.jsonl", "step", budget.steps)  # lost steps are redone
            print(f"[grpo] resumed from {ckpt} at step {budget.steps}", file=sys.stderr, flush=True)

    def state() -> dict[str, Any]:
        return {"trainer": "grpo", "step": budget.steps, "budget": budget.to_dict(), "planned_steps": planned,
                "config": to_dict(cfg)}

    def checkpoint(name: str) -> None:
        extra: dict[str, Any] = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
        low = [m.detach() for m, p in zip(masters, params, strict=True) if m is not p]
        if low:
            extra["master"] = low
        save_checkpoint(policy, run.path, name, state(), extra=extra)

    progress = Progress(f"grpo {getattr(task, 'name', '')}".strip(), planned)
    progress.update(budget.steps, force=True)
    was_training = policy.model.training
    done_rows = [r for r in run.metrics() if r.get("trainer") == "grpo"]
    last_reward = done_rows[-1]["reward_mean"] if done_rows else float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # report this run's peak, not the process's

    while not budget.stop(per_step):
        step = budget.steps  # 0-based index of this update; everything random derives from (seed, step)
        t_start = time.perf_counter()

        # 1. Prompts for this step (without replacement while the pool allows it).
        rng = np.random.default_rng([cfg.seed, step, 0])
        picks = rng.choice(len(examples), size=P, replace=len(examples) < P).tolist()
        batch = [examples[i] for i in picks]
        prompt_ids = policy.encode([task.messages(ex) for ex in batch])

        # 2. K responses per prompt, laid out group-major (prompt 0's K responses, then prompt 1's ...).
        rep_prompts = [ids for ids in prompt_ids for _ in range(K)]
        rep_examples = [ex for ex in batch for _ in range(K)]
        seeds = [derive_seed(cfg.seed, step, 1, i) for i in range(per_step)]
        gen = policy.generate(rep_prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, seeds=seeds, batch_size=cfg.gen_batch_size)
        sync(device)
        t_gen = time.perf_counter()

        # 3. Rewards. A crashing reward function must not kill a long run: count it, score 0.
        rewards_list, reward_errors = [], 0
        for text, ex in zip(gen.texts, rep_examples, strict=True):
            try:
                rewards_list.append(float(task.reward(text, ex)))
            except Exception:
                reward_errors += 1
                rewards_list.append(0.0)
        rewards = torch.tensor(rewards_list, dtype=torch.float32)
        t_reward = time.perf_counter()

        # 4. Group-relative advantages.
        adv = group_advantages(rewards, K, scale=cfg.loss_type == "grpo")
        groups = rewards.view(P, K)
        frac_zero_adv = float((groups.max(dim=1).values == groups.min(dim=1).values).float().mean())

        # 5. Loss and gradient (micro-batched). KL to the base is measured on this step's samples.
        track_kl = cfg.beta > 0 or (cfg.kl_every > 0 and step % cfg.kl_every == 0)
        policy.model.train()
        for p in params:
            p.grad = None
        acc = accumulate_gradients(policy, rep_prompts, gen.response_ids, adv, cfg, ref_model, track_kl)
        sync(device)
        t_backward = time.perf_counter()

        # 6. Clip, step, schedule. Grads of skipped (all-zero) micro-batches are zeros, not missing:
        #    AdamW still advances its moments and step count, as with an explicit zero gradient.
        before = [m.detach().clone() for m in masters]
        for m, p in zip(masters, params, strict=True):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            if m is p:
                p.grad = g
            else:
                m.grad = g.float()
                p.grad = None
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(masters, max_norm))
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for m, p in zip(masters, params, strict=True):
                if m is not p:
                    p.copy_(m)
            update_norm = math.sqrt(sum(float((m - b).float().pow(2).sum()) for m, b in zip(masters, before,
                                                                                           strict=True)))
        del before
        sync(device)
        t_end = time.perf_counter()

        # 7. Accounting, logging, checkpoints.
        budget.spend(rollouts=per_step, tokens=gen.n_tokens, seconds=t_end - t_start)
        last_reward = float(rewards.mean())
        row = {
            "trainer": "grpo", "step": budget.steps,
            "reward_mean": last_reward, "reward_std": float(rewards.std(correction=0)),
            "reward_min": float(rewards.min()), "reward_max": float(rewards.max()),
            "frac_zero_adv": frac_zero_adv, "reward_errors": reward_errors,
            "loss": acc["loss"], "clip_frac": acc["clipped"] / acc["tokens"] if acc["tokens"] else 0.0,
            "grad_norm": grad_norm, "update_norm": update_norm, "lr": lr, "kl": acc["kl"],
            "response_len": gen.n_tokens / per_step,
            "finished_frac": sum(gen.finished) / per_step if gen.finished else None,
            "rollouts": budget.rollouts, "tokens": budget.tokens, "seconds": budget.seconds,
            "t_generate": t_gen - t_start, "t_reward": t_reward - t_gen, "t_backward": t_backward - t_reward,
            "t_ref": acc["t_ref"], "t_step": t_end - t_backward, "step_seconds": t_end - t_start,
        }
        run.log(row)
        progress.update(budget.steps, reward=last_reward, kl=acc["kl"] if acc["kl"] is not None else "-",
                        loss=acc["loss"], rollouts=budget.rollouts)
        if cfg.checkpoint_every and budget.steps % cfg.checkpoint_every == 0:
            checkpoint(step_name(budget.steps))

    policy.model.train(was_training)
    checkpoint("final")
    peak_bytes, peak_kind = process_peak_bytes(device)
    peak = peak_bytes / 2**20
    return {
        "trainer": "grpo", "steps": budget.steps, "planned_steps": planned, "rollouts": budget.rollouts,
        "tokens": budget.tokens, "seconds": budget.seconds, "final_reward": last_reward,
        "peak_memory_mb": peak, "peak_memory_kind": peak_kind,
        "checkpoint": str(run.path / "checkpoints" / "final"),
    }
