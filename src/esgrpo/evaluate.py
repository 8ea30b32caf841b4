"""Greedy (or sampled) accuracy of a policy on task examples: accuracy = mean binary reward."""

from __future__ import annotations

import time
from typing import Any

from esgrpo.config import GenerationConfig
from esgrpo.models.policy import Policy
from esgrpo.progress import Progress
from esgrpo.runs import RunDir
from esgrpo.tasks import get_task
from esgrpo.tasks.base import Example, score_responses


def evaluate_task(policy: Policy, task_name: str, examples: list[Example], gen: GenerationConfig,
                  n_show: int = 0, seed: int = 0, label: str = "") -> dict[str, Any]:
    """Accuracy, response length and a few samples for one task."""
    task = get_task(task_name)
    prompts = policy.encode([task.messages(ex) for ex in examples])
    rewards: list[float] = []
    lengths: list[int] = []
    truncated = errors = 0
    samples = []
    prog = Progress(label or f"eval {task_name}", len(examples))
    t0 = time.time()
    for s in range(0, len(examples), gen.batch_size):
        batch = examples[s:s + gen.batch_size]
        seeds = [seed + s + i for i in range(len(batch))] if gen.temperature > 0 else None
        out = policy.generate(prompts[s:s + gen.batch_size], max_new_tokens=gen.max_new_tokens,
                              temperature=gen.temperature, top_p=gen.top_p, seeds=seeds)
        scores = score_responses(task, out.texts, batch)
        errors += scores.errors
        for ex, text, ids, fin, r in zip(batch, out.texts, out.response_ids, out.finished, scores.rewards,
                                         strict=True):
            rewards.append(r)
            lengths.append(len(ids))
            truncated += not fin
            if len(samples) < n_show:
                samples.append({"task": task_name, "uid": ex.uid, "question": ex.question, "response": text,
                                "reward": r, "target": ex.target})
        prog.update(len(rewards), accuracy=sum(rewards) / len(rewards))
    n = len(rewards)
    return {
        "accuracy": sum(rewards) / n if n else 0.0,
        "n": n,
        "mean_response_tokens": sum(lengths) / n if n else 0.0,
        "truncated_fraction": truncated / n if n else 0.0,
        "reward_errors": errors,
        "seconds": time.time() - t0,
        "samples": samples,
    }


def evaluate(policy: Policy, examples: dict[str, list[Example]], gen: GenerationConfig,
             run: RunDir | None = None, n_show: int = 0, label: str = "") -> dict[str, dict[str, Any]]:
    """Evaluate every task; logs one metrics row per task and writes samples when `run` is given."""
    results = {}
    for name, exs in examples.items():
        res = evaluate_task(policy, name, exs, gen, n_show=n_show, label=f"{label}eval {name}")
        samples = res.pop("samples")
        results[name] = res
        if run is not None:
            run.log({"event": "eval", "task": name, **res})
            for row in samples:
                run.log(row, file="samples.jsonl")
    return results
