"""The four tasks of the study, by name, and one entry point to load their examples."""

from __future__ import annotations

from typing import Literal

from esgrpo.errors import ConfigError
from esgrpo.tasks.base import Example, Task
from esgrpo.tasks.boolq import BoolQTask
from esgrpo.tasks.chemistry import ChemistryTask
from esgrpo.tasks.countdown import CountdownTask
from esgrpo.tasks.math import MathTask

TASK_NAMES = ("countdown", "math", "chemistry", "boolq")
SOURCES = ("synthetic", "hub")

_TASKS: dict[str, type[Task]] = {
    "countdown": CountdownTask,
    "math": MathTask,
    "chemistry": ChemistryTask,
    "boolq": BoolQTask,
}


def get_task(name: str) -> Task:
    """A task by name; an unknown name is a ConfigError listing the allowed ones."""
    cls = _TASKS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown task {name!r}; allowed: {', '.join(TASK_NAMES)}")
    return cls()


def load_examples(
    task: str,
    source: Literal["synthetic", "hub"],
    split: str,
    n: int | None,
    seed: int = 0,
    path: str | None = None,
) -> list[Example]:
    """Examples of `task` from seeded synthetic draws or the paper's dataset (hub or `path`).

    `n=None` means the paper's size for hub data. `seed` only affects synthetic data (the hub
    selections are fixed by the paper's protocol); `path` only affects hub data.
    """
    t = get_task(task)
    if source == "synthetic":
        if n is None:
            raise ConfigError("synthetic data needs an explicit number of examples n")
        return t.synthetic(split, n, seed)  # type: ignore[arg-type]
    if source == "hub":
        if split not in ("train", "test"):
            raise ConfigError(f"unknown split {split!r} for hub data; allowed: train, test")
        if n is not None and (not isinstance(n, int) or n < 0):
            raise ConfigError(f"n must be a non-negative integer, got {n!r}")
        return t.from_hub(split, n, path)  # type: ignore[arg-type]
    raise ConfigError(f"unknown source {source!r}; allowed: {', '.join(SOURCES)}")


__all__ = ["SOURCES", "TASK_NAMES", "Example", "Task", "get_task", "load_examples"]


def examples_hash(examples: list[Example]) -> str:
    """A short content hash of examples (uids, questions, targets): tells whether two runs saw the same data."""
    import hashlib
    import json

    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.uid, ex.question, ex.target], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
