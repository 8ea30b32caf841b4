"""Where examples come from: the Hugging Face Hub (or a local copy), and seeded synthetic draws.

Hub: every failure becomes a `DataSourceError` whose message names the dataset or file and points
at the two ways out (`source: synthetic`, or a local `data_path`), so the CLI can print it
without a traceback.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from esgrpo.errors import ConfigError, DataSourceError
from esgrpo.tasks.base import Example

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HINT = "use `data.source: synthetic`, or download the data and name the local copy in `data.data_paths`"


def _pick_split(obj: Any, split: str, where: str) -> Any:
    """A Dataset from a Dataset or DatasetDict: the named split, else the only one."""
    from datasets import DatasetDict

    if not isinstance(obj, DatasetDict):
        return obj
    if split in obj:
        return obj[split]
    if len(obj) == 1:
        return next(iter(obj.values()))
    raise DataSourceError(f"{where} has splits {sorted(obj)} but not {split!r}")


def _load_local(path: str, split: str) -> Any:
    import datasets

    p = Path(path).expanduser()
    if not p.exists():
        raise DataSourceError(f"data file not found: {p} ({_HINT})")
    try:
        if p.is_dir():
            if any((p / m).exists() for m in _SAVE_TO_DISK_MARKERS):
                obj = datasets.load_from_disk(str(p))
            else:
                obj = datasets.load_dataset(str(p))
        else:
            builder = _BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise DataSourceError(
                    f"unsupported data file type {p.suffix!r} for {p}; use .jsonl, .json, .parquet or .csv"
                )
            obj = datasets.load_dataset(builder, data_files=str(p), split="train")
    except DataSourceError:
        raise
    except Exception as e:
        raise DataSourceError(f"could not read dataset file {p}: {type(e).__name__}: {e}") from e
    return _pick_split(obj, split, str(p))


def _load_hub(dataset_id: str, config: str | None, split: str) -> Any:
    try:
        import datasets

        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:
        name = dataset_id + (f" (config {config!r})" if config else "")
        raise DataSourceError(
            f"could not load {name}, split {split!r}, from the Hugging Face Hub: "
            f"{type(e).__name__}: {e}. Offline or no access? {_HINT}"
        ) from e


def load_rows(
    dataset_id: str,
    *,
    split: str,
    columns: Sequence[str],
    config: str | None = None,
    path: str | None = None,
) -> Any:
    """A `datasets.Dataset` for `split` of `dataset_id`, or of the local file/dir `path`.

    A local single file is used as-is for any split; a local directory (`save_to_disk`, or data
    files named by split) provides the named split, or its only one. Raises DataSourceError when
    the data cannot be read or lacks one of `columns`.
    """
    ds = _load_local(path, split) if path else _load_hub(dataset_id, config, split)
    where = str(path) if path else dataset_id
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataSourceError(
            f"{where} (split {split!r}) lacks column(s) {missing}; found {ds.column_names}. "
            f"It must follow the schema of {dataset_id}."
        )
    return ds


# ---------------------------------------------------------------------------------------------
# Synthetic examples: disjoint splits by a stable hash of each instance's canonical key.

SYNTHETIC_SPLITS = ("pretrain", "train", "test")
# Cumulative percent thresholds: 70% pretrain, 10% train, 20% test.
_SPLIT_THRESHOLDS = ((70, "pretrain"), (80, "train"), (100, "test"))

# draw(rng) -> (canonical key, question, target)
Draw = Callable[[random.Random], tuple[str, str, dict[str, Any]]]


def _digest(task: str, key: str) -> str:
    return hashlib.sha256(f"{task}:{key}".encode()).hexdigest()


def split_of(task: str, key: str) -> str:
    """The split an instance belongs to, by SHA-256 of its key (stable across runs and machines,
    unlike Python's salted hash()), so a key can never land in two splits."""
    bucket = int(_digest(task, key)[:8], 16) % 100
    return next(name for limit, name in _SPLIT_THRESHOLDS if bucket < limit)


# A split is exhausted when this many draws in a row bring no new instance of it.
STALL_DRAWS = 50_000


def collect_synthetic(task: str, split: str, n: int, seed: int, draw: Draw,
                      capacity: dict[str, int] | None = None) -> list[Example]:
    """Draw candidates from random.Random(seed) until `n` distinct ones fall in `split`.

    `capacity`: about how many distinct instances each split holds (measured once per generator); a
    larger `n` is refused before any drawing. Should a pool still run dry, STALL_DRAWS draws in a row
    without a new instance stop the search with the same error instead of drawing forever.
    """
    if split not in SYNTHETIC_SPLITS:
        raise ConfigError(
            f"unknown split {split!r} for synthetic {task}; allowed: {', '.join(SYNTHETIC_SPLITS)}"
        )
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"n must be a non-negative integer, got {n!r}")
    if capacity is not None and n > capacity[split]:
        raise ConfigError(f"synthetic {task} has about {capacity[split]:,} distinct {split} instances; "
                          f"{n:,} were asked for: use n <= {capacity[split]:,}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Example] = []
    since_new = 0
    while len(out) < n:
        key, question, target = draw(rng)
        if key in seen:
            since_new += 1
        else:
            seen.add(key)
            if split_of(task, key) == split:
                out.append(Example(uid=f"{task}-{_digest(task, key)[:16]}", question=question, target=target))
                since_new = 0
            else:
                since_new += 1
        if since_new >= STALL_DRAWS:
            raise ConfigError(f"synthetic {task} ran out of distinct {split} instances at {len(out):,} "
                              f"(asked for {n:,}); use a smaller n")
    return out
