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
    import dataclasses

    from esgrpo.config import BuildConfig, StudyConfig, field_help

    for cls in (EvalConfig, BuildConfig, StudyConfig):
        for key, h in field_help(cls).items():
            assert h.strip(), f"{cls.__name__}.{key} has no help string"
    assert dataclasses.is_dataclass(EvalConfig)


def test_cli_help_for_every_subcommand(capsys):
    for argv in (["--help"], ["study", "--help"], ["eval", "--help"], ["models", "build", "--help"],
                 ["tasks", "show", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--generation.max_new_tokens" in out and "Maximum generated tokens" in out
