"""How much headroom the base model (and trained checkpoints) leave to RL, per task: greedy accuracy,
right-format rate, mean accuracy of sampled responses and pass@k, overall and by instance kind
(analysis/headroom.py says what each figure bounds).

    .venv/bin/python scripts/headroom.py [--config configs/study-default.yaml] [--tasks countdown,math]
        [--k 8] [--n 500] [--checkpoint LABEL=DIR ...] [--threads 1]

Greedy decoding uses the study's evaluation settings; sampling uses its GRPO temperature, top_p and response
length (the samples GRPO's groups would draw). Data, prompts and difficulty levels come from the config.
"""

from __future__ import annotations

import argparse

import torch

from esgrpo.analysis.headroom import headroom
from esgrpo.checkpoints import checkpoint_policy
from esgrpo.config import StudyConfig, load_config
from esgrpo.models import load_policy
from esgrpo.tasks import load_task_examples
from esgrpo.tasks.prompting import make_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/study-default.yaml")
    p.add_argument("--tasks", default="", help="comma-separated (default: the config's data.tasks)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--checkpoint", nargs="*", default=[], help="LABEL=CHECKPOINT_DIR of trained models")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(StudyConfig, a.config, {})
    tasks = [t for t in a.tasks.split(",") if t] or cfg.data.tasks
    test = load_task_examples(cfg.data, "test", a.n, tasks=tasks)
    models = {"base": load_policy(cfg.model, cfg.tiny)}
    for item in a.checkpoint:
        label, _, path = item.partition("=")
        models[label] = checkpoint_policy(path, cfg.model)
    print(f"| task | model | instances | n | right format % | greedy % | mean sampled % | pass@{a.k} % | "
          f"pass@{a.k} - greedy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in tasks:
        task = make_task(name, cfg.prompt, cfg.data)
        for label, policy in models.items():
            rows = headroom(policy, task, test[name], a.k, cfg.grpo.max_new_tokens, cfg.grpo.temperature,
                            cfg.grpo.top_p, greedy_max_new_tokens=cfg.generation.max_new_tokens,
                            batch_size=cfg.generation.batch_size)
            for kind, h in rows.items():
                print(f"| {name} | {label} | {kind} | {h.n} | {100 * h.right_format:.1f} | {100 * h.greedy:.1f} | "
                      f"{100 * h.sampled:.1f} | {100 * h.pass_at_k:.1f} | {100 * h.room:+.1f} |", flush=True)


if __name__ == "__main__":
    main()
