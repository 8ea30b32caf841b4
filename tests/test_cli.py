"""The command line end to end on a very small tiny model: train es/grpo, replay, eval, bench, errors."""

from __future__ import annotations

import json

import pytest

from esgrpo.cli import main

SMALL = ["--tiny.hidden_size", "64", "--tiny.intermediate_size", "128", "--tiny.num_layers", "2",
         "--tiny.steps", "30", "--tiny.corpus_per_task", "300", "--tiny.batch_size", "16", "--tiny.warmup", "5"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ["--model.cache_dir", str(tmp_path_factory.mktemp("cache"))]


@pytest.mark.slow
def test_train_es_then_replay_is_bit_exact(tmp_path, cache, capsys):
    out = tmp_path / "es"
    code = main(["train", "es", "--task", "boolq", "--out", str(out), *cache, *SMALL,
                 "--data.n_train", "8", "--data.n_test", "8", "--es.population", "4", "--es.iterations", "3",
                 "--es.sigma", "0.01", "--es.alpha", "0.01", "--es.max_new_tokens", "10",
                 "--generation.max_new_tokens", "10"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rollouts"] == 3 * 4 * 8
    for f in ("config.yaml", "metrics.jsonl", "updates.jsonl", "results.json", "eval.json"):
        assert (out / f).exists(), f
    evaluated = json.loads((out / "eval.json").read_text())["final"]["boolq"]
    assert summary["test_accuracy_%"]["boolq"] == round(100 * evaluated["accuracy"], 1) and evaluated["n"] == 8
    assert main(["replay", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip())["matches_final"] is True


@pytest.mark.slow
def test_train_grpo_and_eval_and_bench(tmp_path, cache, capsys):
    out = tmp_path / "grpo"
    code = main(["train", "grpo", "--task", "math", "--out", str(out), *cache, *SMALL,
                 "--data.n_train", "8", "--data.n_test", "8", "--grpo.steps", "2", "--grpo.prompts_per_step", "2",
                 "--grpo.group_size", "4", "--grpo.max_new_tokens", "10", "--generation.max_new_tokens", "10"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rollouts"] == 2 * 2 * 4
    ev = tmp_path / "ev"
    assert main(["eval", str(out / "checkpoints" / "final"), "--tasks", "math,boolq", "--n", "6",
                 "--out", str(ev), "--generation.max_new_tokens", "10"]) == 0
    res = json.loads((ev / "results.json").read_text())
    assert set(res["tasks"]) == {"math", "boolq"} and res["tasks"]["math"]["n"] == 6
    assert len((ev / "samples.jsonl").read_text().splitlines()) > 0
    capsys.readouterr()
    assert main(["bench", "es", "--iterations", "2", "--task", "math", *cache, *SMALL, "--data.n_train", "8",
                 "--es.population", "3", "--es.max_new_tokens", "8"]) == 0
    text = capsys.readouterr().out
    for phase in ("perturb", "generate", "reward", "restore", "update", "peak memory"):
        assert phase in text


def test_missing_model_path_is_a_clear_error(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "nope"), "--tasks", "math", "--n", "2", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and "Traceback" not in err


def test_hub_source_without_network_is_a_clear_error(tmp_path, capsys):
    code = main(["eval", "tiny", "--tasks", "boolq", "--source", "hub", "--n", "2", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "boolq" in err.lower() and "synthetic" in err


def test_analyze_norms_cosine_and_errors(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    names = ["model.layers.0.mlp.up_proj.weight", "model.norm.weight"]
    base = {n: torch.ones(4, 4) if "proj" in n else torch.ones(4) for n in names}
    for label, shift in (("a", 3.0), ("b", -3.0)):
        (tmp_path / label).mkdir()
        moved = {n: t + shift * (n == names[0]) for n, t in base.items()}
        save_file(moved, str(tmp_path / label / "model.safetensors"))
    (tmp_path / "base").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    capsys.readouterr()
    assert main(["analyze", "norms", str(tmp_path / "base"), str(tmp_path / "a")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"]["abs"] == pytest.approx(12.0)  # 16 weights each changed by 3
    assert main(["analyze", "cosine", str(tmp_path / "base"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out)["cosine"] == pytest.approx(-1.0)
    code = main(["analyze", "norms", str(tmp_path / "base"), str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "Traceback" not in err
    code = main(["report", str(tmp_path / "base")])
    assert code == 2 and "not a study directory" in capsys.readouterr().err


def test_theory_predict_reproduces_the_papers_norms_and_validate_errors_are_clear(tmp_path, capsys):
    capsys.readouterr()
    assert main(["theory", "predict", "--alpha", "7.5e-4", "--N", "30", "--T", "300", "--d", "4020000000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["es_norm"] == pytest.approx(150.4, rel=2e-3)  # the paper's prediction for T = 300
    code = main(["theory", "validate", str(tmp_path), "--alpha", "0.01", "--N", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "not a readable ES run" in err and "Traceback" not in err
    assert main(["theory", "predict", "--alpha", "0.01"]) == 2


def test_analyze_kl_interpolate_and_probe_on_checkpoints(tmp_path, capsys):
    import torch

    from conftest import make_micro_policy

    a = make_micro_policy(seed=0)
    a.save(tmp_path / "a")
    with torch.no_grad():
        for _, p in a.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    a.save(tmp_path / "b")
    capsys.readouterr()
    common = ["--tasks", "math", "--n", "2", "--max-new-tokens", "4"]
    assert main(["analyze", "kl", str(tmp_path / "b"), str(tmp_path / "a"), *common]) == 0
    kl = json.loads(capsys.readouterr().out)["math"]
    assert kl["kl"] > 0 and kl["n"] == 2
    assert main(["analyze", "kl", str(tmp_path / "a"), str(tmp_path / "a"), *common]) == 0
    assert json.loads(capsys.readouterr().out)["math"]["kl"] == 0.0
    assert main(["analyze", "interpolate", str(tmp_path / "a"), str(tmp_path / "b"), "--points", "3", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["alpha"] for p in out["points"]] == [0.0, 0.5, 1.0] and "math/accuracy" in out["barriers"]
    assert main(["analyze", "probe", str(tmp_path / "a"), str(tmp_path / "b"), "--points", "2", *common]) == 0
    assert {"d1:b", "random"} == set(json.loads(capsys.readouterr().out)["directions"])
    assert main(["analyze", "kl", str(tmp_path / "a"), *common]) == 2
