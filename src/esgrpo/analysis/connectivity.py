"""Linear mode connectivity between two checkpoints, and setting a policy's weights from tensors.

    theta(a) = (1 - a) theta_A + a theta_B,   a in alphas (default 0, 0.1, ..., 1)

`interpolate` sets the policy's parameters to theta(a), one tensor at a time (read lazily from the two
checkpoints' safetensors files, combined in fp32, cast to the policy's dtype), and records
`evaluate_fn(policy)` at each point. The ends are copied, not computed: a = 0 gives theta_A and a = 1
gives theta_B bitwise (as far as the policy's dtype can hold the stored values). The policy's own weights
are restored afterwards (restore=True).

`barrier(values, alphas)` measures a dip along the path: the largest gap between the straight line
joining the end values and the path. Sign convention, for a higher-is-better metric (accuracy, reward):

    barrier = max_a [ line(a) - value(a) ],  line(a) = value(a_0) + (a - a_0) / (a_n - a_0) (value(a_n) - value(a_0))

positive = the path dips below the line somewhere (a loss barrier); 0 = nowhere below the line (the ends
are on the line, so it is never negative when they are in `alphas`). With higher_is_better=False
(NLL, loss) the sign is flipped: max_a [ value(a) - line(a) ], positive = a bump above the line.

`make_evaluate_fn` builds the standard evaluate_fn: accuracy and mean reward per task (greedy unless the
GenerationConfig samples), per-token NLL of fixed reference responses (e.g. the base model's greedy
answers, from `greedy_references`), and optionally the tiny model's held-out corpus NLL.

Parameters are the model's own tensors, listed once each (a tied lm_head is the embedding); checkpoints
that omit a tied alias (lm_head.weight) are handled by looking the tensor up under any of its names.
All parameters are set, whatever their requires_grad (analysis policies may be frozen).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esgrpo.analysis.capability import heldout_nll, response_nll
from esgrpo.checkpoints import CheckpointTensors
from esgrpo.config import GenerationConfig
from esgrpo.evaluate import evaluate_task
from esgrpo.models.policy import Policy
from esgrpo.tasks import get_task
from esgrpo.tasks.base import Example, Task

EvaluateFn = Callable[[Policy], dict[str, Any]]


# --- parameters and checkpoints -----------------------------------------------------------------------------


def parameter_table(policy: Policy) -> list[tuple[str, Tensor, tuple[str, ...]]]:
    """(canonical name, parameter, all names of that tensor) for each distinct parameter, in model order."""
    by_id: dict[int, tuple[str, Tensor, list[str]]] = {}
    for name, p in policy.model.named_parameters(remove_duplicate=False):
        if id(p) in by_id:
            by_id[id(p)][2].append(name)
        else:
            by_id[id(p)] = (name, p, [name])
    return [(name, p, tuple(names)) for name, p, names in by_id.values()]


@torch.no_grad()
def set_parameters(policy: Policy, tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
                   strict: bool = True) -> None:
    """Copy tensors into the policy's parameters in place, by name, casting to each parameter's dtype/device.

    `tensors`: a mapping or a stream of (name, tensor); a name may be any alias of a tied parameter.
    A tensor already in the parameter's dtype is copied bitwise. strict: every parameter must be set.
    """
    table = parameter_table(policy)
    lookup = {alias: (name, p) for name, p, aliases in table for alias in aliases}
    done: set[str] = set()
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for key, t in items:
        if key not in lookup:
            raise KeyError(f"model '{policy.name}' has no parameter {key!r}")
        name, p = lookup[key]
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"shape mismatch for {key}: tensor {tuple(t.shape)}, parameter {tuple(p.shape)}")
        p.copy_(t)
        done.add(name)
    if strict and len(done) != len(table):
        missing = [name for name, _, _ in table if name not in done]
        raise ValueError(f"set_parameters: {len(missing)} parameters not given, e.g. {missing[:5]}")


def snapshot(policy: Policy) -> dict[str, Tensor]:
    """A CPU copy of the policy's parameters (to restore with set_parameters)."""
    return {name: p.detach().to("cpu", copy=True) for name, p, _ in parameter_table(policy)}


def interpolated_tensors(policy: Policy, a: CheckpointTensors, b: CheckpointTensors,
                         alpha: float) -> Iterator[tuple[str, Tensor]]:
    """(name, (1 - alpha) theta_A + alpha theta_B) per parameter, in fp32; the ends are the stored tensors."""
    for name, _, aliases in parameter_table(policy):
        if alpha == 0.0:
            yield name, a.get(*aliases)
        elif alpha == 1.0:
            yield name, b.get(*aliases)
        else:
            ta = a.get(*aliases).to(torch.float32, copy=True)
            yield name, ta.mul_(1.0 - alpha).add_(b.get(*aliases).to(torch.float32), alpha=alpha)


# --- the path and its barrier --------------------------------------------------------------------------------


def default_alphas(n: int = 11) -> list[float]:
    """n evenly spaced points from 0 to 1, both ends exact."""
    if n < 2:
        raise ValueError(f"need at least 2 alphas, got n={n}")
    return [i / (n - 1) for i in range(n)]


def interpolate(policy: Policy, theta_a_dir: str | Path, theta_b_dir: str | Path, alphas: Sequence[float],
                evaluate_fn: EvaluateFn, restore: bool = True) -> list[dict[str, Any]]:
    """[{"alpha": a, "metrics": evaluate_fn(policy at theta(a))}] for each a, in the given order."""
    saved = snapshot(policy) if restore else None
    points = []
    try:
        with CheckpointTensors(theta_a_dir) as a, CheckpointTensors(theta_b_dir) as b:
            for alpha in alphas:
                alpha = float(alpha)
                set_parameters(policy, interpolated_tensors(policy, a, b, alpha))
                points.append({"alpha": alpha, "metrics": evaluate_fn(policy)})
    finally:
        if saved is not None:
            set_parameters(policy, saved)
    return points


def barrier(values: Sequence[float], alphas: Sequence[float], higher_is_better: bool = True) -> float:
    """Largest gap by which the path falls short of the straight line between its end values.

    The ends are the first and last entries (alphas ascending). Positive: a barrier (a dip for
    higher-is-better metrics, a bump for lower-is-better ones); 0: none. See the module docstring.
    """
    if len(values) != len(alphas) or len(values) < 2:
        raise ValueError(f"need >= 2 values, one per alpha: {len(values)} values, {len(alphas)} alphas")
    if any(a1 <= a0 for a0, a1 in zip(alphas, alphas[1:], strict=False)):
        raise ValueError("alphas must be strictly increasing")
    a0, a1, v0, v1 = alphas[0], alphas[-1], values[0], values[-1]
    sign = 1.0 if higher_is_better else -1.0
    gaps = [sign * (v0 + (a - a0) / (a1 - a0) * (v1 - v0) - v) for a, v in zip(alphas, values, strict=True)]
    return float(max(gaps))


def lower_is_better(metric: str) -> bool:
    """The default direction of a metric by its name: NLLs and losses are lower-is-better."""
    return metric.endswith(("nll", "loss", "perplexity"))


def barriers(points: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None) -> dict[str, float]:
    """barrier() of each numeric metric of an `interpolate` result (direction from `lower_is_better`)."""
    alphas = [p["alpha"] for p in points]
    keys = metrics or [k for k, v in points[0]["metrics"].items() if isinstance(v, int | float)]
    return {k: barrier([p["metrics"][k] for p in points], alphas, higher_is_better=not lower_is_better(k))
            for k in keys}


# --- the standard evaluation ---------------------------------------------------------------------------------


def greedy_references(policy: Policy, examples_by_task: Mapping[str, list[Example]], max_new_tokens: int,
                      batch_size: int = 32, tasks: Mapping[str, Task] | None = None
                      ) -> dict[str, dict[str, list[list[int]]]]:
    """{task: {"prompt_ids", "response_ids"}}: the policy's greedy answers, as fixed reference responses."""
    out = {}
    for task_name, examples in examples_by_task.items():
        task = (tasks or {}).get(task_name) or get_task(task_name)
        prompts = task.prompt_ids(policy, examples)
        gen = policy.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=task.stop)
        out[task_name] = {"prompt_ids": prompts, "response_ids": gen.response_ids}
    return out


def make_evaluate_fn(examples_by_task: Mapping[str, list[Example]], gen: GenerationConfig,
                     references: Mapping[str, Mapping[str, list[list[int]]]] | None = None,
                     heldout: str | Path | Sequence[dict] | None = None, heldout_max_docs: int | None = None,
                     seed: int = 0, tasks: Mapping[str, Task] | None = None) -> EvaluateFn:
    """An evaluate_fn returning a flat dict of numbers:

    "<task>/accuracy", "<task>/mean_reward" (the same number: the tasks' rewards are binary),
    "<task>/mean_response_tokens", "mean_accuracy" (unweighted over tasks);
    with references: "<task>/ref_nll" (per-token NLL of the reference responses) and "ref_nll" (all tasks,
    token-weighted); with heldout (tiny model dir or rows): "heldout_nll".
    """
    def evaluate_fn(policy: Policy) -> dict[str, Any]:
        m: dict[str, Any] = {}
        for task_name, examples in examples_by_task.items():
            res = evaluate_task(policy, (tasks or {}).get(task_name) or task_name, examples, gen, seed=seed)
            m[f"{task_name}/accuracy"] = res["accuracy"]
            m[f"{task_name}/mean_reward"] = res["accuracy"]
            m[f"{task_name}/mean_response_tokens"] = res["mean_response_tokens"]
        if examples_by_task:
            m["mean_accuracy"] = sum(m[f"{t}/accuracy"] for t in examples_by_task) / len(examples_by_task)
        if references:
            total, count = 0.0, 0
            for task_name, ref in references.items():
                sums, counts = response_nll(policy, ref["prompt_ids"], ref["response_ids"], gen.batch_size)
                m[f"{task_name}/ref_nll"] = sum(sums) / max(1, sum(counts))
                total, count = total + sum(sums), count + sum(counts)
            m["ref_nll"] = total / max(1, count)
        if heldout is not None:
            m["heldout_nll"] = heldout_nll(policy, heldout, heldout_max_docs, gen.batch_size)["nll"]
        return m

    return evaluate_fn
