"""How much Countdown headroom the base model leaves to RL: greedy accuracy, mean accuracy of sampled
responses and pass@k, overall and by instance kind, and optionally the same for trained checkpoints.

    .venv/bin/python scripts/countdown_headroom.py [--config configs/study-default.yaml] [--k 8]
        [--n 500] [--checkpoint LABEL=DIR ...]

RL can only raise what sampling already finds now and then: pass@k bounds what k samples per prompt
(GRPO's group) can discover, and the mean sampled accuracy is how often a group has any signal.
Sampling uses the study's GRPO temperature and top_p; seeds are fixed, so the figures reproduce.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from esgrpo.checkpoints import checkpoint_policy
from esgrpo.config import StudyConfig, load_config
from esgrpo.models import load_policy
from esgrpo.tasks import load_task_examples
from esgrpo.tasks.base import Example, score_responses
from esgrpo.tasks.prompting import make_task

KINDS: dict[str, Callable[[Example], bool]] = {
    "all": lambda e: True,
    "3 numbers": lambda e: len(e.target["nums"]) == 3,
    "4 numbers": lambda e: len(e.target["nums"]) == 4,
    "target = sum of the numbers": lambda e: sum(e.target["nums"]) == e.target["target"],
    "target != sum": lambda e: sum(e.target["nums"]) != e.target["target"],
}


def headroom(policy, cfg: StudyConfig, test: list[Example], k: int) -> dict[str, tuple[int, float, float, float]]:
    task = make_task("countdown", cfg.prompt, cfg.data)
    prompts = task.prompt_ids(policy, test)
    g = policy.generate(prompts, max_new_tokens=cfg.generation.max_new_tokens, batch_size=cfg.generation.batch_size,
                        stop=task.stop)
    greedy = score_responses(task, g.texts, test).rewards
    mean, hit = [0.0] * len(test), [0.0] * len(test)
    for j in range(k):
        out = policy.generate(prompts, max_new_tokens=cfg.grpo.max_new_tokens, batch_size=cfg.generation.batch_size,
                              temperature=cfg.grpo.temperature, top_p=cfg.grpo.top_p,
                              seeds=[1000 * j + i for i in range(len(test))], stop=task.stop)
        for i, r in enumerate(score_responses(task, out.texts, test).rewards):
            mean[i] += r / k
            hit[i] = max(hit[i], r)
    out_: dict[str, tuple[int, float, float, float]] = {}
    for name, keep in KINDS.items():
        idx = [i for i, e in enumerate(test) if keep(e)]
        n = max(1, len(idx))
        out_[name] = (len(idx), sum(greedy[i] for i in idx) / n, sum(mean[i] for i in idx) / n,
                      sum(hit[i] for i in idx) / n)
    return out_


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/study-default.yaml")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--checkpoint", nargs="*", default=[], help="LABEL=CHECKPOINT_DIR of trained models")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(StudyConfig, a.config, {})
    test = load_task_examples(cfg.data, "test", a.n)["countdown"]
    models = {"base": load_policy(cfg.model, cfg.tiny)}
    for item in a.checkpoint:
        label, _, path = item.partition("=")
        models[label] = checkpoint_policy(path, cfg.model)
    print(f"| model | instances | n | greedy % | mean sampled % | pass@{a.k} % |")
    print("|---|---|---|---|---|---|")
    for label, policy in models.items():
        for kind, (n, g, m, h) in headroom(policy, cfg, test, a.k).items():
            print(f"| {label} | {kind} | {n} | {100 * g:.1f} | {100 * m:.1f} | {100 * h:.1f} |", flush=True)


if __name__ == "__main__":
    main()
