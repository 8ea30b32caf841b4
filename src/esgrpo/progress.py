"""Progress lines with an ETA, on stderr (one line per update, so logs stay readable in CI)."""

from __future__ import annotations

import sys
import time


class Progress:
    """`Progress("eval math", total)`; call `update(n_done, **fields)`; prints at most every `every` s."""

    def __init__(self, label: str, total: int, every: float = 5.0, stream=None) -> None:
        self.label, self.total, self.every = label, max(1, total), every
        self.stream = stream or sys.stderr
        self.t0 = time.time()
        self.last = -1e9

    def update(self, done: int, force: bool = False, **fields: float | str) -> None:
        now = time.time()
        if not force and now - self.last < self.every and done < self.total:
            return
        self.last = now
        el = now - self.t0
        eta = el / done * (self.total - done) if done else float("nan")
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        print(f"[{self.label}] {done}/{self.total} {extra} | {el:.0f}s elapsed, ETA {eta:.0f}s",
              file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return time.time() - self.t0
