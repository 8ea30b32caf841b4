"""Run records: the run directory every command writes, and the one JSON record store.

Layout of a run directory:
    config.yaml      the resolved config (all defaults filled in)
    inputs.json      what the config alone does not pin (the built model's hash, a hash of the data)
    meta.json        command, versions, start time, host facts
    metrics.jsonl    one JSON object per line, appended (and flushed) as work proceeds
    results.json     the final numbers (written atomically at the end)
    samples.jsonl    example responses (evaluation)
    checkpoints/     Hugging Face model directories (training)
    .lock            held by the process working in the directory

Rules that keep results honest:
- identity: a directory that holds work remembers the config and inputs that made it; reopening it
  with another config (control fields aside, see config.core.identity) or other inputs is an error
  naming the changed keys, so two experiments are never mixed or mislabelled;
- nothing before the checks: config.yaml, inputs.json and meta.json are written only after every
  check passed, and a directory this process created is removed again if the work fails before
  producing anything;
- one process at a time: the directory is locked while open; a second process gets a clear error;
- whole files are written atomically (temp file + rename); metrics.jsonl is append-only, so an
  interrupted run keeps every finished line; non-finite numbers are written as null, never as
  stand-in values.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from esgrpo.config import dump_yaml, from_dict, identity, identity_changes, read_yaml
from esgrpo.errors import ConfigError, EsgrpoError, brief

RECORD_FILES = ("config.yaml", "inputs.json", "meta.json", ".lock")  # what is not "work"


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        return _jsonable(x.item())
    if isinstance(x, Path):
        return str(x)
    return x


def write_text(path: Path, text: str) -> None:
    """Atomic text write."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write."""
    write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file; a damaged one is an EsgrpoError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:
        raise EsgrpoError(f"{path} is not valid JSON ({e}); it was damaged or written by something else") from None


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


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one row and flush it to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(_jsonable(row), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------
# The JSON record store


class JsonRecord:
    """A JSON file of nested results, rewritten atomically after every `put` (analysis.json,
    sequence.json, eval.json). With `header`, the file belongs to those settings: opening it with other
    settings is an error naming the changed keys (delete the file to recompute)."""

    def __init__(self, path: Path, header: dict[str, Any] | None = None, what: str = "settings") -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = read_json(self.path) if self.path.exists() else {}
        if header is not None:
            old = self.data.get("header")
            if old is not None and old != header:
                changed = identity_changes(old, header)
                raise ConfigError(f"{self.path} holds results of other {what} (changed: {'; '.join(changed[:8])}); "
                                  f"delete it to recompute, or use another output directory")
            self.data["header"] = header

    def has(self, *keys: str) -> bool:
        d: Any = self.data
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return False
            d = d[k]
        return True

    def get(self, *keys: str, default: Any = None) -> Any:
        return self.at(*keys) if self.has(*keys) else default

    def at(self, *keys: str) -> Any:
        d: Any = self.data
        for k in keys:
            d = d[k]
        return d

    def put(self, value: Any, *keys: str) -> None:
        d = self.data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


# ----------------------------------------------------------------------------------------------
# The run directory


_HELD: dict[Path, tuple[int, int]] = {}  # lock file -> (fd, depth): one process may reopen its own directory


def _lock(path: Path) -> None:
    lock = path / ".lock"
    key = lock.resolve()
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise EsgrpoError(f"run directory {path} is in use by another esgrpo process (pid {holder}); wait for it "
                          "to finish or use another output directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[key] = (fd, 1)


def _unlock(path: Path) -> None:
    key = (path / ".lock").resolve()
    fd, depth = _HELD.get(key, (-1, 0))
    if depth > 1:
        _HELD[key] = (fd, depth - 1)
    elif depth == 1:
        del _HELD[key]
        os.close(fd)  # closing the last descriptor releases the flock


def check_writable_dir(path: Path) -> None:
    """A one-line error when `path` cannot be a directory we write into (a file on the way, read-only)."""
    for p in [path, *path.parents]:
        if p.exists():
            if not p.is_dir():
                raise EsgrpoError(f"cannot use {path} as an output directory: {p} is a file")
            if not os.access(p, os.W_OK):
                raise EsgrpoError(f"cannot write into {p} (read-only or no permission)")
            return


class RunDir:
    """A run directory: identity-checked, locked while open, append-only metrics, atomic result files.

    Read-only use: `RunDir(path).read_results()`. Writing work: `with RunDir(path, config, command,
    inputs) as run: ...` checks the identity, takes the lock, then writes config.yaml, inputs.json and
    meta.json; if the body fails before the directory holds any work and the directory is new, it is
    removed again. `inputs`: identities of what the config alone does not pin (the built model's hash,
    the data's hash).
    """

    def __init__(self, path: str | Path, config: Any = None, command: str = "",
                 inputs: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.config = config
        self.command = command
        self.inputs = inputs or {}
        self.created = False
        self.tracker: Any = None  # tracking.Tracker fed with every metrics row (set by the run, optional)
        if config is not None:
            check_writable_dir(self.path)
            if self.path.is_dir():
                self.check_same(config, self.inputs)

    # -- opening ------------------------------------------------------------------------------

    def __enter__(self) -> RunDir:
        if self.config is None:
            return self
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            _lock(self.path)
        except OSError as e:
            raise EsgrpoError(f"cannot create run directory {self.path}: {os_reason(e)}") from None
        try:
            self.check_same(self.config, self.inputs)  # again under the lock: another process may have written
            write_text(self.path / "config.yaml", dump_yaml(self.config))
            if self.inputs:
                write_json(self.path / "inputs.json", self.inputs)
            if self.command and not (self.path / "meta.json").exists():
                write_json(self.path / "meta.json", _meta(self.command))
        except BaseException:
            self._close(failed=True)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._close(failed=exc_type is not None)

    def _close(self, failed: bool) -> None:
        if self.config is None:
            return
        _unlock(self.path)
        if failed and self.created and not self.has_work() and (self.path / ".lock").resolve() not in _HELD:
            shutil.rmtree(self.path, ignore_errors=True)

    # -- identity -----------------------------------------------------------------------------

    def has_work(self) -> bool:
        """Whether the directory holds anything besides its config records."""
        return self.path.is_dir() and any(p.name not in RECORD_FILES and not p.name.endswith(".tmp")
                                          for p in self.path.iterdir())

    def saved_config(self, cls: type) -> Any:
        """The config this directory was made with, as `cls` (or an error saying what it is instead)."""
        path = self.path / "config.yaml"
        if not path.exists():
            raise EsgrpoError(f"{self.path} has no config.yaml: not an esgrpo run directory")
        try:
            return from_dict(cls, read_yaml(path))
        except ConfigError as e:
            raise EsgrpoError(f"{path} is not a {cls.__name__} ({e})") from None

    def check_same(self, config: Any, inputs: dict[str, str]) -> None:
        """Refuse to reuse or resume a directory whose work came from another config or other inputs."""
        if not self.has_work():
            return
        try:
            old = identity(self.saved_config(type(config)))
        except EsgrpoError as e:
            raise EsgrpoError(f"run directory {self.path} holds results this config cannot be checked against "
                              f"({e}); use another output directory") from None
        changed = identity_changes(old, identity(config))
        if changed:
            raise EsgrpoError(f"run directory {self.path} holds results of another config (changed: "
                              f"{'; '.join(changed[:8])}); use another output directory or delete this one")
        inputs_file = self.path / "inputs.json"
        old_inputs = read_json(inputs_file) if inputs_file.exists() else {}
        diff = sorted(k for k in inputs if k in old_inputs and old_inputs[k] != inputs[k])
        if diff:
            raise EsgrpoError(f"run directory {self.path} was made from other inputs ({', '.join(diff)} "
                              f"changed: {[old_inputs[k] for k in diff]} -> {[inputs[k] for k in diff]}); "
                              "use another output directory or delete this one")

    # -- records ------------------------------------------------------------------------------

    def log(self, row: dict[str, Any], file: str = "metrics.jsonl") -> None:
        """Append one metrics row and flush it to disk (and pass it to the tracker, if any)."""
        append_jsonl(self.path / file, row)
        if self.tracker is not None and file == "metrics.jsonl":
            self.tracker.log(row)

    def metrics(self, file: str = "metrics.jsonl") -> list[dict[str, Any]]:
        return read_jsonl(self.path / file)

    def write_results(self, results: dict[str, Any], file: str = "results.json") -> Path:
        write_json(self.path / file, results)
        return self.path / file

    def read_results(self, file: str = "results.json") -> dict[str, Any] | None:
        p = self.path / file
        return read_json(p) if p.exists() else None

    def record(self, file: str, header: dict[str, Any] | None = None, what: str = "settings") -> JsonRecord:
        return JsonRecord(self.path / file, header, what)


def _meta(command: str) -> dict[str, Any]:
    import torch
    import transformers

    return {"command": command, "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "aten_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def default_run_path(kind: str, label: str, root: str | Path = "runs") -> Path:
    """runs/<kind>-<label>-<YYYYmmdd-HHMMSS>."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[-40:]
    return Path(root) / f"{kind}-{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


def os_reason(e: OSError) -> str:
    """Why a file operation failed, in words."""
    return {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}.get(
        e.errno, e.strerror or str(e))


_WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO, errno.EPERM)


def disk_error(e: OSError, path: Path | str) -> EsgrpoError:
    """One line for an OSError (full disk, read-only file system, permissions; a path the file system refuses).
    The path is echoed cut short: a path can be as long as the user made it."""
    where = brief(str(getattr(e, "filename", None) or path))
    if e.errno in _WRITE_ERRORS:
        return EsgrpoError(f"cannot write {where}: {os_reason(e)}; finished work is on disk and a rerun resumes "
                           "from the last checkpoint")
    return EsgrpoError(f"file system error on {where}: {os_reason(e)}")
