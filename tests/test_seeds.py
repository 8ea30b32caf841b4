"""seeds.py + analysis/seeds.py + report/seeds.py: a study over two seeds on the shipped tiny model with very
small budgets: one complete study per seed, the nulls between seeds, intervals computed by hand, reuse."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from esgrpo.analysis.seeds import findings, path_list
from esgrpo.analysis.stats import t_quantile
from esgrpo.config import (
    AnalysisConfig,
    DataConfig,
    ESConfig,
    GenerationConfig,
    GRPOConfig,
    ModelConfig,
    NullsConfig,
    StudyConfig,
)
from esgrpo.errors import ConfigError
from esgrpo.seeds import run_seeds, seed_config
from esgrpo.study import run_study


def two_seed_study(out, cache_dir, seeds=(3, 5)) -> StudyConfig:
    return StudyConfig(
        model=ModelConfig(name="tiny", cache_dir=cache_dir),
        data=DataConfig(tasks=["math"], n_train=12, n_test=10),
        generation=GenerationConfig(max_new_tokens=24, batch_size=16),
        es=ESConfig(population=4, sigma=0.02, alpha=0.02, iterations=1, batch_size=6, max_new_tokens=24),
        grpo=GRPOConfig(steps=1, prompts_per_step=3, group_size=4, max_new_tokens=24, lr=1e-3),
        es_long_factor=2, extra_models=[], out=str(out), seeds=list(seeds), es_variants={"lowrank1": {"rank": "1"}},
        nulls=NullsConfig(n_examples=8, alphas=3, resamples=50),
        analysis=AnalysisConfig(n_examples=4, alphas=3, probe_points=2, probe_n_examples=3, kl_prompts=2,
                                kl_samples=1, kl_max_new_tokens=6, heldout_docs=10))


def test_seed_config_sets_the_trainers_seeds_and_a_directory_per_seed(tmp_path):
    cfg = two_seed_study(tmp_path / "s", "cache")
    sub = seed_config(cfg, 5)
    assert (sub.es.seed, sub.grpo.seed, sub.seeds) == (5, 5, [])
    assert sub.out == str(tmp_path / "s" / "seed-5")
    assert (sub.data, sub.analysis, sub.model) == (cfg.data, cfg.analysis, cfg.model)  # only the seeds differ


def test_run_study_points_a_multi_seed_config_to_run_seeds(tmp_path):
    with pytest.raises(ConfigError, match="run_seeds"):
        run_study(two_seed_study(tmp_path / "s", "cache"))
    assert not (tmp_path / "s").exists()


def test_seeds_must_be_distinct():
    from esgrpo.config import validate

    with pytest.raises(ConfigError, match="seeds"):
        validate(StudyConfig(seeds=[1, 1]))


def test_path_list_pairs_seeds_for_the_nulls_and_pairs_methods_within_a_seed():
    paths = path_list([0, 1, 2])
    kinds = [k for k, _, _ in paths]
    assert kinds.count("es_long|es_long") == kinds.count("grpo|grpo") == kinds.count("es_long|grpo") == 3
    assert ("es_long|grpo", (1, "es_long"), (1, "grpo")) in paths
    with_variant = path_list([0, 1, 2], ["lowrank1"])
    kinds = [k for k, _, _ in with_variant]
    assert kinds.count("lowrank1|lowrank1") == kinds.count("lowrank1|grpo") == 3
    assert set(with_variant) - set(paths) == {(k, a, b) for k, a, b in with_variant if "lowrank1" in k}


@pytest.mark.slow
def test_two_seed_study_end_to_end_intervals_by_hand_and_rerun_reuses(tmp_path, cache_dir):
    cfg = two_seed_study(tmp_path / "study", cache_dir)
    res = run_seeds(cfg)
    root = tmp_path / "study"

    # one complete study per seed, each trained with its own seed
    per = {}
    for s in (3, 5):
        d = root / f"seed-{s}"
        assert (d / "report.md").exists() and (d / "analysis.json").exists()
        es_cfg = json.loads((d / "runs" / "math-es" / "results.json").read_text())["config"]
        assert es_cfg["seed"] == s
        per[s] = json.loads((d / "results.json").read_text())
    a3, a5 = (per[s]["tasks"]["math"]["accuracy"]["grpo"] for s in (3, 5))

    # Table 1's GRPO cell: the Student-t interval with 1 degree of freedom, by hand
    iv = res["table1"]["math/grpo"]
    mean = (a3 + a5) / 2
    half = t_quantile(0.975, 1) * abs(a3 - a5) / math.sqrt(2) / math.sqrt(2)
    assert iv["mean"] == pytest.approx(mean) and iv["values"] == [a3, a5]
    assert (iv["lo"], iv["hi"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert res["table1"]["math/base"]["sd"] == 0.0  # the same base model for every seed

    # nulls: cosines between seeds and the barrier paths, each with its bootstrap interval
    nulls = json.loads((root / "seeds.json").read_text())
    cos = nulls["cosine"]["math"]
    assert set(cos["es_long|es_long"]) == set(cos["grpo|grpo"]) == {"3|5"}
    assert -1 <= cos["grpo|grpo"]["3|5"] <= 1 and cos["inv_sqrt_d"] == pytest.approx(1 / math.sqrt(cos["d"]))
    assert set(cos["lowrank1|lowrank1"]) == {"3|5"}  # the variant arm's own seed-vs-seed null
    bars = nulls["barriers"]["math"]
    assert len(bars) == 7  # ES 3->5, GRPO 3->5, ES->GRPO within seeds 3 and 5; the same for the variant arm
    for p in bars.values():
        b = p["barrier"]
        assert b["n"] == 8 and b["lo"] <= b["value"] <= b["hi"] and len(p["accuracy"]) == 3
    # an end point's accuracy is its checkpoint's accuracy on those examples: the same answer from both ends
    assert bars["es_long@3->es_long@5"]["accuracy"][0] == bars["es_long@3->grpo@3"]["accuracy"][0]

    lr = [per[s]["tasks"]["math"]["accuracy"]["lowrank1"] - per[s]["tasks"]["math"]["accuracy"]["es_short"]
          for s in (3, 5)]
    assert res["table1"]["math/lowrank1 - es_short"]["values"] == pytest.approx(lr)
    assert any(f["claim"].startswith("[lowrank1] matches or beats ES short") for f in res["findings"])
    assert "barrier lowrank1|lowrank1" in res["nulls"]["math"]
    verdicts = {f["verdict"].split(" ")[0] for f in res["findings"]}
    assert verdicts <= {"yes", "no", "undecided", "not"}
    md = (root / "report.md").read_text()
    for section in ("Findings", "Table 1 over seeds", "Nulls between seeds", "ES variant arms", "Geometry over seeds"):
        assert f"## {section}" in md
    assert (root / "figures" / "table1-seeds.png").exists()
    assert "data:image/png;base64," in (root / "report.html").read_text()

    # a rerun reuses every seed's runs and the nulls: nothing is trained or evaluated again
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.jsonl")}
    seeds_json = (root / "seeds.json").read_text()
    again = run_seeds(cfg)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jsonl")} == before
    assert json.loads((root / "seeds.json").read_text())["barriers"] == json.loads(seeds_json)["barriers"]
    assert again["table1"] == res["table1"]
    for s in (3, 5):  # a study's seconds sum its invocations: the rerun adds to the first run's time
        after = json.loads((root / f"seed-{s}" / "results.json").read_text())["seconds"]
        assert after >= per[s]["seconds"] > 0


def test_findings_decide_from_the_interval():
    iv = lambda lo, hi: {"mean": (lo + hi) / 2, "lo": lo, "hi": hi, "n": 3, "values": []}  # noqa: E731
    agg = {"table1": {"math/gain es_short": iv(0.02, 0.08), "math/gain grpo": iv(-0.05, 0.04),
                      "math/es_short - grpo": iv(-0.09, -0.01)},
           "geometry": {"math/norm ratio es_long/grpo": iv(20.0, 40.0)}, "sequence": {}}
    got = {(f["claim"].split(" (")[0]): f["verdict"] for f in findings(agg)}
    assert got["ES short improves on the base model"] == "yes"
    assert got["GRPO improves on the base model"] == "undecided"
    assert got["ES short matches or beats GRPO"] == "no"
    assert got["ES moves the weights further than GRPO"] == "yes"
    assert got["ES drifts more off-task than GRPO"] == "not measured"


def test_variant_findings_answer_the_three_questions_from_the_intervals():
    iv = lambda lo, hi: {"mean": (lo + hi) / 2, "lo": lo, "hi": hi, "n": 3, "values": []}  # noqa: E731
    agg = {"table1": {"math/gain lowrank1": iv(0.01, 0.05), "math/lowrank1 - es_short": iv(-0.03, 0.04),
                      "math/lowrank1 - grpo": iv(-0.09, -0.02)},
           "geometry": {"math/norm lowrank1 / predicted": iv(0.97, 1.02), "math/norm ratio lowrank1/grpo": iv(9, 12),
                        "math/cosine grpo|lowrank1": iv(-0.001, 0.001),
                        "math/cosine es_short|lowrank1": iv(-1e-3, 1e-3),
                        "math/off-task KL lowrank1 - es_short": iv(-0.01, 0.01)},
           "sequence": {"mean_forgetting lowrank1 - es_short": iv(0.01, 0.03)},
           "nulls": {"math": {"cosine grpo|grpo": iv(0.2, 0.4), "cosine es_short|es_short": iv(-2e-3, 2e-3)}}}
    got = {f["claim"].split(" (")[0]: f["verdict"] for f in findings(agg)}
    assert got["[lowrank1] improves on the base model"] == "yes"
    assert got["[lowrank1] matches or beats ES short"] == "undecided"  # consistent with matching
    assert got["[lowrank1] matches or beats GRPO"] == "no"
    assert got["[lowrank1] its norm is the walk's prediction"] == "yes"
    assert got["[lowrank1] reaches another solution than GRPO"] == "yes"
    assert got["[lowrank1] its update is as orthogonal to full-rank ES short's"] == "yes"
    assert got["[lowrank1] drifts more off-task than ES short"] == "undecided"
    assert got["[lowrank1] drifts more off-task than GRPO"] == "not measured"
    assert got["In sequence, lowrank1 forgets more than ES short"] == "yes"


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_config_loads_and_validates(path):
    from esgrpo.config import load_config, validate

    cfg = load_config(StudyConfig, path)
    for s in cfg.seeds:  # a multi-seed study: every seed's study is valid too
        validate(seed_config(cfg, s))
    if path.name == "study-seeds.yaml":
        default = load_config(StudyConfig, path.parent / "study-default.yaml")
        assert cfg.seeds == [0, 1, 2] and cfg.nulls.n_examples >= 500
        # the same study as the default, seeds and run control aside
        assert (cfg.es, cfg.grpo, cfg.data, cfg.analysis, cfg.sequential) == \
            (default.es, default.grpo, default.data, default.analysis, default.sequential)


def test_per_seed_values_in_points_are_shown_to_a_tenth_like_their_mean():
    """A difference of equal accuracies can be 1e-17 of float round-off: in points it reads 0.0, not 2.78e-15."""
    from esgrpo.report.seeds import part_rows

    rows = part_rows({"mean_forgetting es_long - grpo": {"mean": -0.0333, "lo": -0.105, "hi": 0.038, "n": 3,
                                                          "values": [-0.05, 2.7755575615628914e-17, -0.05]},
                      "math/norm grpo": {"mean": 0.403, "lo": 0.378, "hi": 0.429, "n": 3,
                                         "values": [0.415, 0.3951, 0.4]}})
    assert rows[0] == ["mean_forgetting es_long - grpo (points)", "-3.3 [-10.5, 3.8]", "3", "-5.0, 0.0, -5.0"]
    assert rows[1] == ["math/norm grpo", "0.403 [0.378, 0.429]", "3", "0.415, 0.395, 0.4"]
