"""Regression tests for the defects a review of esgrpo found (one or more per defect, named after it).

They run the real command line (`esgrpo.cli.main`) on the shipped tiny model with very small budgets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esgrpo.checkpoints import same_weights
from esgrpo.cli import main

DATA = ["--data.n_train", "8", "--data.n_test", "8", "--generation.max_new_tokens", "12"]
ES = ["--es.population", "4", "--es.batch_size", "0", "--es.max_new_tokens", "12", "--es.sigma", "0.02",
      "--es.alpha", "0.02", "--es.checkpoint_every", "1"]
GRPO = ["--grpo.prompts_per_step", "2", "--grpo.group_size", "4", "--grpo.max_new_tokens", "12",
        "--grpo.lr", "1e-3", "--grpo.checkpoint_every", "1", "--grpo.kl_every", "1"]


def train(method: str, out: Path, *extra: str) -> int:
    common = ES if method == "es" else GRPO
    return main(["train", method, "--task", "boolq", "--out", str(out), *DATA, *common, *extra])


def final(out: Path) -> Path:
    return out / "checkpoints" / "final"


# --- 1. resume: not part of the identity; extending a run equals an uninterrupted longer one ---------


@pytest.mark.slow
def test_resume_flag_is_not_part_of_the_run_identity_and_es_extension_is_bit_exact(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train("es", a, "--es.iterations", "2") == 0
    # a larger budget without --resume: refused, and the flag is named
    assert train("es", a, "--es.iterations", "4") == 2
    assert "--resume" in capsys.readouterr().err
    # with --resume: continued (said on screen) ...
    assert train("es", a, "--es.iterations", "4", "--resume") == 0
    assert "continuing the finished run" in capsys.readouterr().err
    # ... to exactly the weights and update log of an uninterrupted 4-iteration run
    assert train("es", b, "--es.iterations", "4") == 0
    assert same_weights(final(a), final(b))
    rows = [json.loads(x) for x in (a / "updates.jsonl").read_text().splitlines()]
    assert rows == [json.loads(x) for x in (b / "updates.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    eval_a, eval_b = (json.loads((d / "eval.json").read_text())["final"] for d in (a, b))
    assert eval_a["step"] == eval_b["step"] == 4  # the extended run was evaluated again
    assert eval_a["boolq"]["accuracy"] == eval_b["boolq"]["accuracy"]


@pytest.mark.slow
def test_interrupted_run_resumes_with_or_without_the_flag_and_says_so(tmp_path, capsys):
    out = tmp_path / "r"
    assert train("es", out, "--es.iterations", "3") == 0
    (out / "results.json").unlink()  # as if killed after its last checkpoint
    capsys.readouterr()
    assert train("es", out, "--es.iterations", "3", "--resume") == 0  # --resume no longer changes the identity
    assert "interrupted run" in capsys.readouterr().err
    (out / "results.json").unlink()
    assert train("es", out, "--es.iterations", "3") == 0
    assert "interrupted run" in capsys.readouterr().err


@pytest.mark.slow
def test_grpo_extension_is_bit_exact_with_a_constant_schedule_and_refused_with_a_decaying_one(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    const = ["--grpo.lr_schedule", "constant"]
    assert train("grpo", a, "--grpo.steps", "2", *const) == 0
    assert train("grpo", a, "--grpo.steps", "3", "--resume", *const) == 0
    assert train("grpo", b, "--grpo.steps", "3", *const) == 0
    assert same_weights(final(a), final(b))
    strip = ("seconds", "step_seconds", "t_generate", "t_reward", "t_backward", "t_ref", "t_measure", "t_step",
             "mem_generate", "mem_backward", "mem_step")
    rows_a, rows_b = ([{k: v for k, v in json.loads(x).items() if k not in strip}
                       for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b))
    assert rows_a == rows_b and len(rows_a) == 3
    # linear decay to the planned total: no continuation can equal a longer run, so it is refused
    assert train("grpo", c, "--grpo.steps", "2") == 0
    capsys.readouterr()
    assert train("grpo", c, "--grpo.steps", "3", "--resume") == 2
    err = capsys.readouterr().err
    assert "decays linearly" in err and "schedule_steps" in err and "Traceback" not in err


def test_run_control_fields_are_not_part_of_the_identity():
    from esgrpo.config import ESConfig, GRPOConfig, TrainConfig, identity

    base = identity(TrainConfig())
    for changed in (TrainConfig(out="x", resume=True, eval_tasks=["math"]),
                    TrainConfig(es=ESConfig(iterations=7, max_rollouts=9, checkpoint_every=3, kl_every=2)),
                    TrainConfig(grpo=GRPOConfig(steps=5, checkpoint_every=1, kl_every=0))):
        assert identity(changed) == base
    assert identity(TrainConfig(es=ESConfig(sigma=0.5))) != base


# --- 2. sequence: other settings over a finished sequence are refused, naming the keys ----------------


SEQ = ["--data.tasks", "boolq", "--sequential.order", "boolq", "--sequential.methods", "es_short",
       "--sequential.kl_prompts", "2", "--sequential.heldout_docs", "10", "--es.iterations", "1"]


@pytest.mark.slow
def test_sequence_with_other_trainer_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "seq"
    argv = ["sequence", "--out", str(out), *DATA, *ES, *SEQ]
    assert main(argv) == 0
    before = (out / "sequence.json").read_text()
    capsys.readouterr()
    assert main([*argv, "--es.sigma", "0.03"]) == 2
    err = capsys.readouterr().err
    assert "es.sigma: 0.02 -> 0.03" in err and "Traceback" not in err
    assert (out / "sequence.json").read_text() == before
    assert main(argv) == 0  # the same settings: reused


def test_sequence_reuse_of_a_study_with_other_settings_is_refused(tmp_path, capsys):
    from esgrpo.config import StudyConfig, dump_yaml

    study = tmp_path / "study"
    study.mkdir()
    (study / "config.yaml").write_text(dump_yaml(StudyConfig()))
    (study / "results.json").write_text("{}")
    code = main(["sequence", "--out", str(tmp_path / "seq"), "--reuse", str(study), "--es.sigma", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "es.sigma" in err and "cannot serve as stage 1" in err
    assert not (tmp_path / "seq").exists()


# --- 3. study: nothing is written before every check has passed ---------------------------------------


STUDY = ["--data.tasks", "boolq", "--data.n_train", "8", "--data.n_test", "6", "--no-train", "--extra_models", "",
         "--generation.max_new_tokens", "8"]


@pytest.mark.slow
def test_study_refused_rerun_writes_nothing(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), *STUDY]) == 0
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert main(["study", "--out", str(out), *STUDY, "--data.n_test", "7"]) == 2
    assert "data.n_test: 6 -> 7" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == snapshot
    assert main(["report", str(out)]) == 0  # the report still describes what the directory holds
    assert "n_test per task: boolq 6" in (out / "report.md").read_text()


# --- 4. peak memory: one definition for both trainers -------------------------------------------------


MEMORY_KEYS = {"peak_memory_bytes", "peak_memory_added_bytes", "memory_kind", "model_bytes", "measure_memory_bytes",
               "measure_seconds"}


@pytest.mark.slow
def test_peak_memory_has_one_definition_for_both_trainers(tmp_path):
    assert train("es", tmp_path / "es", "--es.iterations", "1", "--es.kl_every", "1") == 0
    assert train("grpo", tmp_path / "grpo", "--grpo.steps", "1") == 0
    res = {m: json.loads((tmp_path / m / "results.json").read_text()) for m in ("es", "grpo")}
    for m, r in res.items():
        assert set(r) >= MEMORY_KEYS, m
        assert r["memory_kind"] == "cpu_rss"
        assert 0 <= r["peak_memory_added_bytes"] <= r["peak_memory_bytes"]
        assert r["model_bytes"] == 4 * 1_918_656  # the tiny model in fp32
        assert r["measure_memory_bytes"] == r["model_bytes"]  # the KL reference copy, kept apart
    assert "peak_memory_mb" not in res["grpo"]


def test_peak_memory_added_counts_what_the_block_allocates():
    import time

    import torch

    from esgrpo.memory import PeakMemory

    with PeakMemory("cpu") as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, held long enough for the 5 ms sampler to see it
        x.add_(1)
        time.sleep(0.05)
        del x
    assert mem.added_bytes >= 60 * 2**20 and mem.peak_bytes >= mem.start_bytes + mem.added_bytes - 1


def test_peak_memory_laps_give_each_phase_its_own_peak():
    import time

    import torch

    from esgrpo.memory import PeakMemory

    mib = 2**20
    with PeakMemory("cpu") as mem:
        x = torch.ones(64 * mib // 4)  # phase 1: 64 MiB, freed before the lap (64 MiB blocks go back to the OS)
        time.sleep(0.05)
        del x
        first = mem.lap()
        second = mem.lap()  # phase 2 allocated nothing
        y = torch.ones(128 * mib // 4)  # phase 3: 128 MiB, alive at the lap
        third = mem.lap()
        del y
    assert first >= 60 * mib and second < 16 * mib and third >= 120 * mib
    assert mem.added_bytes >= third  # the block's peak keeps every lap's


# --- 5. measurement cost accounted apart from training ------------------------------------------------


@pytest.mark.slow
def test_grpo_kl_measurement_is_not_training_time(tmp_path):
    assert train("grpo", tmp_path / "kl", "--grpo.steps", "2") == 0
    rows = [json.loads(x) for x in (tmp_path / "kl" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["t_measure"] == r["t_ref"] > 0 for r in rows)  # beta = 0: the reference is measurement
    res = json.loads((tmp_path / "kl" / "results.json").read_text())
    assert res["seconds"] == pytest.approx(sum(r["step_seconds"] - r["t_measure"] for r in rows), rel=1e-9)
    assert res["measure_seconds"] == pytest.approx(sum(r["t_measure"] for r in rows))
    # with the KL in the loss (beta > 0) it is training
    assert train("grpo", tmp_path / "beta", "--grpo.steps", "1", "--grpo.beta", "0.1") == 0
    rows = [json.loads(x) for x in (tmp_path / "beta" / "metrics.jsonl").read_text().splitlines()]
    res = json.loads((tmp_path / "beta" / "results.json").read_text())
    assert rows[0]["t_measure"] == 0.0 and res["measure_memory_bytes"] == 0
    assert res["seconds"] == pytest.approx(rows[0]["step_seconds"])


def test_report_budget_table_says_what_each_column_holds():
    from esgrpo.report.study import budget_table

    b = {"rollouts": 10, "tokens": 20, "seconds": 3.0, "peak_memory_bytes": 2**30, "peak_memory_added_bytes": 2**20,
         "measure_seconds": 1.0, "measure_memory_bytes": 2**21, "steps": 2}
    header, rows = budget_table({"tasks": {"math": {"budgets": {"grpo": b}}}})
    assert "train seconds" in header and "measurement seconds" in header and "process peak (MiB)" in header
    assert rows[0][5:] == ["3", "1", "1024", "1", "2"]


# --- 6. one cell of Table 1 in one command ------------------------------------------------------------


def test_train_given_the_study_config_points_to_study_only(capsys):
    code = main(["train", "es", "--config", "configs/study-default.yaml", "--task", "math"])
    err = capsys.readouterr().err
    assert code == 2 and "esgrpo study --config configs/study-default.yaml --only" in err
    assert "Traceback" not in err and "unknown config key" not in err


@pytest.mark.slow
def test_study_only_runs_one_cell_into_the_study_directory(tmp_path, capsys):
    out = tmp_path / "study"
    cell = ["study", "--out", str(out), "--data.tasks", "boolq", *DATA, *GRPO, "--grpo.steps", "1",
            "--extra_models", "", "--no-analysis.enabled", "--no-sequential.enabled"]
    assert main([*cell, "--only", "boolq:grpo"]) == 0
    table = capsys.readouterr().out
    assert "| boolq |" in table and "grpo" in table
    res = json.loads((out / "results.json").read_text())
    assert set(res["tasks"]["boolq"]["accuracy"]) == {"grpo"}
    grpo_eval = json.loads((out / "runs" / "boolq-grpo" / "eval.json").read_text())["final"]["boolq"]["accuracy"]
    assert res["tasks"]["boolq"]["accuracy"]["grpo"] == grpo_eval
    assert not (out / "report.md").exists()  # the study is not complete yet
    assert main([*cell, *ES, "--es.iterations", "1"]) == 2  # other ES settings than the study dir: refused
    capsys.readouterr()
    assert main(["study", "--out", str(out), "--only", "boolq:nope"]) == 2
    assert "TASK:METHOD" in capsys.readouterr().err


# --- 7. texts that say what the code does ---------------------------------------------------------------


def test_help_texts_say_what_the_code_does():
    from esgrpo.config import GRPOConfig, SequenceConfig, field_help
    from esgrpo.tasks.hub import _HINT

    assert "never binds" in field_help(GRPOConfig)["clip_eps"]
    assert "data.data_paths" in _HINT and "data_path`" not in _HINT
    assert "checked" in field_help(SequenceConfig)["reuse"]


def test_no_module_cites_a_file_outside_the_repository():
    root = Path(__file__).parents[1]
    offenders = [str(p) for p in (root / "src").rglob("*.py") if "paper.md" in p.read_text()]
    assert not offenders


# --- 8. numbers that reproduce: the shipped tiny model -------------------------------------------------


def test_default_tiny_is_the_shipped_build_with_its_recipe_hash():
    import hashlib

    from esgrpo.config import ModelConfig, TinyModelConfig
    from esgrpo.models import model_identity, resolve_model_path
    from esgrpo.models.tiny import SHIPPED, config_hash

    assert Path(resolve_model_path(ModelConfig(cache_dir="/nonexistent"), TinyModelConfig())) == SHIPPED
    build = json.loads((SHIPPED / "build.json").read_text())
    assert build["recipe_hash"] == config_hash(TinyModelConfig())
    assert build["weights_sha256"] == hashlib.sha256((SHIPPED / "model.safetensors").read_bytes()).hexdigest()
    assert model_identity(ModelConfig(), TinyModelConfig()) == f"tiny-{build['recipe_hash']}"
    # another recipe is not the shipped one
    assert resolve_model_path is not None and config_hash(TinyModelConfig(steps=1)) != build["recipe_hash"]


def test_compare_builds_says_whether_weights_match(tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from esgrpo.models.tiny import SHIPPED, compare_builds

    shutil.copytree(SHIPPED, tmp_path / "same")
    assert "bit for bit" in compare_builds(tmp_path / "same", SHIPPED)
    shutil.copytree(SHIPPED, tmp_path / "other")
    w = load_file(str(tmp_path / "other" / "model.safetensors"))
    name = sorted(w)[0]
    w[name] = w[name] + torch.finfo(torch.float32).eps * w[name].abs().clamp(min=1)
    save_file(w, str(tmp_path / "other" / "model.safetensors"), metadata={"format": "pt"})
    msg = compare_builds(tmp_path / "other", SHIPPED)
    assert "differ" in msg and "CPU capability" in msg
