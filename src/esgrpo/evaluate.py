"""Greedy (or sampled) accuracy of a policy on task examples: accuracy = mean binary reward.

Beside every accuracy, so that a shift of bias is not read as learning:
    right_format           share of responses that give an answer in the required format
    accuracy_right_format  accuracy among those (what format alone cannot explain)
    answers                distribution of the answers given (the 8 most common, "(none)" for no answer)
    constant_baseline      the best constant answer ("always yes", "always C") and its accuracy on the same
                           examples: the bar a model that ignores the question clears
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from esgrpo.config import GenerationConfig
from esgrpo.models.policy import Policy
from esgrpo.progress import Progress
from esgrpo.runs import RunDir
from esgrpo.tasks import get_task
from esgrpo.tasks.base import Example, Task, score_responses


def evaluate_task(policy: Policy, task: str | Task, examples: list[Example], gen: GenerationConfig,
                  n_show: int = 0, seed: int = 0, label: str = "", per_example: bool = False) -> dict[str, Any]:
    """Accuracy, response length, answer statistics and a few samples for one task (a name or a Task, e.g.
    one prompted by tasks.prompting.make_task). per_example: also "rewards", each example's reward in order
    (for intervals over examples)."""
    task = get_task(task) if isinstance(task, str) else task
    task_name = task.name
    prompts = task.prompt_ids(policy, examples)
    given: list[str | None] = []
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
                              temperature=gen.temperature, top_p=gen.top_p, seeds=seeds, stop=task.stop)
        scores = score_responses(task, out.texts, batch)
        errors += scores.errors
        for ex, text, ids, fin, r in zip(batch, out.texts, out.response_ids, out.finished, scores.rewards,
                                         strict=True):
            rewards.append(r)
            given.append(_safe_answer(task, text))
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
        **answer_statistics(task, examples, given, rewards),
        "seconds": time.time() - t0,
        "samples": samples,
        **({"rewards": rewards} if per_example else {}),
    }


def _safe_answer(task: Any, text: str) -> str | None:
    try:
        return task.answer(text)
    except Exception:  # a task's own extraction failing must not stop an evaluation
        return None


def answer_statistics(task: Any, examples: list[Example], given: list[str | None],
                      rewards: list[float]) -> dict[str, Any]:
    """Right-format rate, accuracy among right-format answers, answer distribution, constant baseline."""
    n = len(given)
    formatted = [i for i, a in enumerate(given) if a is not None]
    out: dict[str, Any] = {
        "right_format": len(formatted) / n if n else 0.0,
        "accuracy_right_format": sum(rewards[i] for i in formatted) / len(formatted) if formatted else 0.0,
        "answers": _top(Counter("(none)" if a is None else a for a in given)),
        "constant_baseline": None,
    }
    gold = [task.gold(ex) for ex in examples]
    if n and all(g is not None for g in gold):
        counts = Counter(gold)
        best, hits = max(sorted(counts.items()), key=lambda kv: kv[1])
        out["constant_baseline"] = {"answer": best, "accuracy": hits / n}
        out["gold_answers"] = _top(counts)
    return out


def _top(counts: Counter, k: int = 8) -> dict[str, int]:
    top = dict(counts.most_common(k))
    rest = sum(counts.values()) - sum(top.values())
    return {**top, **({"(other)": rest} if rest else {})}


def evaluate(policy: Policy, examples: dict[str, list[Example]], gen: GenerationConfig,
             run: RunDir | None = None, n_show: int = 0, label: str = "",
             tasks: dict[str, Task] | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate every task (tasks: name -> Task, e.g. prompted; default: by name); logs one metrics row per
    task and writes samples when `run` is given."""
    results = {}
    for name, exs in examples.items():
        task = (tasks or {}).get(name) or name
        res = evaluate_task(policy, task, exs, gen, n_show=n_show, label=f"{label}eval {name}")
        samples = res.pop("samples")
        results[name] = res
        if run is not None:
            run.log({"event": "eval", "task": name, **res})
            for row in samples:
                run.log(row, file="samples.jsonl")
    return results
