"""The theory against an ES run: the walk replayed from its log sums to the checkpoint delta, and on a
landscape the reward cannot see (scripted random fitness) the drift is the predicted random walk."""

from __future__ import annotations

import math
import random

import pytest
import torch

from conftest import StubTask, make_micro_policy
from esgrpo.runs import RunDir
from esgrpo.tasks.base import Example
from esgrpo.theory.validate import seed_coefficients, walk_drift
from esgrpo.train.es import ESConfig, train_es
from esgrpo.train.population import PopulationResult

EXAMPLES = [Example(uid=str(i), question=f"Compute {i}+{i}.", target={}) for i in range(4)]


class NoTask(StubTask):
    def reward(self, text, example):
        return 0.0


class RandomFitness:
    """Fitness unrelated to the weights: a flat landscape, so ES is a pure random walk."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def evaluate(self, members, batch):
        return PopulationResult(fitness=[self.rng.random() for _ in members], rollouts=len(members), tokens=0)


@pytest.fixture(scope="module")
def es_run(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("es")
    cfg = ESConfig(population=4, sigma=0.01, alpha=0.01, iterations=12, batch_size=2, decoding="greedy",
                   max_new_tokens=2, checkpoint_every=0)
    train_es(make_micro_policy(), NoTask(), EXAMPLES, cfg, RunDir(path), evaluator=RandomFitness(0))
    return path, cfg


def test_exact_decomposition_of_an_es_update_sums_back_to_the_checkpoint_delta(es_run):
    path, cfg = es_run
    res = walk_drift(path, cfg.alpha, cfg.population)
    assert res["iterations"] == 12 and len(seed_coefficients(path / "updates.jsonl")) == 12
    assert res["decomposition_rel_error"] < 1e-5  # fp32 rounding of the stored weights only
    assert res["measured_norm"] == pytest.approx(math.sqrt(res["measured_sq"][-1]))


def test_es_norm_matches_alpha_sqrt_dT_over_N_on_a_flat_landscape(es_run):
    path, cfg = es_run
    res = walk_drift(path, cfg.alpha, cfg.population)
    # z-scored fitness: sum z^2 = N every iteration, so the conditioned and the paper's predictions agree
    assert res["predicted_norm_conditioned"] == pytest.approx(res["predicted_norm_paper"], rel=1e-6)
    # d ~ 2e4 coordinates: the chi-square spread of ||delta||^2 is ~1%; allow 5%
    assert res["measured_norm"] == pytest.approx(res["predicted_norm_paper"], rel=0.05)
    assert res["r2_sq_vs_t"] > 0.99  # squared drift linear in T
    assert res["random_walk_fraction"] > 0.9


def test_alignment_with_a_direction_is_tracked_per_iteration(es_run):
    path, cfg = es_run
    final = path / "checkpoints" / "final"
    res = walk_drift(path, cfg.alpha, cfg.population, direction=final)  # its own direction: cosine 1
    assert res["aligned_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert len(res["aligned"]) == 12


def test_random_walk_kl_is_the_kl_of_the_base_moved_by_a_seeded_gaussian_step():
    from esgrpo.theory.validate import random_walk_kl
    from esgrpo.train.noise import derive_seed, tensor_noise

    class AnyTask(NoTask):
        name = "any"

    base, work = make_micro_policy(), make_micro_policy()
    examples = {"any": EXAMPLES[:2]}
    still = random_walk_kl(base, work, 0.0, examples, 1, 4, seed=0, draws=1, tasks={"any": AnyTask()})
    assert still["kl"]["any"] == pytest.approx(0.0, abs=1e-6)  # no step: the same model
    moved = random_walk_kl(base, work, 0.05, examples, 2, 4, seed=0, draws=2, tasks={"any": AnyTask()})
    assert moved["kl"]["any"] > 0 and len(moved["per_draw"]) == 2
    assert moved["kl"]["any"] == pytest.approx(sum(d["any"] for d in moved["per_draw"]) / 2)
    last = derive_seed(0, "random-walk", 1)  # the work policy holds the last draw's weights
    for (name, p), (_, q) in zip(work.named_parameters(), base.named_parameters(), strict=True):
        assert torch.equal(p, q + 0.05 * tensor_noise(last, name, q.shape)), name
