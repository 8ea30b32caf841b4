"""The ES fitness-signal probe (analysis/fitness_signal.py): its moments by hand, its batches, and the command."""

from __future__ import annotations

import json
import random

import pytest

from esgrpo.analysis.fitness_signal import disjoint_batches, signal_stats, signal_with_intervals
from esgrpo.cli import main
from esgrpo.errors import ConfigError


def test_signal_moments_by_hand():
    # members' fitness on two batches: var 1 and 4 (mean 2.5), covariance 2 -> signal 2, noise 0.5, r = 0.8
    s = signal_stats([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]], batch_size=16)
    assert s["total_var"] == 2.5 and s["signal_var"] == 2.0 and s["noise_var"] == 0.5
    assert s["reliability"] == 0.8
    assert s["batch_for_half"] == 16 * 0.5 / 2.0 and s["batch_for_0.8"] == 4 * 16 * 0.5 / 2.0
    # batches that disagree: no signal, no batch size
    s = signal_stats([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], batch_size=16)
    assert s["signal_var"] == -1.0 and s["reliability"] == 0.0 and s["batch_for_half"] is None


def test_the_probe_separates_signal_from_batch_noise():
    rng = random.Random(0)
    own = [rng.gauss(0, 1) for _ in range(200)]  # the members' own fitness
    noisy = signal_with_intervals([[f + rng.gauss(0, 3) for f in own] for _ in range(4)], 16, resamples=200)
    clean = signal_with_intervals([[f + rng.gauss(0, 0.1) for f in own] for _ in range(4)], 16, resamples=200)
    pure = signal_with_intervals([[rng.gauss(0, 1) for _ in own] for _ in range(4)], 16, resamples=200)
    assert clean["reliability"] > 0.95 and 0.03 < noisy["reliability"] < 0.25  # 1 / (1 + 9) = 0.1
    lo, hi = pure["signal_var_interval"]
    assert lo < 0 < hi and pure["reliability_interval"][0] == 0.0
    assert noisy["batch_for_half"] == pytest.approx(16 * 9, rel=0.5)  # noise 9 per batch of 16, signal 1


def test_batches_are_disjoint_and_seeded():
    b = disjoint_batches(50, 3, 16, seed=7)
    flat = [i for x in b for i in x]
    assert [len(x) for x in b] == [16, 16, 16] and len(set(flat)) == 48 and max(flat) < 50
    assert b == disjoint_batches(50, 3, 16, seed=7) and b != disjoint_batches(50, 3, 16, seed=8)


def test_signal_command_on_tiny(capsys):
    assert main(["signal", "--task", "boolq", "--batches", "2", "--es.population", "4", "--es.batch_size", "8",
                 "--es.sigma", "0.01", "--es.max_new_tokens", "8", "--model.threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["fitness"]) == 2 and all(len(f) == 4 for f in out["fitness"]) and len(out["base_fitness"]) == 2
    assert all(f * 8 == int(f * 8) for row in out["fitness"] for f in row)  # mean rewards of 8 binary prompts
    assert out["signal_var"] == pytest.approx(signal_stats(out["fitness"], 8)["signal_var"])


def test_too_few_examples_for_the_batches_is_one_line_naming_the_keys():
    with pytest.raises(ConfigError, match="es.batch_size 64 need 256 training examples; data.n_train gives 100"):
        from esgrpo.analysis.fitness_signal import fitness_signal
        from esgrpo.config import TrainConfig, load_config

        fitness_signal(load_config(TrainConfig, None, {"data": {"n_train": 100}, "es": {"batch_size": 64}}), batches=4)


def test_signal_takes_a_study_config_for_a_task(capsys):
    """--study: the study's model, data, prompts and ES settings for --task, with the flags over them."""
    assert main(["signal", "--study", "configs/study-default.yaml", "--task", "boolq", "--batches", "2",
                 "--es.population", "4", "--es.batch_size", "8", "--es.max_new_tokens", "8",
                 "--model.threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["task"], out["sigma"], out["population"], out["batch_size"]) == ("boolq", 0.01, 4, 8)
