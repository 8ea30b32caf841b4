"""One training run from a config: load the base model and the task data, train, evaluate.

Backs `esgrpo train es|grpo` and the study's per-task runs. The run directory holds the
trainer's files (metrics.jsonl, checkpoints/, updates.jsonl for ES) plus `eval.json`: greedy
test accuracy of the final weights (and of any extra checkpoints asked for).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from esgrpo.config import (
    DataConfig,
    F,
    GenerationConfig,
    ModelConfig,
    TinyModelConfig,
    sub,
)
from esgrpo.evaluate import evaluate
from esgrpo.memory import PeakMemory
from esgrpo.models import load_policy, model_identity
from esgrpo.models.hub import load_hf
from esgrpo.models.policy import Policy
from esgrpo.runs import RunDir, default_run_path, write_json
from esgrpo.tasks import TASK_NAMES, examples_hash, get_task, load_examples
from esgrpo.train.es import ESConfig, train_es
from esgrpo.train.grpo import GRPOConfig, train_grpo

TaskName = Literal["countdown", "math", "chemistry", "boolq"]
assert set(TaskName.__args__) == set(TASK_NAMES)  # type: ignore[attr-defined]


@dataclass
class SetupConfig:
    """The sections every training command shares: model, data, evaluation decoding, both trainers."""

    model: ModelConfig = sub(ModelConfig)
    tiny: TinyModelConfig = sub(TinyModelConfig)
    data: DataConfig = sub(DataConfig)
    generation: GenerationConfig = sub(GenerationConfig)
    es: ESConfig = sub(ESConfig)
    grpo: GRPOConfig = sub(GRPOConfig)


@dataclass
class TrainConfig(SetupConfig):
    """`esgrpo train es|grpo`: train one model on one task, then evaluate it on the test split."""

    task: TaskName = F("countdown", "The task to train on.")
    eval_tasks: list[str] = F([], "Tasks to evaluate after training (default: the trained task only).",
                              (lambda v: all(t in TASK_NAMES for t in v), "names among " + ", ".join(TASK_NAMES)))
    out: str = F("", "Run directory (default: runs/<method>-<task>-<time>).")
    resume: bool = F(False, "Continue the run in `out` from its latest checkpoint.")


def checkpoint_policy(path: str | Path, cfg: ModelConfig) -> Policy:
    """Load a checkpoint directory as a Policy (same device/dtype rules as the base model)."""
    model, tok = load_hf(str(path), dtype=cfg.dtype, device=cfg.device)
    return Policy(model, tok, name=str(path))


def evaluate_checkpoints(run: RunDir, checkpoints: dict[str, Path], cfg: ModelConfig, data: DataConfig,
                         gen: GenerationConfig, tasks: list[str]) -> dict[str, Any]:
    """Greedy test accuracy of named checkpoints, cached in run/eval.json (resumable)."""
    path = run.path / "eval.json"
    done: dict[str, Any] = run.read_results("eval.json") or {}
    test = {t: load_examples(t, data.source, "test", data.n_test, seed=data.seed, path=data.data_paths.get(t))
            for t in tasks}
    for label, ckpt in checkpoints.items():
        if label in done and all(t in done[label] for t in tasks):
            continue
        policy = checkpoint_policy(ckpt, cfg)
        todo = {t: exs for t, exs in test.items() if t not in done.get(label, {})}
        res = evaluate(policy, todo, gen, label=f"{label} ")
        done.setdefault(label, {}).update(res)
        write_json(path, done)
    return done


def run_training(method: Literal["es", "grpo"], cfg: TrainConfig, run_path: str | Path | None = None,
                 extra_checkpoints: dict[str, int] | None = None, init_optimizer: Path | None = None) -> dict[str, Any]:
    """Train with `method` on cfg.task and evaluate; returns {"train": ..., "eval": ...}.

    extra_checkpoints: label -> step whose checkpoint is evaluated too (ES short inside ES long).
    init_optimizer (GRPO): optimizer.pt whose AdamW moments start the run (a sequence's previous stage).
    A finished run is not recomputed; an interrupted one resumes from its latest checkpoint.
    """
    task = get_task(cfg.task)
    d = cfg.data
    train = load_examples(cfg.task, d.source, "train", d.n_train, seed=d.seed, path=d.data_paths.get(cfg.task))
    eval_tasks = cfg.eval_tasks or [cfg.task]
    test = {t: load_examples(t, d.source, "test", d.n_test, seed=d.seed, path=d.data_paths.get(t)) for t in eval_tasks}
    inputs = {"model": model_identity(cfg.model, cfg.tiny),
              "data": examples_hash(train + [ex for t in eval_tasks for ex in test[t]])}
    run = RunDir(run_path or cfg.out or default_run_path(method, cfg.task), cfg, command=f"train {method}",
                 inputs=inputs)
    results = run.read_results()
    if results is None:
        resume = cfg.resume or (run.path / "checkpoints").exists()
        policy = load_policy(cfg.model, cfg.tiny)
        with PeakMemory(policy.device) as mem:
            if method == "es":
                results = train_es(policy, task, train, cfg.es, run, resume=resume)
            else:
                results = train_grpo(policy, task, train, cfg.grpo, run, resume=resume, init_optimizer=init_optimizer)
        results["peak_memory_added_bytes"] = mem.peak_bytes
        results["peak_memory_kind"] = mem.kind
        results["model_bytes"] = sum(p.numel() * p.element_size() for _, p in policy.named_parameters())
        run.write_results(results)
        del policy
    else:
        print(f"[train] {run.path} is finished; reusing it", file=sys.stderr)
    ckpts = {"final": run.path / "checkpoints" / "final"}
    for label, step in (extra_checkpoints or {}).items():
        ckpts[label] = run.path / "checkpoints" / f"step-{step:06d}"
    evals = evaluate_checkpoints(run, ckpts, cfg.model, d, cfg.generation, cfg.eval_tasks or [cfg.task])
    return {"train": results, "eval": evals, "run": str(run.path)}
