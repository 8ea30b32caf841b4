"""The bad-input catalogue: what an adversarial user tried, each a one-line error with a non-zero exit
and nothing left behind.

Every case in CASES runs the real command line in-process and checks: exit status 2, the last line on
stderr is `esgrpo: error: ...` naming the problem (and is the only line of the error), no traceback,
and the output directory the command was given does not exist afterwards. The cases that need a
prepared run directory or a second process follow the table.
"""

from __future__ import annotations

import errno
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from esgrpo.cli import main

SMALL = ["--data.n_train", "8", "--data.n_test", "8", "--generation.max_new_tokens", "8"]
ES_SMALL = [*SMALL, "--es.population", "4", "--es.max_new_tokens", "8", "--es.checkpoint_every", "1"]
GRPO_SMALL = [*SMALL, "--grpo.prompts_per_step", "2", "--grpo.group_size", "4", "--grpo.max_new_tokens", "8",
              "--grpo.checkpoint_every", "1"]


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list[str]]  # tmp_path -> argv; the output directory is always tmp_path / "out"
    expect: str  # a fragment the one-line error must contain


def _file(tmp: Path, name: str, data: bytes | str) -> str:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


def _jsonl(tmp: Path, name: str, rows: list[dict]) -> str:
    return _file(tmp, name, "".join(json.dumps(r) + "\n" for r in rows))


def _out(t: Path) -> list[str]:
    return ["--out", str(t / "out")]


def _hub_eval(task: str, path: str, n: int = 4) -> list[str]:
    return ["eval", "tiny", "--tasks", task, "--source", "hub", "--n", str(n), "--set",
            f"data.data_paths={{{task}: {path}}}"]


CASES = [
    # config files and values
    Case("config_not_utf8", lambda t: ["eval", "tiny", "--config", _file(t, "c.yaml", b"model:\n  name: \xff\xfe\n"),
                                       *_out(t)], "not UTF-8"),
    Case("config_is_a_directory", lambda t: ["eval", "tiny", "--config", str(t), *_out(t)], "is a directory"),
    Case("config_missing", lambda t: ["eval", "tiny", "--config", str(t / "nope.yaml"), *_out(t)], "does not exist"),
    Case("config_invalid_yaml", lambda t: ["eval", "--config", _file(t, "c.yaml", "a: [1,\n"), *_out(t)],
         "not valid YAML"),
    Case("config_not_a_mapping", lambda t: ["eval", "--config", _file(t, "c.yaml", "- 1\n- 2\n"), *_out(t)],
         "must hold a mapping"),
    Case("unknown_key", lambda t: ["train", "es", "--set", "es.sgma=0.1", *_out(t)], "unknown config key 'es.sgma'"),
    Case("unknown_task", lambda t: ["train", "es", "--task", "chess", *_out(t)], "countdown, math, chemistry, boolq"),
    Case("bad_literal", lambda t: ["train", "es", "--es.decoding", "beam", *_out(t)], "greedy, sample"),
    Case("not_a_number", lambda t: ["train", "es", "--es.sigma", "abc", *_out(t)], "es.sigma"),
    Case("grpo_lr_inf", lambda t: ["train", "grpo", "--grpo.lr", "inf", *_out(t)], "grpo.lr' must be a finite number"),
    Case("es_alpha_nan", lambda t: ["train", "es", "--es.alpha", "nan", *_out(t)], "es.alpha' must be a finite"),
    Case("es_sigma_inf", lambda t: ["train", "es", "--es.sigma", "inf", *_out(t)], "es.sigma"),
    Case("es_sigma_zero", lambda t: ["train", "es", "--es.sigma", "0", *_out(t)], "es.sigma' = 0.0 is invalid"),
    Case("es_population_one", lambda t: ["train", "es", "--es.population", "1", *_out(t)], "es.population"),
    Case("no_budget", lambda t: ["train", "es", "--es.iterations", "0", *_out(t)], "es.iterations or es.max_rollouts"),
    Case("grpo_group_of_one", lambda t: ["train", "grpo", "--grpo.group_size", "1", *_out(t)], "grpo.group_size"),
    Case("negative_threads", lambda t: ["eval", "tiny", "--model.threads", "-1", *_out(t)], "model.threads"),
    Case("bad_device", lambda t: ["eval", "tiny", "--model.device", "tpu", *_out(t)], "model.device"),
    Case("repeated_tasks", lambda t: ["eval", "tiny", "--tasks", "math,math", *_out(t)], "without repeats"),
    Case("set_without_equals", lambda t: ["eval", "tiny", "--set", "es.sigma", *_out(t)], "key=value"),
    Case("set_value_as_section", lambda t: ["eval", "tiny", "--set", "split.x=1", *_out(t)], "split"),
    # sizes checked before generating (the synthetic generators have finite pools)
    Case("n_train_beyond_the_pool", lambda t: ["train", "es", "--task", "math", "--data.n_train", "100000000",
                                               *_out(t)], "distinct train instances"),
    Case("eval_n_beyond_the_pool", lambda t: ["eval", "tiny", "--tasks", "countdown", "--n", "1000000", *_out(t)],
         "distinct test instances"),
    Case("es_batch_larger_than_train_set", lambda t: ["train", "es", *ES_SMALL, "--es.batch_size", "9", *_out(t)],
         "es.batch_size = 9 exceeds the 8 training examples"),
    # hub data in local files
    Case("hub_chemistry_file_too_small", lambda t: [*_hub_eval("chemistry", _jsonl(t, "c.jsonl", [
        {"question": "q?", "choices": {"text": ["a", "b", "c", "d"], "label": list("ABCD")}, "answerKey": "A",
         "type": "mcq-4-choices", "domain": "Chemistry"}] * 5)), *_out(t)], "test split is empty"),
    Case("hub_countdown_splits_overlap", lambda t: [*_hub_eval("countdown", _jsonl(t, "c.jsonl", [
        {"target": 6, "nums": [1, 2, 3]}] * 300)), *_out(t)], "would overlap"),
    Case("hub_countdown_non_numeric_nums", lambda t: [*_hub_eval("countdown", _jsonl(t, "c.jsonl", [
        {"target": 6, "nums": "[1, 2, \"x\"]"}] * 2300), n=1), *_out(t)], "row 300: nums"),
    Case("hub_boolq_label_maybe", lambda t: [*_hub_eval("boolq", _jsonl(t, "b.jsonl", [
        {"question": "is it", "answer": "maybe", "passage": "p"}] * 3)), *_out(t)], "row 0: answer 'maybe'"),
    Case("hub_chemistry_bad_answer_key", lambda t: [*_hub_eval("chemistry", _jsonl(t, "c.jsonl", [
        {"question": f"q{i}?", "choices": {"text": ["a", "b", "c", "d"], "label": list("ABCD")}, "answerKey": "E",
         "type": "mcq-4-choices", "domain": "Chemistry"} for i in range(210)])), *_out(t)], "answerKey 'E'"),
    Case("hub_file_missing", lambda t: [*_hub_eval("math", str(t / "nope.jsonl")), *_out(t)], "data file not found"),
    Case("hub_single_file_shared_by_train_and_test", lambda t: [
        "train", "grpo", "--task", "boolq", "--data.source", "hub", "--set", "data.data_paths={boolq: " + _jsonl(
            t, "b.jsonl", [{"question": f"q{i}", "answer": True, "passage": "p"} for i in range(20)]) + "}",
        *SMALL, *_out(t)], "also appear in the train split"),
    # models
    Case("eval_bad_model", lambda t: ["eval", str(t / "no-model"), "--tasks", "math", "--n", "2", *_out(t)],
         "does not exist"),
    Case("out_under_a_file", lambda t: ["eval", "tiny", "--n", "2", "--out", _file(t, "f", "x") + "/sub"],
         "is a file"),
    # analyses and replay on the wrong things
    Case("analyze_truncated_safetensors",
         lambda t: ["analyze", "norms", str(_truncated(t, "a")), str(_truncated(t, "b"))],
         "truncated or not a safetensors file"),
    Case("analyze_wrong_number_of_paths", lambda t: ["analyze", "cosine", str(t)], "takes 3 checkpoint paths"),
    Case("replay_missing_directory", lambda t: ["replay", str(t / "nope")], "does not exist"),
    Case("replay_eval_directory", lambda t: ["replay", str(_dir(t, "ev", ["results.json"]))],
         "only ES runs can be replayed"),
    Case("replay_grpo_directory", lambda t: ["replay", str(_dir(t, "gr", ["checkpoints/final/x"]))],
         "it is a GRPO run"),
    Case("replay_without_base_checkpoint", lambda t: ["replay", str(_dir(t, "es", ["updates.jsonl"]))],
         "--base"),
    Case("replay_row_missing_keys", lambda t: ["replay", str(_es_dir_with_rows(t, [{"iteration": 1, "seeds": [1]}]))],
         "line 1: missing signs, coefs"),
    Case("replay_upto_negative", lambda t: ["replay", str(_es_dir_with_rows(t, [])), "--upto", "-1"],
         "--upto must be >= 0"),
    Case("analyze_study_on_a_training_run", lambda t: ["analyze", "study", str(_train_dir(t))],
         "training run directory, not a study"),
    Case("report_on_a_training_run", lambda t: ["report", str(_train_dir(t))], "training run directory, not a study"),
    Case("report_on_nothing", lambda t: ["report", str(t / "nope")], "does not exist"),
    Case("tasks_show_unknown", lambda t: ["tasks", "show", "chess"], "unknown task 'chess'"),
    Case("theory_predict_incomplete", lambda t: ["theory", "predict", "--alpha", "0.01"], "needs --alpha, --N"),
    Case("study_only_unknown_cell", lambda t: ["study", "--only", "math:adam", *_out(t)], "TASK:METHOD"),
    Case("study_variant_bad_rank", lambda t: ["study", "--es_variants", "{lr: {rank: -1}}", *_out(t)],
         "es_variants.lr.rank"),
    Case("study_variant_sets_the_seed", lambda t: ["study", "--es_variants", "{lr: {seed: 3}}", *_out(t)],
         "es_variants.lr.seed"),
    Case("study_variant_unknown_key", lambda t: ["study", "--es_variants", "{lr: {rnak: 1}}", *_out(t)],
         "es_variants.lr.rnak"),
    Case("study_variant_named_like_an_arm", lambda t: ["study", "--es_variants", "{grpo: {rank: 1}}", *_out(t)],
         "names an arm 'grpo'"),
    Case("study_variant_changes_nothing", lambda t: ["study", "--es_variants", "{same: {rank: 0}}", *_out(t)],
         "changes nothing"),
    Case("study_variant_decay_step_too_large", lambda t: ["study", "--es_variants",
                                                          "{awd: {anchor_decay: l2, anchor_lambda: 5000}}", *_out(t)],
         "es_variants.awd.anchor_lambda"),
    Case("resume_with_nothing_to_resume", lambda t: ["train", "es", *ES_SMALL, "--es.iterations", "1", "--resume",
                                                     *_out(t)], "holds no run to resume"),
    # round 3: YAML that never finishes loading, values too long to echo, negative numbers after a flag
    Case("yaml_alias_bomb_in_a_number", lambda t: ["train", "es", "--config", _file(t, "c.yaml", _bomb("es:\n  sigma"))
                                                   , *_out(t)], "aliases expand to more than"),
    Case("yaml_alias_bomb_in_a_list", lambda t: ["eval", "tiny", "--config", _file(t, "c.yaml",
                                                                                    _bomb("data:\n  tasks")),
                                                 *_out(t)], "aliases expand to more than"),
    Case("yaml_alias_bomb_in_set", lambda t: ["eval", "tiny", "--set", f"data.tasks=[{_bomb('')[2:].strip()}]",
                                              *_out(t)],
         "aliases expand to more than"),
    Case("yaml_nested_20000_deep", lambda t: ["eval", "tiny", "--config", _file(
        t, "c.yaml", "es:\n  sigma: " + "[" * 20000 + "]" * 20000 + "\n"), *_out(t)], "nested more than 64 levels"),
    Case("model_name_of_a_million_characters", lambda t: ["eval", "--config", _file(
        t, "c.yaml", "model:\n  name: " + "x" * 1_000_000 + "\n"), *_out(t)], "config key 'model.name' = 'xxx"),
    Case("grpo_lr_negative_after_the_flag", lambda t: ["train", "grpo", "--grpo.lr", "-3e-4", *_out(t)],
         "'grpo.lr' = -0.0003 is invalid"),
    Case("grpo_max_grad_norm_minus_inf", lambda t: ["train", "grpo", "--grpo.max_grad_norm", "-inf", *_out(t)],
         "'grpo.max_grad_norm' must be a finite number"),
    Case("theory_predict_population_zero", lambda t: ["theory", "predict", *_PREDICT, "--N", "0"],
         "theory --N = 0 is invalid"),
    Case("theory_predict_negative_d", lambda t: ["theory", "predict", *_PREDICT, "--d", "-1000"],
         "theory --d = -1000 is invalid"),
    Case("theory_predict_alpha_nan", lambda t: ["theory", "predict", *_PREDICT, "--alpha", "nan"],
         "theory --alpha = nan is invalid"),
    Case("analyze_norms_nan_weight", lambda t: ["analyze", "norms", str(_weights(t, "base", 0.0)),
                                                str(_weights(t, "nan", math.nan))], "holds 1 NaN or infinite"),
    Case("analyze_cosine_of_two_zero_updates", lambda t: ["analyze", "cosine", *[str(_weights(t, "x", 0.0))] * 3],
         "a zero update"),
]

_PREDICT = ["--alpha", "0.03", "--N", "16", "--T", "39", "--d", "1918656"]


def _bomb(key: str) -> str:
    """A "billion laughs" YAML value under `key`: nine levels of nine aliases each, 9^9 strings expanded."""
    value = "&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    for i in range(1, 9):
        value = f"&a{i} [" + ", ".join([value] + [f"*a{i - 1}"] * 8) + "]"
    return f"{key}: {value}\n"


def _weights(t: Path, name: str, last: float) -> Path:
    """A two-tensor checkpoint whose last weight is `last` (the others fixed)."""
    import torch
    from safetensors.torch import save_file

    d = t / name
    if not d.exists():
        d.mkdir()
        w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        w[-1, -1] = last
        save_file({"a.weight": w, "b.weight": torch.ones(4)}, str(d / "model.safetensors"))
    return d


def _truncated(t: Path, name: str) -> Path:
    d = t / name
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    return d


def _dir(t: Path, name: str, files: list[str]) -> Path:
    for f in files:
        p = t / name / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    return t / name


def _es_dir_with_rows(t: Path, rows: list[dict]) -> Path:
    d = _dir(t, "esrun", ["checkpoints/step-000000/config.json"])
    (d / "updates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _train_dir(t: Path) -> Path:
    from esgrpo.config import TrainConfig, dump_yaml

    d = _dir(t, "train", ["checkpoints/final/x"])
    (d / "config.yaml").write_text(dump_yaml(TrainConfig()))
    return d


def _check_one_line_error(code: int, err: str, expect: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("esgrpo: error: "), err
    assert expect in last, last
    return last


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line_and_leaves_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to a default location would land here
    before = {p for p in tmp_path.rglob("*")}
    argv = case.argv(tmp_path)
    prepared = {p for p in tmp_path.rglob("*")}
    capsys.readouterr()
    t0 = time.time()
    code = main(argv)
    _check_one_line_error(code, capsys.readouterr().err, case.expect)
    assert time.time() - t0 < 60, "a bad input must be refused quickly"
    assert not (tmp_path / "out").exists()
    assert {p for p in tmp_path.rglob("*")} <= prepared | before  # nothing new anywhere


def test_the_catalogue_covers_the_reported_cases():
    assert len(CASES) >= 57 and len({c.name for c in CASES}) == len(CASES)


def test_an_error_never_echoes_an_unbounded_value(tmp_path, capsys):
    code = main(["eval", "--config", _file(tmp_path, "c.yaml", "model:\n  name: " + "x" * 1_000_000 + "\n"),
                 "--out", str(tmp_path / "out")])
    last = _check_one_line_error(code, capsys.readouterr().err, "model.name")
    assert len(last) < 600 and "1,000,000 characters" in last and "cannot write" not in last


# --- cases that need a prepared run directory or a second process --------------------------------------


def test_a_second_process_on_the_same_out_is_refused(tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom esgrpo.config import EvalConfig\nfrom esgrpo.runs import RunDir\n"
        f"with RunDir({str(out)!r}, EvalConfig()) as r:\n    print('held', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["eval", "tiny", "--n", "2", "--tasks", "math", "--out", str(out)])
        last = _check_one_line_error(code, capsys.readouterr().err, "in use by another esgrpo process")
        assert f"pid {holder.pid}" in last
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_the_same_directory_given_as_an_absolute_path_is_reused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "es", *ES_SMALL, "--es.iterations", "1"]
    assert main([*argv, "--out", "rel"]) == 0
    assert main([*argv, "--out", str(tmp_path / "rel")]) == 0
    assert "finished; reusing it" in capsys.readouterr().err


@pytest.mark.slow
def test_huge_es_alpha_stops_at_the_first_update_without_writing_it(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "es", "--task", "boolq", *ES_SMALL, "--es.max_new_tokens", "24", "--es.iterations", "3",
                 "--es.sigma", "0.02", "--es.alpha", "1e30", "--out", str(out)])
    _check_one_line_error(code, capsys.readouterr().err, "es.alpha = 1e+30")
    assert not (out / "updates.jsonl").exists() or not (out / "updates.jsonl").read_text()
    assert not (out / "results.json").exists() and not (out / "checkpoints" / "final").exists()


@pytest.mark.slow
def test_grpo_killed_before_its_first_checkpoint_leaves_no_duplicated_rows(tmp_path):
    out = tmp_path / "out"
    argv = ["train", "grpo", *GRPO_SMALL, "--grpo.steps", "2", "--grpo.checkpoint_every", "0", "--out", str(out)]
    assert main(argv) == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    # as if killed after logging step 1 but before any checkpoint: the row stays, the checkpoints do not
    import shutil

    (out / "results.json").unlink()
    (out / "eval.json").unlink()
    shutil.rmtree(out / "checkpoints")
    (out / "metrics.jsonl").write_text(rows[0] + "\n")
    assert main(argv) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


@pytest.mark.slow
def test_resume_falls_back_when_the_latest_checkpoint_is_truncated(tmp_path, capsys):
    from esgrpo.checkpoints import same_weights

    a, b = tmp_path / "a", tmp_path / "b"
    argv = ["train", "es", *ES_SMALL, "--es.iterations", "3"]
    assert main([*argv, "--out", str(a)]) == 0
    assert main([*argv, "--out", str(b)]) == 0
    # a crash left step 3 with torn weights, and no final checkpoint or results (no periodic checkpoint
    # is written at the last step, where final holds the same state: final becomes that step 3)
    assert not (a / "checkpoints" / "step-000003").exists()
    (a / "checkpoints" / "final").rename(a / "checkpoints" / "step-000003")
    (a / "results.json").unlink()
    w = a / "checkpoints" / "step-000003" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    capsys.readouterr()
    assert main([*argv, "--out", str(a)]) == 0
    err = capsys.readouterr().err
    assert "step-000003 is unusable" in err and "resuming" in err and "step-000002" in err
    assert same_weights(a / "checkpoints" / "final", b / "checkpoints" / "final")
    assert not list((a / "checkpoints").glob("*.tmp"))


def test_a_full_disk_is_one_line_and_keeps_finished_work(tmp_path, capsys, monkeypatch):
    import esgrpo.runs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "metrics.jsonl"))

    monkeypatch.setattr(esgrpo.runs, "append_jsonl", full)
    code = main(["eval", "tiny", "--n", "2", "--tasks", "math", "--out", str(tmp_path / "out")])
    last = _check_one_line_error(code, capsys.readouterr().err, "the disk is full")
    assert "metrics.jsonl" in last


def test_a_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import pathlib

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    code = main(["eval", "tiny", "--n", "2", "--tasks", "math", "--out", str(tmp_path / "out")])
    _check_one_line_error(code, capsys.readouterr().err, "read-only")
    assert not (tmp_path / "out").exists()


# --- round 3: tasks of your own that break, replay into a checkpoint, rewards that fail ----------------------

_TASK_MODULE = '''
from esgrpo.tasks import JsonlTask


def exact(prompts, completions, answer, **columns):
    return [1.0 if c.strip().endswith(a) else 0.0 for c, a in zip(completions, answer)]


def nan(prompts, completions, **columns):
    return [float("nan")] * len(completions)


def none(prompts, completions, **columns):
    return [None] * len(completions)


class Exact(JsonlTask):
    name = "exact"
    system_prompt = "Answer."
    files = {"train": "train.jsonl", "test": "test.jsonl"}
    reward_function = staticmethod(exact)


class NaN(Exact):
    reward_function = staticmethod(nan)


class Nothing(Exact):
    reward_function = staticmethod(none)


class NoColumn(Exact):  # its rows hold `gold`, its reward needs `answer`
    files = {"train": "train-gold.jsonl", "test": "test-gold.jsonl"}


class Latin1(Exact):
    files = {"train": "train.jsonl", "test": "latin1.jsonl"}


class RaisesInInit(Exact):
    def __init__(self):
        raise RuntimeError("no data today")


class NotATask:
    def __init__(self):
        open("constructed", "w").close()
'''


def _task_dir(t: Path) -> None:
    (t / "round3tasks.py").write_text(_TASK_MODULE)
    (t / "round3_zero.py").write_text("x = 1 / 0\n")
    (t / "round3_syntax.py").write_text("def broken(:\n")
    for split in ("train", "test"):
        rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(16)]
        _jsonl(t, f"{split}.jsonl", rows[:8] if split == "train" else rows[8:])
        _jsonl(t, f"{split}-gold.jsonl", [{"question": r["question"], "gold": r["answer"]} for r in rows])
    _file(t, "latin1.jsonl", '{"question": "Caf\xe9?", "answer": "1"}\n'.encode("latin-1"))


@pytest.fixture
def task_module(tmp_path, monkeypatch):
    """The working directory holds the round-3 task modules and their data, importable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _task_dir(tmp_path)


@pytest.mark.parametrize(("task", "expect"), [
    ("round3_zero:Task", "cannot import Task from round3_zero (ZeroDivisionError: division by zero)"),
    ("round3_syntax:Task", "cannot import Task from round3_syntax (SyntaxError"),
    ("round3tasks:RaisesInInit", "constructing RaisesInInit() failed (RuntimeError: no data today)"),
    ("round3tasks:NotATask", "is the class NotATask, not an esgrpo.tasks.Task subclass"),
    ("subprocess:Popen", "is the class Popen, not an esgrpo.tasks.Task subclass"),
    ("round3tasks:Latin1", "latin1.jsonl, line 1: not UTF-8 text"),
])
def test_a_task_of_your_own_that_breaks_is_one_line(task, expect, tmp_path, capsys, task_module):
    before = set(tmp_path.rglob("*"))
    code = main(["eval", "tiny", "--tasks", task, "--n", "2", "--out", str(tmp_path / "out")])
    _check_one_line_error(code, capsys.readouterr().err, expect)
    assert not (tmp_path / "constructed").exists()  # nothing but a Task subclass is ever called
    assert {p for p in tmp_path.rglob("*") if "__pycache__" not in p.parts} <= before


@pytest.mark.parametrize(("task", "first"), [
    ("round3tasks:NaN", "returned nan"),
    ("round3tasks:Nothing", "returned None"),
    ("round3tasks:NoColumn", "raised TypeError"),
])
def test_a_reward_that_fails_for_most_of_a_batch_stops_the_evaluation(task, first, tmp_path, capsys,
                                                                       task_module):
    code = main(["eval", "tiny", "--tasks", task, "--n", "4", "--generation.max_new_tokens", "4",
                 "--out", str(tmp_path / "out")])
    last = _check_one_line_error(code, capsys.readouterr().err, "the reward failed for 4 of the 4 responses")
    assert first in last
    assert not (tmp_path / "out").exists()


def test_a_reward_that_fails_stops_training_and_the_run_resumes_once_it_is_fixed(tmp_path, capsys, monkeypatch,
                                                                                 task_module):
    out = tmp_path / "out"
    argv = ["train", "es", "--task", "round3tasks:Exact", *ES_SMALL, "--es.iterations", "1", "--out", str(out)]
    import round3tasks

    monkeypatch.setattr(round3tasks.Exact, "reward_function", staticmethod(round3tasks.nan))
    _check_one_line_error(main(argv), capsys.readouterr().err, "the reward failed for 8 of the 8")
    assert not (out / "results.json").exists() and not (out / "updates.jsonl").exists()
    monkeypatch.setattr(round3tasks.Exact, "reward_function", staticmethod(round3tasks.exact))
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["reward_errors"] == 0


def test_a_few_failed_rewards_are_counted_and_said(tmp_path, capsys, monkeypatch, task_module):
    import round3tasks

    calls = iter(range(1000))

    def one_in_four(prompts, completions, answer, **columns):  # esgrpo calls it once per response
        return [None if next(calls) % 4 == 0 else 0.0 for _ in completions]

    monkeypatch.setattr(round3tasks.Exact, "reward_function", staticmethod(one_in_four))
    code = main(["eval", "tiny", "--tasks", "round3tasks:Exact", "--n", "4", "--generation.max_new_tokens", "4",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    assert "[eval round3tasks:Exact] 1 of 4 rewards failed and scored 0" in capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["tasks"]["round3tasks:Exact"]["reward_errors"] == 1


@pytest.fixture(scope="module")
def es_run(tmp_path_factory):
    """A finished one-iteration ES run of the tiny model (replay's input)."""
    out = tmp_path_factory.mktemp("es") / "run"
    assert main(["train", "es", "--task", "math", *ES_SMALL, "--es.iterations", "1", "--out", str(out)]) == 0
    return out


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["checkpoints/step-000000", "checkpoints/final", "checkpoints/new"])
def test_replay_never_writes_into_a_checkpoint_of_the_run(es_run, where, capsys):
    before = _snapshot(es_run)
    code = main(["replay", str(es_run), "--out", str(es_run / where)])
    _check_one_line_error(code, capsys.readouterr().err, "is inside the run's checkpoints")
    assert _snapshot(es_run) == before


def test_replay_never_writes_over_another_checkpoint(es_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    code = main(["replay", str(es_run), "--out", str(other)])
    _check_one_line_error(code, capsys.readouterr().err, "already holds a checkpoint that replay did not write")
    assert [p.name for p in other.iterdir()] == ["config.json"]


def test_replay_of_a_log_with_a_nan_coefficient_leaves_nothing(es_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(es_run, run)
    row = json.loads((run / "updates.jsonl").read_text())
    row["coefs"][1] = math.nan
    (run / "updates.jsonl").write_text(json.dumps(row) + "\n")
    before = _snapshot(run)
    for out in ([], ["--out", str(tmp_path / "new" / "deeper")]):
        code = main(["replay", str(run), *out])
        _check_one_line_error(code, capsys.readouterr().err, "line 1: coefficient nan is not a finite number")
    assert _snapshot(run) == before and not (tmp_path / "new").exists()


def test_replay_may_rewrite_its_own_output(es_run, tmp_path, capsys):
    out = tmp_path / "replayed"
    for _ in range(2):
        assert main(["replay", str(es_run), "--out", str(out)]) == 0
        assert '"matches_final": true' in capsys.readouterr().out
    assert not list(tmp_path.glob(".*partial*"))
