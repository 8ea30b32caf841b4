"""How much headroom a model leaves to RL on a task: greedy accuracy and right-format rate, the mean accuracy
of sampled responses, and pass@k, overall and by instance kind.

RL can only raise what sampling already finds now and then: pass@k bounds what k samples per prompt (GRPO's
group) can discover, the mean sampled accuracy is how often a group has any signal, and pass@k minus greedy is
the room for sharpening toward answers the model can already produce (not format repair, when the
right-format rate is high). Sampling seeds are fixed (sample j of prompt i: seed 1000 j + i), so the figures
reproduce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from esgrpo.models.policy import Policy
from esgrpo.tasks.base import Example, Task, score_responses

# Instance kinds reported beside "all", per task (a task not listed: "all" only).
KINDS: dict[str, dict[str, Callable[[Example], bool]]] = {
    "countdown": {
        "3 numbers": lambda e: len(e.target["nums"]) == 3,
        "4 numbers": lambda e: len(e.target["nums"]) == 4,
        "target = sum of the numbers": lambda e: sum(e.target["nums"]) == e.target["target"],
        "target != sum": lambda e: sum(e.target["nums"]) != e.target["target"],
    },
}


@dataclass
class Headroom:
    """One model on one kind of instances of a task (fractions in [0, 1])."""

    n: int
    greedy: float  # greedy accuracy
    right_format: float  # greedy answers in the required format
    sampled: float  # mean accuracy of the k sampled responses
    pass_at_k: float  # at least one of the k sampled responses right

    @property
    def room(self) -> float:
        """pass@k minus greedy: what sharpening toward answers sampling already finds could add."""
        return self.pass_at_k - self.greedy


def headroom(policy: Policy, task: Task, examples: list[Example], k: int, max_new_tokens: int, temperature: float,
             top_p: float, greedy_max_new_tokens: int | None = None, batch_size: int = 64,
             kinds: dict[str, Callable[[Example], bool]] | None = None) -> dict[str, Headroom]:
    """Greedy, right-format, mean sampled and pass@k of `policy` on `examples`, for "all" and each kind (by
    default the task's KINDS). max_new_tokens: the samples' length (GRPO's); greedy_max_new_tokens: the greedy
    answers' (the evaluation's; default the same)."""
    prompts = task.prompt_ids(policy, examples)
    greedy = policy.generate(prompts, max_new_tokens=greedy_max_new_tokens or max_new_tokens, batch_size=batch_size,
                             stop=task.stop)
    right = score_responses(task, greedy.texts, examples).rewards
    formatted = [_answers(task, t) for t in greedy.texts]
    mean, hit = [0.0] * len(examples), [0.0] * len(examples)
    for j in range(k):
        out = policy.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature,
                              top_p=top_p, seeds=[1000 * j + i for i in range(len(examples))], stop=task.stop)
        for i, r in enumerate(score_responses(task, out.texts, examples).rewards):
            mean[i] += r / k
            hit[i] = max(hit[i], r)
    out_: dict[str, Headroom] = {}
    for name, keep in {"all": lambda e: True, **(KINDS.get(task.name, {}) if kinds is None else kinds)}.items():
        idx = [i for i, e in enumerate(examples) if keep(e)]
        n = max(1, len(idx))
        out_[name] = Headroom(len(idx), sum(right[i] for i in idx) / n, sum(formatted[i] for i in idx) / n,
                              sum(mean[i] for i in idx) / n, sum(hit[i] for i in idx) / n)
    return out_


def _answers(task: Task, text: str) -> float:
    try:
        return float(task.answer(text) is not None)
    except Exception:  # a task's own extraction failing counts as no answer
        return 0.0
