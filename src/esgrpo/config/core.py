"""Config machinery: help-carrying dataclass fields, one override parser, validation, identity.

Every config is a dataclass (all of them live in `schema.py`) whose fields carry
`metadata={"help": ...}`, optionally `"check": (predicate, "description")` and `"control": True`.
`load_config(cls, path, overrides)` reads a YAML file, applies dotted `key=value` overrides (from
`--key value` flags, `--set key=value` or code) and validates everything before any work starts:
unknown keys, wrong types, non-finite numbers and out-of-range values raise `ConfigError` naming
the key and what is allowed.

Identity: a run directory remembers the config that made it, and refuses to be reused or resumed
under another one. Control fields (the output directory, whether to resume, the budget a run may
be extended to, how often to checkpoint or measure) steer a run without changing any number it
produces, so they are left out of the identity (`identity`, `identity_changes`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml

from esgrpo.errors import ConfigError, brief

Check = tuple[Callable[[Any], bool], str]


def F(default: Any, help: str, check: Check | None = None, control: bool = False) -> Any:
    """A dataclass field with a help string (shown by `--help`), an optional validity check, and
    `control=True` for run-control fields, which are not part of a run's identity."""
    meta: dict[str, Any] = {"help": help}
    if check is not None:
        meta["check"] = check
    if control:
        meta["control"] = True
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def sub(cls: type, control: bool = False) -> Any:
    """A nested config section with its defaults (control=True: the whole section is run control)."""
    meta: dict[str, Any] = {"help": (cls.__doc__ or cls.__name__).strip().splitlines()[0]}
    if control:
        meta["control"] = True
    return field(default_factory=cls, metadata=meta)


POSITIVE: Check = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Check = (lambda v: v >= 0, ">= 0")
PROBABILITY: Check = (lambda v: 0 < v <= 1, "in (0, 1]")


# ----------------------------------------------------------------------------------------------
# Introspection


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (for YAML/JSON run records)."""
    return dataclasses.asdict(cfg)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def config_fields(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Dotted key -> dataclass Field for every leaf field."""
    out: dict[str, dataclasses.Field] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _is_section(hints[f.name]):
            out.update(config_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


def field_help(cls: type) -> dict[str, str]:
    """Dotted key -> help string for every leaf field (used by the CLI and docs)."""
    return {k: f.metadata.get("help", "") for k, f in config_fields(cls).items()}


def leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type hint for every leaf field."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if _is_section(t):
            out.update(leaf_types(t, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = t
    return out


# ----------------------------------------------------------------------------------------------
# Building and validating


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build and validate `cls` from a (possibly partial) dict; unknown keys are errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key {brief(where + str(key))}; allowed keys here: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        t = hints[f.name]
        key = where + f.name
        if _is_section(t):
            if not isinstance(data[f.name], dict):
                raise ConfigError(f"config key '{key}' must be a mapping of its fields, got {brief(data[f.name])}")
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
        if _is_section(hints[f.name]):
            validate(value, f"{where}{f.name}.")
            continue
        coerce(value, hints[f.name], where + f.name)
        check = f.metadata.get("check")
        if check is not None and not check[0](value):
            raise ConfigError(f"config key '{where}{f.name}' = {brief(value)} is invalid; allowed: {check[1]}")
    post = getattr(cfg, "check", None)
    if callable(post):
        post()


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from YAML or a CLI string) to type `tp`, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' = {brief(value)} is not allowed; choose one of: "
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
        raise ConfigError(f"config key '{key}' = {brief(value)} does not fit type {tp}")
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if not value.startswith("[") else _yaml_value(value, key)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {brief(value)}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(value, key) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {brief(value)}")
        return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config key '{key}' must be true or false, got {brief(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be an integer, got {brief(value)}")
        if isinstance(value, int):
            return value
        number = _number(value)
        if number is not None and math.isfinite(number) and number.is_integer():
            return int(number)
        _bad(key, value, "an integer")
    if tp is float:
        number = None if isinstance(value, bool) else _number(value)
        if number is None:
            _bad(key, value, "a number")
        if not math.isfinite(number):
            _bad(key, value, "a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        _bad(key, value, "a string")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _yaml_value(text: str, key: str) -> Any:
    return safe_yaml(text, f"config key '{key}': {brief(text)}")


# A config is a few dozen values: these bounds refuse a "billion laughs" alias bomb (nested anchors that
# expand to 9^9 strings) and pathological nesting before anything is built from the document.
YAML_MAX_VALUES = 100_000
YAML_MAX_DEPTH = 64


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with bounds: at most YAML_MAX_VALUES values once aliases are expanded and at most
    YAML_MAX_DEPTH levels of nesting; anything else is a one-line ConfigError starting with `where`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {brief(' '.join(str(e).split()))}") from None
    except RecursionError:  # the parser itself recurses once per level
        raise ConfigError(f"{where} is nested more than {YAML_MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _check_yaml_size(root: yaml.Node, where: str) -> None:
    """Count the values of a composed document as if every alias were expanded (memoized per node, so an
    alias bomb is counted without being expanded) and measure its depth; refuse past the bounds."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > YAML_MAX_DEPTH:
            raise ConfigError(f"{where} is nested more than {YAML_MAX_DEPTH} levels deep")
        if id(node) in sizes:
            continue
        children = _yaml_children(node)
        if done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > YAML_MAX_VALUES:
                raise ConfigError(f"{where}: its YAML aliases expand to more than {YAML_MAX_VALUES:,} values "
                                  "(an alias bomb?); write the values out")
            continue
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _bad(key: str, value: Any, what: str) -> Any:
    raise ConfigError(f"config key '{key}' must be {what}, got {brief(value)}")


# ----------------------------------------------------------------------------------------------
# Overrides and files: the one parser for YAML and dotted keys


def parse_overrides(pairs: Iterable[str | tuple[str, Any]]) -> dict[str, Any]:
    """['a.b=1', ('c', 'x')] -> {'a': {'b': '1'}, 'c': 'x'} (strings stay strings; coerce() types them).

    The one place that turns dotted keys into a nested mapping: `--set key=value`, every `--key value`
    flag and positional arguments of the CLI all come through here."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if isinstance(pair, str):
            if "=" not in pair:
                raise ConfigError(f"override {brief(pair)} must look like key=value (e.g. es.sigma=0.01)")
            key, value = pair.split("=", 1)
        else:
            key, value = pair
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override key {brief(key)} is empty or has an empty part")
        d = out
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"config key '{key}': '{p}' is set as a value and used as a section")
        d[parts[-1]] = value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: `over` wins."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping; every failure is a one-line ConfigError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file '{p}' does not exist")
    if p.is_dir():
        raise ConfigError(f"config file '{p}' is a directory, not a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{p}' is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"config file '{p}' cannot be read: {e.strerror}") from None
    data = safe_yaml(text, f"config file '{p}'") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of config keys")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """YAML file (optional) + overrides -> validated config of type `cls`."""
    data = read_yaml(path) if path else {}
    where = f" (in {path})" if path else ""
    try:
        return from_dict(cls, merge(data, overrides or {}))
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------------------------
# Identity: what a run's numbers depend on


def identity(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every field that is not run control: equal identities give equal numbers."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("control"):
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(identity(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = copy.deepcopy(value)
    return out


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every dotted key whose value differs (a key on one side only included)."""
    missing = "(unset)"
    return [f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}"
            for k in sorted(set(old) | set(new)) if old.get(k, missing) != new.get(k, missing)]
