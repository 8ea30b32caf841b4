"""The four tasks of the study, by name, and the entry points that load their examples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from esgrpo.config.schema import DIFFICULTY_LEVELS, TASK_HELP, TASK_NAMES, is_task
from esgrpo.errors import ConfigError, DataSourceError, brief, clip
from esgrpo.tasks.base import Example, Scores, Task, score_responses
from esgrpo.tasks.boolq import BoolQTask
from esgrpo.tasks.chemistry import ChemistryTask
from esgrpo.tasks.countdown import CountdownTask
from esgrpo.tasks.custom import JsonlTask
from esgrpo.tasks.math import MathTask

if TYPE_CHECKING:
    from esgrpo.config import DataConfig

SOURCES = ("synthetic", "hub")

_TASKS: dict[str, type[Task]] = {
    "countdown": CountdownTask,
    "math": MathTask,
    "chemistry": ChemistryTask,
    "boolq": BoolQTask,
}
assert set(_TASKS) == set(TASK_NAMES)
assert all(tuple(cls.levels) == DIFFICULTY_LEVELS for cls in _TASKS.values())  # data.difficulty's check uses these


def get_task(name: str) -> Task:
    """A task by name: a built-in one, or `package.module:ClassName` naming a Task subclass of your own
    (importable from the current environment). Anything else is a ConfigError naming what is allowed."""
    cls = _TASKS.get(name) if isinstance(name, str) else None
    if cls is not None:
        return cls()
    if not is_task(name):
        raise ConfigError(f"unknown task {brief(name)}; allowed: {TASK_HELP}")
    import importlib

    module, _, attr = name.partition(":")
    # A module of your own can fail in any way on import (a syntax error, a ZeroDivisionError at top level):
    # all of them are one line naming the task. Only an esgrpo Task subclass or instance is ever constructed
    # or used: `subprocess:Popen` must be refused before anything is called.
    try:
        found = getattr(importlib.import_module(module), attr)
    except Exception as e:
        raise ConfigError(f"task {name!r}: cannot import {attr} from {module} ({type(e).__name__}: "
                          f"{clip(str(e))})") from None
    if isinstance(found, Task):
        return found
    if not (isinstance(found, type) and issubclass(found, Task)):
        what = f"the class {found.__name__}" if isinstance(found, type) else f"a {type(found).__name__}"
        raise ConfigError(f"task {name!r} is {what}, not an esgrpo.tasks.Task subclass")
    try:
        task = found()
    except Exception as e:
        raise ConfigError(f"task {name!r}: constructing {attr}() failed ({type(e).__name__}: {clip(str(e))})") \
            from None
    return task


def load_examples(
    task: str,
    source: Literal["synthetic", "hub"],
    split: str,
    n: int | None,
    seed: int = 0,
    path: str | None = None,
    level: int = 1,
) -> list[Example]:
    """Examples of `task` from seeded synthetic draws or the paper's dataset (hub or `path`).

    `n=None` means the paper's size for hub data. `seed` only affects synthetic data (the hub
    selections are fixed by the paper's protocol); `path` only affects hub data. `level`: the synthetic
    generator's difficulty level (data.difficulty; 1, the original generator, is the only one of hub data and
    of tasks of your own). An empty split, or fewer examples than `n`, is an error naming the source (never a
    silent accuracy on n = 0).
    """
    t = get_task(task)
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ConfigError(f"n must be a non-negative integer, got {n!r}")
    if level != 1:
        if not t.builtin or source != "synthetic":
            what = f"task {task!r} is not a built-in synthetic task" if not t.builtin else f"the source is {source}"
            raise ConfigError(f"difficulty level {brief(level)} for {task}: levels apply to the built-in tasks' "
                              f"synthetic data only, and {what} (data.difficulty)")
        if level not in t.levels:
            raise ConfigError(f"task {task!r} has difficulty levels {', '.join(map(str, t.levels))}; got "
                              f"{brief(level)} (data.difficulty)")
    if not t.builtin:  # a task of your own loads its own data
        if split not in ("train", "test"):
            raise ConfigError(f"task {task!r} has train and test splits, not {split!r}")
        out = t.examples(split, n if n is not None else 10**9, seed)  # type: ignore[arg-type]
        if n is not None and len(out) < n:
            raise DataSourceError(f"task {task!r}: the {split} split has {len(out)} examples, {n} were asked for")
        return out[:n] if n is not None else out
    if source == "synthetic":
        if n is None:
            raise ConfigError("synthetic data needs an explicit number of examples n")
        # Level 1 without the argument: a Task subclass written before levels (synthetic(split, n, seed)) still works.
        return t.synthetic(split, n, seed) if level == 1 else t.synthetic(split, n, seed, level)  # type: ignore[arg-type]
    if source != "hub":
        raise ConfigError(f"unknown source {source!r}; allowed: {', '.join(SOURCES)}")
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r} for hub data; allowed: train, test")
    out = t.from_hub(split, n, path)  # type: ignore[arg-type]
    where = path or f"the {task} hub dataset"
    if not out and n != 0:
        raise DataSourceError(f"{where}: the {task} {split} split is empty (the file is smaller than the "
                              "paper's selection needs); use the full dataset or source: synthetic")
    if n is not None and len(out) < n:
        key = "data.n_train" if split == "train" else "data.n_test"
        raise DataSourceError(f"{where}: the {task} {split} split has {len(out)} examples, {n} were asked for; "
                              f"set {key} <= {len(out)}")
    return out


def task_examples(data: DataConfig, task: str, split: str, n: int) -> list[Example]:
    """`n` examples of one task as the data config says: its source, seed, local file and difficulty level."""
    return load_examples(task, data.source, split, n, seed=data.seed, path=data.data_paths.get(task),
                         level=data.level(task))


def load_task_examples(data: DataConfig, split: str, n: int,
                       tasks: list[str] | None = None) -> dict[str, list[Example]]:
    """Examples per task (data.tasks by default) from the configured source, at each task's difficulty level."""
    return {t: task_examples(data, t, split, n) for t in (tasks if tasks is not None else data.tasks)}


def check_disjoint(task: str, train: list[Example], test: list[Example], where: str) -> None:
    """Refuse a test split that shares questions with the train split (e.g. a single local file serving
    both, or one too small for the paper's row ranges): accuracy on it would measure memorization."""
    seen = {ex.question for ex in train}
    shared = [ex for ex in test if ex.question in seen]
    if shared:
        raise DataSourceError(f"{where}: {len(shared)} of the {len(test)} {task} test examples also appear in the "
                              f"train split (first: {shared[0].uid}); give train and test data that do not overlap")


def examples_hash(examples: list[Example]) -> str:
    """A short content hash of examples (uids, questions, targets): tells whether two runs saw the same data."""
    import hashlib
    import json

    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.uid, ex.question, ex.target], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


__all__ = ["SOURCES", "TASK_NAMES", "Example", "JsonlTask", "Scores", "Task", "check_disjoint", "examples_hash",
           "get_task", "load_examples", "load_task_examples", "score_responses", "task_examples"]
