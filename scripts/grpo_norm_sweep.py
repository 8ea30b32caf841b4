"""GRPO's update norm, measured against the AdamW random-walk prediction (theory/adamw.py), on a sweep of
learning rates x steps on one task of a study config.

    .venv/bin/python scripts/grpo_norm_sweep.py [--config configs/study-default.yaml] [--task math]
        [--lrs 1e-4 3e-4 1e-3] [--steps 10 20 40] [--snr-steps 16]

Each cell trains native GRPO from the base model in a scratch directory (the study's other grpo
settings, KL measurement off) and prints ||theta_T - theta_0||, the prediction from lr, the schedule,
the betas and d alone (steps whose gradient was exactly zero included), and their ratio.

Before the sweep, the gradient's signal-to-noise ratio is measured at the base model: --snr-steps GRPO
steps at a learning rate of 1e-30 (the weights stay the base model's to the last bit, checked) give that
many independent gradients (fresh prompts and samples each step), as AdamW receives them (after
clipping); theory/adamw.gradient_snr turns them into the rms per-coordinate snr, and the last column
is the walk's prediction with that signal held constant over the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from pathlib import Path

import torch

from esgrpo.config import StudyConfig, load_config
from esgrpo.models import load_policy
from esgrpo.runs import RunDir
from esgrpo.tasks import task_examples
from esgrpo.tasks.prompting import make_task
from esgrpo.theory.adamw import gradient_snr, grpo_norm, schedule
from esgrpo.train.grpo import train_grpo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/study-default.yaml")
    p.add_argument("--task", default="math")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    p.add_argument("--snr-steps", type=int, default=16, help="gradients measured at the base model (>= 4)")
    a = p.parse_args()
    cfg = load_config(StudyConfig, a.config, {})
    d_cfg = cfg.data
    train = task_examples(d_cfg, a.task, "train", d_cfg.n_train)
    task = make_task(a.task, cfg.prompt, cfg.data)
    snr, flat = gradient_snr(load_policy(cfg.model, cfg.tiny), task, train, cfg.grpo, a.snr_steps)
    print(f"gradient snr at the base model (rms per coordinate, {a.snr_steps - flat} gradients, {flat} all-flat "
          f"steps left out): {snr:.4f}")
    print("| lr | steps | schedule | measured norm | predicted (walk) | measured / predicted | zero-gradient steps "
          "| predicted (walk + snr) | measured / predicted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lr in a.lrs:
        for steps in a.steps:
            grpo = dataclasses.replace(cfg.grpo, lr=lr, steps=steps, max_rollouts=0, kl_every=0, checkpoint_every=0)
            policy = load_policy(cfg.model, cfg.tiny)
            base = [p.detach().clone() for _, p in policy.named_parameters()]
            with tempfile.TemporaryDirectory() as tmp:
                run = RunDir(Path(tmp) / "run")
                train_grpo(policy, task, train, grpo, run)
                rows = [r for r in run.metrics() if r.get("trainer") == "grpo"]
            measured = math.sqrt(sum(float((p.detach() - b).double().pow(2).sum())
                                     for (_, p), b in zip(policy.named_parameters(), base, strict=True)))
            zero = [i for i, r in enumerate(rows) if r["frac_zero_adv"] == 1.0]
            d = sum(b.numel() for b in base)
            lrs = schedule(lr, steps, grpo.lr_schedule, grpo.warmup_steps, grpo.schedule_steps)
            predicted = grpo_norm(lrs, d, zero_steps=zero)
            with_signal = grpo_norm(lrs, d, snr=snr, zero_steps=zero)
            print(f"| {lr:g} | {steps} | {grpo.lr_schedule} | {measured:.3f} | {predicted:.3f} | "
                  f"{measured / predicted:.2f} | {len(zero)} | {with_signal:.3f} | {measured / with_signal:.2f} |",
                  flush=True)
            del policy, base
            torch.cuda.empty_cache() if torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
