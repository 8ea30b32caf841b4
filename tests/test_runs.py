"""Run directories: resolved config, append-only metrics, atomic results, torn-line tolerance."""

from __future__ import annotations

import json

import yaml

from esgrpo.config import EvalConfig
from esgrpo.runs import RunDir, read_jsonl


def test_run_dir_records(tmp_path):
    with RunDir(tmp_path / "r", EvalConfig(), command="eval") as run:
        run.log({"step": 1, "loss": 0.5})
        run.log({"step": 2, "loss": float("nan")})
        run.log({"step": 3, "loss": float("inf")})
        run.write_results({"accuracy": 0.25})
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["model"]["name"] == "tiny"
    assert [r["step"] for r in run.metrics()] == [1, 2, 3]
    # NaN and inf are stored as null (never as a stand-in such as 1e308): the file stays valid JSON
    assert run.metrics()[1]["loss"] is None and run.metrics()[2]["loss"] is None
    assert json.loads((tmp_path / "r" / "results.json").read_text()) == {"accuracy": 0.25}
    assert json.loads((tmp_path / "r" / "meta.json").read_text())["command"] == "eval"
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_torn_last_line_is_ignored(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]


def test_reopening_a_run_with_another_config_or_inputs_is_refused(tmp_path):
    import dataclasses

    import pytest

    from esgrpo.errors import EsgrpoError

    cfg = EvalConfig()
    with RunDir(tmp_path / "r", cfg, inputs={"model": "tiny-aaa", "data": "d1"}):
        pass
    RunDir(tmp_path / "r", cfg, inputs={"model": "tiny-aaa", "data": "d1"})  # nothing done yet: fine
    with RunDir(tmp_path / "r", cfg, inputs={"model": "tiny-aaa", "data": "d1"}) as run:
        run.write_results({"accuracy": 0.5})
    RunDir(tmp_path / "r", cfg, inputs={"model": "tiny-aaa", "data": "d1"})  # same: reusable
    other = dataclasses.replace(cfg, split="train")
    with pytest.raises(EsgrpoError, match="another config.*split"):
        RunDir(tmp_path / "r", other, inputs={"model": "tiny-aaa", "data": "d1"})
    with pytest.raises(EsgrpoError, match="other inputs.*model"):
        RunDir(tmp_path / "r", cfg, inputs={"model": "tiny-bbb", "data": "d1"})
    assert run.read_results() == {"accuracy": 0.5}  # nothing was overwritten
