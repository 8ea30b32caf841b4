"""`esgrpo bench es|grpo`: where the time of an ES iteration / GRPO step goes, and peak memory.

Runs a few iterations/steps of the configured trainer in a scratch run directory and prints the
mean seconds per phase (from the trainer's own per-phase timers in metrics.jsonl), their share of
the iteration, throughput, and the trainer's peak memory (the definitions of memory.py).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Literal

from esgrpo.config import TrainConfig
from esgrpo.models import load_policy
from esgrpo.runs import RunDir
from esgrpo.tasks import get_task, load_examples
from esgrpo.train.es import train_es
from esgrpo.train.grpo import train_grpo

PHASES = {"es": ("perturb", "generate", "reward", "restore", "update"),
          "grpo": ("generate", "reward", "backward", "ref", "step")}  # backward includes the scoring forward


def bench(method: Literal["es", "grpo"], cfg: TrainConfig, iterations: int = 3) -> str:
    """Run `iterations` iterations/steps and return the printed report."""
    task = get_task(cfg.task)
    d = cfg.data
    train = load_examples(cfg.task, d.source, "train", d.n_train, seed=d.seed, path=d.data_paths.get(cfg.task))
    policy = load_policy(cfg.model, cfg.tiny)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "bench")
        if method == "es":
            res = train_es(policy, task, train, dataclasses.replace(cfg.es, iterations=iterations, checkpoint_every=0,
                                                                    save_base=False, max_rollouts=0), run)
        else:
            res = train_grpo(policy, task, train, dataclasses.replace(cfg.grpo, steps=iterations, checkpoint_every=0,
                                                                      max_rollouts=0), run)
        rows = run.metrics()
    per = [r.get("iteration_seconds", r.get("step_seconds", 0.0)) for r in rows]
    total = statistics.mean(per) if per else float("nan")
    lines = [f"{method} on {cfg.model.name} ({policy.num_parameters():,} parameters, {policy.device}), "
             f"task {cfg.task}, {len(rows)} {'iterations' if method == 'es' else 'steps'}:",
             f"  {'phase':10s} {'s/iter':>9s} {'share':>7s}"]
    for ph in PHASES[method]:
        vals = [r.get(f"t_{ph}", 0.0) for r in rows]
        v = statistics.mean(vals) if vals else 0.0
        lines.append(f"  {ph:10s} {v:9.3f} {100 * v / total if total else 0:6.1f}%")
    lines.append(f"  {'total':10s} {total:9.3f}")
    roll = statistics.mean(b["rollouts"] - a["rollouts"] for a, b in zip([{"rollouts": 0}] + rows, rows, strict=False))
    toks = statistics.mean(b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + rows, rows, strict=False))
    lines.append(f"  throughput: {roll / total:.1f} rollouts/s, {toks / total:.0f} generated tokens/s")
    mib = 2 ** 20
    lines.append(f"  peak memory ({res['memory_kind']}): {res['peak_memory_bytes'] / mib:.1f} MiB in the process, "
                 f"{res['peak_memory_added_bytes'] / mib:.1f} MiB added by training; model weights "
                 f"{res['model_bytes'] / mib:.1f} MiB; measurement (KL reference copy) "
                 f"{res['measure_memory_bytes'] / mib:.1f} MiB, {res['measure_seconds']:.2f} s")
    return "\n".join(lines)
