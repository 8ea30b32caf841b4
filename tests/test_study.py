"""The study end to end on the shipped tiny model with very small budgets: tables, figures, budgets,
analyses, the sequence, and reuse on rerun."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from esgrpo.config import (
    AnalysisConfig,
    DataConfig,
    ESConfig,
    GenerationConfig,
    GRPOConfig,
    ModelConfig,
    StudyConfig,
    TinyModelConfig,
)
from esgrpo.study import run_study


def small_study(out, cache_dir) -> StudyConfig:
    return StudyConfig(
        model=ModelConfig(name="tiny", cache_dir=cache_dir),
        tiny=TinyModelConfig(),  # the shipped model: real rewards, so both methods move
        data=DataConfig(tasks=["math", "boolq"], n_train=12, n_test=10),
        generation=GenerationConfig(max_new_tokens=24, batch_size=16),
        es=ESConfig(population=4, sigma=0.02, alpha=0.02, iterations=2, batch_size=6, max_new_tokens=24),
        grpo=GRPOConfig(steps=2, prompts_per_step=3, group_size=4, max_new_tokens=24, lr=1e-3),
        es_long_factor=2, extra_models=[], out=str(out),
        analysis=AnalysisConfig(n_examples=6, alphas=3, probe_points=2, probe_n_examples=4, kl_prompts=3,
                                kl_samples=1, kl_max_new_tokens=8, heldout_docs=20))

GEOMETRY_SECTIONS = ["Update norms", "Update directions", "Sparsity and rank of the updates",
                     "KL drift (on-task and off-task)", "Linear connectivity", "Direction probes",
                     "Held-out capability (pretraining NLL)", "Theory", "Sequential"]


VARIANTS = {"lowrank1": {"rank": "1"}, "awd": {"anchor_decay": "l2", "anchor_lambda": "10"}}
ARMS = ("es_short", "es_long", "grpo", "lowrank1", "awd")


@pytest.mark.slow
def test_study_end_to_end_and_rerun_reuses_runs(tmp_path, cache_dir, capsys):
    cfg = dataclasses.replace(small_study(tmp_path / "study", cache_dir), es_variants=VARIANTS)
    res = run_study(cfg)
    root = tmp_path / "study"
    md = (root / "report.md").read_text()
    assert "| math |" in md and "| boolq |" in md and "ES(2)" in md and "ES(4)" in md
    assert "Norms predicted before training" in md  # the ES and GRPO norms predicted from the settings
    assert "(format " in md  # each gain split into what format alone explains and the rest
    assert "Precision audit" in md and "| math | GRPO | 2 | 100.0 |" in md  # fp32 weights: every weight moves
    html = (root / "report.html").read_text()
    for section in ["Accuracy (Table 1)", "Budgets", *GEOMETRY_SECTIONS]:  # the report renders every section
        assert f"## {section}" in md and f">{section}</h2>" in html
    assert html.count("data:image/png;base64,") >= 5  # self-contained: figures embedded
    analysis = json.loads((root / "analysis.json").read_text())
    rw = analysis["theory"]["random_walk_kl"]  # the exact random-walk KL at ES short's and ES long's T
    assert set(rw) == {"2", "4"} and set(rw["4"]["kl"]) == {"math", "boolq"}
    assert rw["4"]["scale"] == pytest.approx(cfg.es.alpha * (4 / cfg.es.population) ** 0.5)
    assert "exact random walk" in md
    for task in ("math", "boolq"):
        assert set(analysis["kl"][task]["grpo"]) == {"math", "boolq"}  # on-task and off-task
        assert set(analysis["interpolation"][task]) == {"base->es_long", "base->grpo", "es_long->grpo",
                                                        "es_short->lowrank1", "lowrank1->grpo", "es_short->awd",
                                                        "awd->grpo"}
        assert set(analysis["kl"][task]) == set(ARMS) and set(analysis["capability"][task]) == set(ARMS)
        cos = analysis["weights"][task]["cosine"]
        assert {"es_short|lowrank1", "grpo|lowrank1", "es_short|awd", "grpo|awd", "lowrank1|awd"} <= set(cos)
        # the variants' norms beside the walk's predictions, by hand: alpha sqrt(dT/N) for rank 1 (unit-variance
        # eps), the l2 anchor's Ornstein-Uhlenbeck level with rho = 1 - alpha lambda for awd
        pred = analysis["theory"]["walks"][task]["variants"]
        d, T, N, a = cos["es_short|awd"]["d"], 2, 4, 0.02
        assert pred["lowrank1"]["predicted"] == pytest.approx(a * math.sqrt(d * T / N))
        rho2 = (1 - a * 10) ** 2
        assert pred["awd"]["predicted"] == pytest.approx(a * math.sqrt(d / N * rho2 * (1 - rho2 ** T) / (1 - rho2)))
        assert pred["awd"]["measured"] == analysis["weights"][task]["norms"]["awd"]["total"]["abs"] > 0
        norms = analysis["weights"][task]["norms"]
        assert norms["es_long"]["total"]["abs"] > norms["grpo"]["total"]["abs"] > 0  # both moved, ES further
        probes = analysis["probes"][task]
        assert set(probes["directions"]) == {"es", "grpo", "random"}
        assert {"layer 0", "layer 1", "layer 3", "non-layer"} <= set(norms["grpo"]["per_layer"])
    assert (root / "figures" / "accuracy.png").stat().st_size > 1000
    assert (root / "figures" / "learning_curves.png").stat().st_size > 1000
    saved = json.loads((root / "results.json").read_text())
    for task in ("math", "boolq"):
        t = saved["tasks"][task]
        # every Table 1 cell is the accuracy its run directory evaluated, on n_test examples
        es_eval = json.loads((root / "runs" / f"{task}-es" / "eval.json").read_text())
        grpo_eval = json.loads((root / "runs" / f"{task}-grpo" / "eval.json").read_text())
        v_acc = {v: json.loads((root / "runs" / f"{task}-es-{v}" / "eval.json").read_text())["final"][task]["accuracy"]
                 for v in VARIANTS}
        assert t["accuracy"] == {"es_short": es_eval["es_short"][task]["accuracy"],
                                 "es_long": es_eval["final"][task]["accuracy"],
                                 "grpo": grpo_eval["final"][task]["accuracy"], **v_acc}
        assert es_eval["es_short"]["step"] == 2 and es_eval["final"]["step"] == 4
        for v in VARIANTS:  # each variant arm: its own ES run with the variant's settings and ES short's seed
            v_eval = json.loads((root / "runs" / f"{task}-es-{v}" / "eval.json").read_text())
            assert v_eval["final"]["step"] == 2
            v_cfg = json.loads((root / "runs" / f"{task}-es-{v}" / "results.json").read_text())["config"]
            assert (v_cfg["rank"], v_cfg["anchor_decay"], v_cfg["seed"]) == (
                (1, "none", cfg.es.seed) if v == "lowrank1" else (0, "l2", cfg.es.seed))
        assert all(round(10 * a) == 10 * a for a in t["accuracy"].values())  # k correct out of n_test = 10
        b = t["budgets"]
        assert b["es_short"]["rollouts"] == 2 * 4 * 6  # iterations x N x batch
        assert b["es_long"]["rollouts"] == 4 * 4 * 6
        assert b["grpo"]["rollouts"] == 2 * 3 * 4  # steps x prompts x K
        assert b["lowrank1"]["rollouts"] == b["awd"]["rollouts"] == 2 * 4 * 6
        assert b["es_long"]["tokens"] > b["es_short"]["tokens"] > 0
    # an independent evaluation of the GRPO checkpoint reproduces its cell
    from esgrpo.config import EvalConfig
    from esgrpo.run import run_eval

    again = run_eval(EvalConfig(model=ModelConfig(name=str(root / "runs" / "math-grpo" / "checkpoints" / "final")),
                                data=DataConfig(tasks=["math"], n_train=12, n_test=10),
                                generation=GenerationConfig(max_new_tokens=24, batch_size=16)),
                     run_path=tmp_path / "again")
    assert again["tasks"]["math"]["accuracy"] == saved["tasks"]["math"]["accuracy"]["grpo"]
    # the sequence: stage 1 of every method is its single-task run on the first task, stage 2 trains on
    seq = json.loads((root / "sequence" / "sequence.json").read_text())
    assert seq["settings"]["order"] == ["math", "boolq"]
    for m in ARMS:
        st = seq["methods"][m]["stages"]
        assert [x["task"] for x in st] == ["math", "boolq"]
        assert st[0]["checkpoint"] == saved["tasks"]["math"]["runs"][m if m in VARIANTS else "es" if m != "grpo"
                                                                     else "grpo"] + (
            "/checkpoints/step-000002" if m == "es_short" else "/checkpoints/final")
        assert "/sequence/runs/" in st[1]["checkpoint"] and set(st[1]["accuracy"]) == {"math", "boolq"}
        assert set(st[1]["kl"]) == {"math", "boolq"} and "average_accuracy" in seq["methods"][m]["metrics"]
    assert "## Sequential" in md and "## ES variant arms: geometry" in md
    assert "| GRPO | lowrank1 | awd |" in md and "| lowrank1 |" in md  # Table 1's columns, the sequence rows
    # ES short is ES long's checkpoint at the short budget
    es_run = root / "runs" / "math-es"
    assert (es_run / "checkpoints" / "step-000002").exists() and (es_run / "checkpoints" / "final").exists()
    # rerun: every finished run and evaluation is reused, same numbers
    res2 = run_study(cfg)
    assert res2["tasks"] == res["tasks"]
    assert "reusing" in capsys.readouterr().err


@pytest.mark.slow
def test_matched_budget_gives_grpo_the_es_short_rollouts(tmp_path, cache_dir):
    cfg = dataclasses.replace(small_study(tmp_path / "m", cache_dir), budget_mode="matched",
                              data=DataConfig(tasks=["boolq"], n_train=12, n_test=8),
                              analysis=AnalysisConfig(enabled=False))
    res = run_study(cfg)
    b = res["tasks"]["boolq"]["budgets"]
    assert b["grpo"]["rollouts"] == b["es_short"]["rollouts"] == 48
    assert "matched" in (tmp_path / "m" / "report.md").read_text()
    assert not (tmp_path / "m" / "analysis.json").exists()


def test_a_study_config_built_in_python_is_validated_before_anything_is_written(tmp_path, cache_dir):
    from esgrpo.errors import ConfigError

    cfg = small_study(tmp_path / "study", cache_dir)
    bad = dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, probe_points=1))
    with pytest.raises(ConfigError, match=r"analysis\.probe_points"):
        run_study(bad)
    assert not (tmp_path / "study").exists()


@pytest.mark.slow
def test_the_real_model_study_config_runs_end_to_end_on_tiny(tmp_path, cache_dir):
    """configs/study-smollm2.yaml with the tiny model in SmolLM2's place and tiny budgets: its own settings
    (few-shot prompts, the stop rule, GRPO with shared prompts and a constant lr, ES checkpoints every
    iteration, the math -> boolq sequence) run end to end into a report."""
    from pathlib import Path

    from esgrpo.config import load_config

    cfg = load_config(StudyConfig, Path(__file__).parents[1] / "configs" / "study-smollm2.yaml")
    assert cfg.model.name == "smollm2-135m" and cfg.grpo.shared_prompt and cfg.prompt.shots == 2
    r = dataclasses.replace
    cfg = r(cfg, model=r(cfg.model, name="tiny", cache_dir=cache_dir),
            data=r(cfg.data, n_train=12, n_test=6), generation=r(cfg.generation, max_new_tokens=16),
            es=r(cfg.es, population=4, iterations=1, batch_size=4, max_new_tokens=16),
            grpo=r(cfg.grpo, steps=1, prompts_per_step=2, group_size=4, max_new_tokens=16, lr=1e-3),
            out=str(tmp_path / "s"),
            analysis=r(cfg.analysis, n_examples=4, alphas=3, probe_points=2, probe_n_examples=4, kl_prompts=2),
            sequential=r(cfg.sequential, n_test=6, kl_prompts=2))
    res = run_study(cfg)
    assert set(res["tasks"]) == {"math", "boolq"}
    for task in ("math", "boolq"):
        import yaml

        run = yaml.safe_load((tmp_path / "s" / "runs" / f"{task}-grpo" / "config.yaml").read_text())
        assert run["grpo"]["shared_prompt"] is True and run["prompt"]["shots"] == 2
    seq = json.loads((tmp_path / "s" / "sequence" / "sequence.json").read_text())
    assert seq["settings"]["order"] == ["math", "boolq"]
    assert all([x["task"] for x in seq["methods"][m]["stages"]] == ["math", "boolq"]
               for m in ("es_short", "es_long", "grpo"))
    assert "## Sequential" in (tmp_path / "s" / "report.md").read_text()


def test_only_names_variant_arms_as_cells():
    from esgrpo.errors import ConfigError
    from esgrpo.study import parse_only

    got = parse_only(["math:lowrank1", "math:es_short", "boolq:grpo"], ["math", "boolq"], ("lowrank1", "awd"))
    assert got == {"math": ("lowrank1", "es"), "boolq": ("grpo",)}
    with pytest.raises(ConfigError, match="lowrank1"):  # the error lists the arms there are
        parse_only(["math:lowrank2"], ["math"], ("lowrank1",))


def test_the_study_keeps_es_checkpoint_every_and_pins_es_short(tmp_path, monkeypatch):
    """ES long's run resumes from the user's checkpoint interval (SmolLM2: every iteration, minutes each), and ES
    short's step is pinned: written and never pruned, whatever the interval."""
    import esgrpo.study as study

    seen = {}

    def fake_training(method, tc, path, **kw):
        seen["es"] = tc.es
        raise RuntimeError("stop")

    monkeypatch.setattr(study, "run_training", fake_training)
    cfg = small_study(tmp_path / "s", "cache")
    cfg = dataclasses.replace(cfg, es=dataclasses.replace(cfg.es, checkpoint_every=1, checkpoint_keep=1))
    with pytest.raises(RuntimeError, match="stop"):
        study.train_es_cells(cfg, "math", tmp_path / "s")
    es = seen["es"]
    assert (es.iterations, es.checkpoint_every, es.checkpoint_keep, es.checkpoint_pin) == (4, 1, 1, [2])
