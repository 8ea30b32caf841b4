"""Configs: YAML + overrides, and clear errors for unknown keys and bad values before any work."""

from __future__ import annotations

import pytest

from esgrpo.cli import main
from esgrpo.config import EvalConfig, load_config, parse_overrides
from esgrpo.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model:\n  name: smollm2-135m\ndata:\n  tasks: [math, boolq]\n  n_test: 20\n")
    cfg = load_config(EvalConfig, y, parse_overrides(["data.n_test=7", "generation.top_p=0.9"]))
    assert cfg.model.name == "smollm2-135m"
    assert cfg.data.tasks == ["math", "boolq"]
    assert cfg.data.n_test == 7  # the flag wins over the file
    assert cfg.generation.top_p == 0.9
    assert cfg.generation.max_new_tokens == EvalConfig().generation.max_new_tokens


@pytest.mark.parametrize("override, words", [
    ("modle.name=x", ["unknown config key 'modle'", "model"]),
    ("data.taks=math", ["unknown config key 'data.taks'", "tasks"]),
    ("data.tasks=math,poetry", ["data.tasks", "countdown, math, chemistry, boolq"]),
    ("split=dev", ["split", "train, test"]),
    ("generation.top_p=1.5", ["generation.top_p", "(0, 1]"]),
    ("generation.max_new_tokens=lots", ["generation.max_new_tokens", "integer"]),
    ("model.dtype=float8", ["model.dtype", "float32, bfloat16"]),
    ("model.device=tpu", ["model.device", "cuda:N"]),
    ("data.source=web", ["data.source", "synthetic, hub"]),
])
def test_bad_values_name_the_key_and_the_allowed_values(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(EvalConfig, None, parse_overrides([override]))
    for w in words:
        assert w in str(e.value)


def test_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(EvalConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(EvalConfig, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(EvalConfig, lst)


def test_cli_reports_config_errors_without_traceback(capsys, tmp_path):
    code = main(["eval", "tiny", "--tasks", "math,poetry", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "data.tasks" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # failed before any work started


def test_every_config_field_has_help():
    """Every field of every config dataclass in config/schema.py (found by introspection, so a new config
    cannot be forgotten) has a help string, and so does every section."""
    import dataclasses
    import inspect
    import typing

    from esgrpo.config import COMMAND_CONFIGS, schema

    classes = [c for _, c in inspect.getmembers(schema, inspect.isclass)
               if dataclasses.is_dataclass(c) and c.__module__ == schema.__name__]
    assert len(classes) >= 14 and set(COMMAND_CONFIGS) <= set(classes)
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help string"
            if dataclasses.is_dataclass(hints[f.name]):
                assert (hints[f.name].__doc__ or "").strip(), f"section {hints[f.name].__name__} has no docstring"


def _subcommands(parser) -> list[list[str]]:
    """Every runnable subcommand path, e.g. ['models', 'build'], found in the parser itself."""
    import argparse

    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _subcommands(sub)
                out += [[name, *x] for x in inner] if inner else [[name]]
    return out


def test_cli_help_for_every_subcommand_without_duplicate_flags(capsys):
    import re

    from esgrpo.cli import build_parser

    commands = _subcommands(build_parser())
    assert len(commands) == 14 and ["models", "build"] in commands and ["signal"] in commands
    for argv in [[], *commands]:
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: esgrpo"), argv
        for line in out.splitlines():  # one spelling per flag in each help entry (no `--task V, --task V`)
            flags = re.findall(r"(--[\w.-]+)(?: V)?(?:,|$| {2})", line.strip())
            assert len(flags) == len(set(flags)), (argv, line)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--generation.max_new_tokens" in out and "Maximum generated tokens" in out
    assert "--resume, --no-resume" in out  # booleans are plain flags


def test_boolean_fields_are_plain_flags(tmp_path):
    from esgrpo.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "es", "--resume", "--no-es.save_base", "--out", str(tmp_path)])
    cfg = config_from_args(args)
    assert cfg.resume is True and cfg.es.save_base is False


def test_one_parser_for_flags_set_and_files(tmp_path):
    """--key value, --set key=value and the YAML file go through the same parser and coercion."""
    from esgrpo.cli import build_parser, config_from_args

    y = tmp_path / "c.yaml"
    y.write_text("es: {sigma: 0.5, alpha: 0.1}\n")
    args = build_parser().parse_args(["train", "es", "--config", str(y), "--set", "es.alpha=0.25",
                                      "--es.population", "6", "--task", "math"])
    cfg = config_from_args(args)
    assert (cfg.es.sigma, cfg.es.alpha, cfg.es.population, cfg.task) == (0.5, 0.25, 6, "math")
    with pytest.raises(ConfigError, match="es.population"):
        config_from_args(build_parser().parse_args(["train", "es", "--set", "es.population=x"]))
