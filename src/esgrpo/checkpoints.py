"""Checkpoints: the one reader of safetensors weights, and trainer checkpoints that resume exactly.

A checkpoint is a Hugging Face model directory holding one or more `*.safetensors` files (a sharded
one also has `model.safetensors.index.json`), or a single `.safetensors` file. `CheckpointTensors`
reads them lazily (memory-mapped), one tensor at a time, for the trainers (`load_weights`), the
analyses and replay alike; a name stored twice, a missing shard or a damaged file is an error that
names the file.

Trainer checkpoints inside a run directory:
    <run>/checkpoints/step-000020/   model (safetensors, config, tokenizer) + trainer_state.json
                                     (+ optimizer.pt, scheduler.pt, master.pt for GRPO)
    <run>/checkpoints/final/         the last weights
A checkpoint is written into a temp directory and renamed, so a crash never leaves a partial one;
`resume_candidates` lists the usable ones newest first, so a damaged latest checkpoint falls back
to the one before it. `prune_checkpoints` keeps the `checkpoint_keep` newest periodic ones (and the pinned
steps); a periodic checkpoint due at the run's last step is not written, `final` holds the same weights.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from esgrpo.errors import EsgrpoError
from esgrpo.runs import read_jsonl, write_json, write_text

if TYPE_CHECKING:
    from esgrpo.config import ModelConfig
    from esgrpo.models.policy import Policy

PathLike = str | Path


class CheckpointError(EsgrpoError):
    """A checkpoint is missing, damaged or does not fit the model."""


# ----------------------------------------------------------------------------------------------
# Reading weights


def safetensors_files(ckpt: PathLike) -> list[Path]:
    """The weight files of a checkpoint directory (or the file itself)."""
    ckpt = Path(ckpt)
    if ckpt.is_file():
        return [ckpt]
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index ({type(e).__name__}: {e})") from None
        files = [ckpt / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that do not exist: {', '.join(missing)}")
        return files
    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors file in {ckpt}")
    return files


def _is_float(dtype: str) -> bool:
    """Whether a safetensors dtype string ("F32", "BF16", "I64", ...) is a floating-point type."""
    return dtype.startswith("F") or dtype == "BF16"


class CheckpointTensors:
    """Name-addressed, lazy read access to every tensor of a checkpoint (all its safetensors files).

        with CheckpointTensors(path) as ckpt:
            for name in ckpt.names(): ckpt.get(name)

    `get(name, *aliases)` returns the tensor (in its stored dtype) stored under the first of the names
    present. A damaged file (truncated, not safetensors) raises CheckpointError naming it.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._files = safetensors_files(self.path)
        self._stack = ExitStack()
        self._handles: dict[str, Any] = {}
        self._where: dict[str, Path] = {}

    def __enter__(self) -> CheckpointTensors:
        from safetensors import safe_open

        try:
            for file in self._files:
                try:
                    handle = self._stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
                except Exception as e:  # SafetensorError, OSError: truncated or not a safetensors file
                    raise CheckpointError(f"cannot read {file}: {' '.join(str(e).split()) or type(e).__name__} "
                                          "(truncated or not a safetensors file?)") from None
                for name in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                    if name in self._handles:
                        raise CheckpointError(f"tensor {name!r} is stored twice in {self.path}: "
                                              f"{self._where[name]} and {file}")
                    self._handles[name] = handle
                    self._where[name] = file
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._handles = {}

    def __contains__(self, name: str) -> bool:
        return name in self._handles

    def names(self) -> list[str]:
        """All stored tensor names, sorted."""
        return sorted(self._handles)

    def is_float(self, name: str) -> bool:
        return _is_float(self._handles[name].get_slice(name).get_dtype())

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[name].get_slice(name).get_shape())

    def get(self, name: str, *aliases: str) -> torch.Tensor:
        for n in (name, *aliases):
            if n in self._handles:
                try:
                    return self._handles[n].get_tensor(n)
                except Exception as e:
                    raise CheckpointError(f"cannot read tensor {n!r} from {self._where[n]}: {e}") from None
        raise KeyError(f"checkpoint {self.path} holds none of {[name, *aliases]}")

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names():
            yield name, self.get(name)


def read_state_dict(ckpt: PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint in memory (small models; analyses stream with CheckpointTensors)."""
    with CheckpointTensors(ckpt) as c:
        return dict(c.items())


def same_weights(a: PathLike, b: PathLike) -> bool:
    """True if two checkpoints hold bit-identical tensors under the same names."""
    with CheckpointTensors(a) as ca, CheckpointTensors(b) as cb:
        if ca.names() != cb.names():
            return False
        for name in ca.names():
            x, y = ca.get(name), cb.get(name)
            if x.dtype != y.dtype or not torch.equal(x, y):
                return False
    return True


def base_checkpoint(model_path: str) -> Path:
    """The base model's local directory (a hub id is looked up in the local HF cache only)."""
    p = Path(model_path)
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_path, local_files_only=True))
    except Exception as e:
        raise CheckpointError(f"model {model_path!r} is not a local directory and not in the local Hugging "
                              f"Face cache ({type(e).__name__})") from None


def checkpoint_policy(path: PathLike, cfg: ModelConfig, engine: str = "native") -> Policy:
    """Load a checkpoint directory as a Policy (same device/dtype rules as the base model), generating through
    `engine` (generation.engine)."""
    from esgrpo.models import with_engine
    from esgrpo.models.hub import load_hf
    from esgrpo.models.policy import Policy

    model, tok = load_hf(str(path), dtype=cfg.dtype, device=cfg.device)
    return with_engine(Policy(model, tok, name=str(path)), engine, str(path))


def load_weights(policy: Policy, ckpt: PathLike) -> None:
    """Copy a checkpoint's weights into the policy's tensors in place (tied weights handled)."""
    state = read_state_dict(ckpt)
    missing, unexpected = policy.model.load_state_dict(state, strict=False)
    tied = set(getattr(policy.model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt} does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


# ----------------------------------------------------------------------------------------------
# Trainer checkpoints


def save_checkpoint(policy: Policy, run_path: Path, name: str, state: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Save weights + tokenizer + trainer state (+ extra torch objects, e.g. optimizer) atomically."""
    root = Path(run_path) / "checkpoints"
    final = root / name
    tmp = root / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(tmp)
    for key, obj in (extra or {}).items():
        torch.save(obj, tmp / f"{key}.pt")
    write_json(tmp / "trainer_state.json", state)  # last: a directory with it is complete
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def prune_checkpoints(run_path: Path, keep: int, pinned: Iterable[int] = ()) -> list[Path]:
    """Delete all but the `keep` furthest periodic checkpoints (step-*) of a run; `keep` 0 keeps them all.
    Never deleted: `final`, the pinned steps (ES: the base, step-000000, and a study's ES-short step) and
    anything that is not a complete step-N directory. Returns what was deleted.

    A SmolLM2 GRPO checkpoint is 1.6 GB (weights and AdamW moments): kept all, a 10-step run fills 9 GB."""
    if keep <= 0:
        return []
    root = Path(run_path) / "checkpoints"
    pinned = set(pinned)
    steps = sorted((int(d.name[5:]), d) for d in root.glob("step-*")
                   if re.fullmatch(r"step-\d+", d.name) and d.is_dir() and _state(d) is not None)
    loose = [d for step, d in steps if step not in pinned]
    gone = loose[:-keep]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone


def _state(d: Path) -> dict[str, Any] | None:
    try:
        return json.loads((d / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None


def resume_candidates(run_path: Path, key: str, require: tuple[str, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """Usable checkpoints of a run, furthest first by trainer_state[key] ("iteration"/"step"): every
    step-* directory and `final` (a finished run resumed with a larger budget continues from there).
    `require`: files a usable checkpoint must hold (e.g. optimizer.pt). The caller tries them in order,
    so a damaged latest checkpoint falls back to the previous one."""
    root = Path(run_path) / "checkpoints"
    found = []
    for d in [*root.glob("step-*"), root / "final"]:
        if not (re.fullmatch(r"step-\d+", d.name) or d.name == "final") or not d.is_dir():
            continue
        state = _state(d)
        if state is not None and key in state and all((d / f).exists() for f in require):
            found.append((d, state))
    return sorted(found, key=lambda c: (c[1][key], c[0].name == "final"), reverse=True)


def load_resumable(run_path: Path, key: str, load: Any, require: tuple[str, ...] = (),
                   log: Any = None) -> tuple[Path, dict[str, Any]] | None:
    """Load the furthest usable checkpoint with `load(ckpt_dir, state)`; a checkpoint that fails to
    load (truncated weights, damaged optimizer state) is reported and the previous one is tried.
    Returns (checkpoint, state) or None when no checkpoint loads."""
    for ckpt, state in resume_candidates(run_path, key, require):
        try:
            load(ckpt, state)
            return ckpt, state
        except (CheckpointError, OSError, RuntimeError, EOFError, ValueError, KeyError) as e:
            if log is not None:
                log(f"checkpoint {ckpt} is unusable ({' '.join(str(e).split())[:200]}); trying the one before")
    return None


def truncate_jsonl(path: Path, key: str, last: int) -> None:
    """Keep only rows with row[key] <= last: rows a crash left past the resume point are redone."""
    path = Path(path)
    if not path.exists():
        return
    rows = read_jsonl(path)
    keep = [r for r in rows if r.get(key, 0) <= last]
    if len(keep) != len(rows) or path.read_text().count("\n") != len(rows):
        write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
