"""Checkpoints: Hugging Face directories plus the trainer state needed to resume exactly.

    <run>/checkpoints/step-000020/   model (safetensors, config, tokenizer) + trainer_state.json
                                     (+ optimizer.pt for GRPO)
    <run>/checkpoints/final/         the last weights

A checkpoint is written into a temp directory and renamed, so a crash never leaves a partial one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from esgrpo.models.policy import Policy
from esgrpo.runs import read_jsonl, write_json, write_text


def save_checkpoint(policy: Policy, run_path: Path, name: str, state: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Save weights + tokenizer + trainer state (+ extra torch objects, e.g. optimizer) atomically."""
    root = Path(run_path) / "checkpoints"
    final = root / name
    tmp = root / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(tmp)
    write_json(tmp / "trainer_state.json", state)
    for key, obj in (extra or {}).items():
        torch.save(obj, tmp / f"{key}.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def latest_checkpoint(run_path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The highest-step finished checkpoint and its trainer state, or None."""
    root = Path(run_path) / "checkpoints"
    best = None
    for d in root.glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", d.name)
        if m and (d / "trainer_state.json").exists() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), d)
    if best is None:
        return None
    return best[1], json.loads((best[1] / "trainer_state.json").read_text())


def resume_point(run_path: Path, key: str, require: tuple[str, ...] = ()) -> tuple[Path, dict[str, Any]] | None:
    """The furthest checkpoint by trainer_state[key] ("iteration"/"step"): the latest step-* one, or
    `final` if further (a finished run resumed with a larger budget continues from there).
    `require`: files a usable checkpoint must hold (e.g. optimizer.pt)."""
    candidates = []
    latest = latest_checkpoint(run_path)
    if latest is not None:
        candidates.append(latest)
    final = Path(run_path) / "checkpoints" / "final"
    if (final / "trainer_state.json").exists() and all((final / f).exists() for f in require):
        candidates.append((final, json.loads((final / "trainer_state.json").read_text())))
    return max(candidates, key=lambda c: c[1].get(key, -1)) if candidates else None


def truncate_jsonl(path: Path, key: str, last: int) -> None:
    """Keep only rows with row[key] <= last: rows a crash left past the resume point are redone."""
    path = Path(path)
    if not path.exists():
        return
    rows = read_jsonl(path)
    keep = [r for r in rows if r.get(key, 0) <= last]
    if len(keep) != len(rows) or path.read_text().count("\n") != len(rows):
        write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def load_weights(policy: Policy, ckpt: Path) -> None:
    """Copy a checkpoint's weights into the policy's tensors in place (tied weights handled)."""
    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = policy.model.load_state_dict(state, strict=False)
    tied = set(getattr(policy.model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
