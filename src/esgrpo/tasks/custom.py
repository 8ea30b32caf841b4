"""Bring your own task: data in JSONL files, a reward in TRL's signature.

    # mytasks.py (anywhere importable)
    from esgrpo.tasks import JsonlTask

    def exact(prompts, completions, answer, **columns):       # TRL reward signature
        return [1.0 if c.strip().endswith(a) else 0.0 for c, a in zip(completions, answer)]

    class Capitals(JsonlTask):
        name = "capitals"
        system_prompt = "Answer with the city's name only."
        files = {"train": "data/capitals-train.jsonl", "test": "data/capitals-test.jsonl"}
        reward_function = staticmethod(exact)

    esgrpo train es --task mytasks:Capitals
    esgrpo study --data.tasks mytasks:Capitals,math

Each JSONL row holds the question in `question_column` ("question" by default) and any other columns, which
become the example's target and are passed to the reward function as TRL passes dataset columns: one list
per column, one element per completion. A row's `uid` column, if present, names it (else its split and
line number). The reward is scored through esgrpo's one scoring path (a reward that raises scores 0 and is
counted).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from esgrpo.errors import DataSourceError
from esgrpo.tasks.base import Example, Task


class JsonlTask(Task):
    """A task whose examples are rows of JSONL files and whose reward is a TRL reward function."""

    files: ClassVar[dict[str, str]] = {}  # split ("train", "test") -> JSONL path (relative: to the working dir)
    question_column: ClassVar[str] = "question"
    reward_function: Callable[..., list[float]]

    def examples(self, split: Literal["train", "test"], n: int, seed: int) -> list[Example]:
        path = self.files.get(split)
        if path is None:
            raise DataSourceError(f"task {self.name!r} names no {split} file (files = {self.files})")
        p = Path(path)
        if not p.is_file():
            raise DataSourceError(f"task {self.name!r}: {split} file {p} not found")
        out = []
        with open(p, "rb") as f:  # bytes, so that a line that is not UTF-8 is named like any other bad line
            for line_no, raw in enumerate(f, start=1):
                if len(out) >= n:
                    break
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataSourceError(f"{p}, line {line_no}: not UTF-8 text (byte {e.start}: {e.reason})") \
                        from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    question = row.pop(self.question_column)
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    raise DataSourceError(f"{p}, line {line_no}: not a JSON object with a {self.question_column!r} "
                                          f"column ({type(e).__name__})") from None
                uid = str(row.pop("uid", f"{self.name}-{split}-{line_no}"))
                out.append(Example(uid=uid, question=str(question), target=row))
        return out

    def reward(self, text: str, example: Example) -> float:
        columns: dict[str, Any] = {k: [v] for k, v in example.target.items()}
        # The value as returned (None, NaN, a string...): score_responses says what a failed reward returned.
        return type(self).reward_function([[{"role": "user", "content": example.question}]], [text], **columns)[0]
