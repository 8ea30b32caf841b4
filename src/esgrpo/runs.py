"""The run directory: every command that trains or evaluates writes one.

Layout:
    config.yaml      the resolved config (all defaults filled in)
    meta.json        command, versions, start time, host facts
    metrics.jsonl    one JSON object per line, appended (and flushed) as work proceeds
    results.json     the final numbers (written atomically at the end)
    samples.jsonl    example responses (evaluation)
    checkpoints/     Hugging Face model directories (training)

Writes of whole files are atomic (temp file + rename) so an interrupted run never leaves a half
file behind; metrics.jsonl is append-only, so an interrupted run keeps every finished line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from esgrpo.config import dump_yaml
from esgrpo.errors import EsgrpoError


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else (1e308 if x > 0 else -1e308)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        return _jsonable(x.item())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Atomic text write."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete lines of a JSONL file (a torn last line from a crash is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class RunDir:
    """A run directory with append-only metrics and atomic result files."""

    def __init__(self, path: str | Path, config: Any = None, command: str = "",
                 inputs: dict[str, str] | None = None) -> None:
        """`inputs`: identities of what the config alone does not pin (the built model's hash, the data's
        hash). Reopening a directory that holds work made from another config or other inputs is an
        error: reusing or resuming it would silently mix two experiments."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if config is not None:
            text = dump_yaml(config)
            self._check_same(text, inputs or {})
            write_text(self.path / "config.yaml", text)
            if inputs:
                write_json(self.path / "inputs.json", inputs)
        if command and not (self.path / "meta.json").exists():
            import torch
            import transformers

            write_json(self.path / "meta.json", {
                "command": command,
                "argv": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
            })

    def has_work(self) -> bool:
        return any((self.path / f).exists() for f in ("results.json", "metrics.jsonl", "checkpoints", "eval.json"))

    def _check_same(self, config_text: str, inputs: dict[str, str]) -> None:
        if not self.has_work():
            return
        cfg_file, inputs_file = self.path / "config.yaml", self.path / "inputs.json"
        old_text = cfg_file.read_text() if cfg_file.exists() else ""
        if old_text != config_text:
            import difflib

            diff = [ln for ln in difflib.unified_diff(old_text.splitlines(), config_text.splitlines(), lineterm="", n=0)
                    if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
            raise EsgrpoError(f"run directory {self.path} holds results of another config (changed: "
                              f"{'; '.join(diff[:6]) or 'missing config.yaml'}); use another output "
                              "directory or delete this one")
        old_inputs = json.loads(inputs_file.read_text()) if inputs_file.exists() else {}
        changed = sorted(k for k in inputs if old_inputs.get(k) != inputs[k])
        if changed:
            raise EsgrpoError(f"run directory {self.path} was made from other inputs ({', '.join(changed)} "
                              f"changed: {[old_inputs.get(k) for k in changed]} -> {[inputs[k] for k in changed]}); "
                              "use another output directory or delete this one")

    def log(self, row: dict[str, Any], file: str = "metrics.jsonl") -> None:
        """Append one metrics row and flush it to disk."""
        with open(self.path / file, "a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def metrics(self, file: str = "metrics.jsonl") -> list[dict[str, Any]]:
        return read_jsonl(self.path / file)

    def write_results(self, results: dict[str, Any], file: str = "results.json") -> Path:
        write_json(self.path / file, results)
        return self.path / file

    def read_results(self, file: str = "results.json") -> dict[str, Any] | None:
        p = self.path / file
        return json.loads(p.read_text()) if p.exists() else None


def default_run_path(kind: str, label: str, root: str | Path = "runs") -> Path:
    """runs/<kind>-<label>-<YYYYmmdd-HHMMSS>."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[-40:]
    return Path(root) / f"{kind}-{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
