"""ES: the update against a hand computation, antithetic pairs, common random numbers, budget
accounting, bit-exact replay from the update log, exact resume, and the random-walk claim."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from conftest import StubTask, make_micro_policy
from esgrpo.checkpoints import same_weights, step_name
from esgrpo.errors import ConfigError, EsgrpoError
from esgrpo.runs import RunDir
from esgrpo.tasks.base import Example
from esgrpo.train.es import (
    ESConfig,
    apply_update,
    draw_batch,
    draw_members,
    replay,
    replay_run,
    train_es,
    zscore,
)
from esgrpo.train.noise import NOISE_VERSION, tensor_noise
from esgrpo.train.population import Batch, PopulationResult, Score, SequentialEvaluator, TaskScorer


class FakeTask(StubTask):
    """Reward 1.0 when the response contains the letter 'e': varied on a random micro model."""

    name = "fake"

    def reward(self, text: str, example: Example) -> float:
        return 1.0 if "e" in text else 0.0


class RaisingTask(FakeTask):
    def reward(self, text: str, example: Example) -> float:
        raise ValueError("a broken reward")


pytestmark = pytest.mark.usefixtures("one_thread")  # the shared fixture in conftest.py


EXAMPLES = [Example(uid=str(i), question=f"Compute {i}+{2 * i}.", target={}) for i in range(6)]


def small_cfg(**kw) -> ESConfig:
    base = {"population": 4, "sigma": 0.05, "alpha": 0.01, "iterations": 3, "batch_size": 3,
            "decoding": "sample", "max_new_tokens": 6, "checkpoint_every": 0}
    return ESConfig(**{**base, **kw})


def params_of(policy) -> list[torch.Tensor]:
    return [p.detach().clone() for _, p in policy.named_parameters()]


class ScriptedEvaluator:
    """A PopulationEvaluator whose fitness values are given (weights untouched)."""

    def __init__(self, fitness_per_iteration: list[list[float]]) -> None:
        self.script = list(fitness_per_iteration)
        self.calls: list[tuple[list, Batch]] = []

    def evaluate(self, members, batch):
        self.calls.append((members, batch))
        return PopulationResult(fitness=self.script[len(self.calls) - 1],
                                rollouts=len(members) * len(batch.indices), tokens=0)


# ----------------------------------------------------------------------------------------------
# The update


def test_zscore_is_population_standardization():
    f = [1.0, 0.0, 0.5, 0.25]
    expected = (np.array(f) - np.mean(f)) / (np.std(f) + 1e-8)
    assert np.allclose(zscore(f), expected, rtol=0, atol=1e-15)
    assert zscore([0.5, 0.5, 0.5]) == [0.0, 0.0, 0.0]  # no signal -> no update


def test_apply_update_is_alpha_over_n_sum_z_eps_on_toy_linear():
    lin = torch.nn.Linear(7, 5)
    params = list(lin.named_parameters())
    before = {n: p.detach().double().clone() for n, p in params}
    params = [(n, p.detach()) for n, p in params]
    members = [(11, 1), (22, 1), (33, -1)]
    z, alpha = [1.2, -0.2, -1.0], 0.1
    coefs = [alpha / 3 * zn for zn in z]
    norm = apply_update(params, members, coefs)
    sq = 0.0
    for name, p in params:
        hand = before[name] + alpha / 3 * sum(zn * sign * tensor_noise(seed, name, p.shape).double()
                                             for (seed, sign), zn in zip(members, z, strict=True))
        assert torch.allclose(p.double(), hand, rtol=0, atol=1e-6)
        sq += float(((p.double() - before[name]) ** 2).sum())
    assert norm == pytest.approx(math.sqrt(sq), rel=1e-5)


def test_train_es_update_matches_hand_computation(tmp_path):
    """One iteration of the trainer with scripted fitness: theta_1 = theta_0 + alpha/N sum z_n eps_n."""
    policy = make_micro_policy()
    before = {n: p.detach().double().clone() for n, p in policy.named_parameters()}
    cfg = small_cfg(iterations=1, alpha=0.02)
    fitness = [1.0, 0.0, 0.5, 0.25]
    evaluator = ScriptedEvaluator([fitness])
    train_es(policy, FakeTask(), EXAMPLES, cfg, RunDir(tmp_path / "run"), evaluator=evaluator)
    members = evaluator.calls[0][0]
    z = (np.array(fitness) - np.mean(fitness)) / (np.std(fitness) + 1e-8)
    for name, p in policy.named_parameters():
        step = sum(float(zn) * sign * tensor_noise(seed, name, p.shape).double()
                   for (seed, sign), zn in zip(members, z, strict=True))
        # fp32 accumulation rounds at ~1e-7 on weights ~1; the step itself is ~1e-2
        assert torch.allclose(p.double(), before[name] + cfg.alpha / cfg.population * step, rtol=0, atol=1e-6)
        assert float((p.detach().double() - before[name]).abs().max()) > 1e-3


def test_zscored_noise_fitness_moves_weights_as_a_random_walk():
    """The paper's diffusion claim: with z-scored fitness, an update has norm alpha * sqrt(d / N) whatever
    the signal, so under fitness unrelated to the weights theta does a random walk: ||theta_T - theta_0||
    grows as alpha * sqrt(T d / N) (like sqrt(T), not T)."""
    d, n_pop, alpha, T = 20_000, 8, 0.01, 16
    w = torch.zeros(d)
    params = [("w", w)]
    cfg = ESConfig(population=n_pop, alpha=alpha, iterations=T)
    rng = np.random.default_rng(0)
    norms = []
    for it in range(1, T + 1):
        members = draw_members(cfg, it)
        z = zscore(rng.random(n_pop).tolist())  # pure-noise fitness
        norms.append(apply_update(params, members, [alpha / n_pop * zn for zn in z]))
    step = alpha * math.sqrt(d / n_pop)
    assert all(abs(nm / step - 1) < 0.05 for nm in norms)
    assert float(w.norm()) / (step * math.sqrt(T)) == pytest.approx(1.0, abs=0.05)


# ----------------------------------------------------------------------------------------------
# Members and batches


def test_antithetic_members_are_mirrored_pairs(tmp_path):
    cfg = small_cfg(antithetic=True, iterations=1)
    members = draw_members(cfg, 1)
    assert len(members) == 2 * cfg.population
    for plus, minus in zip(members[0::2], members[1::2], strict=True):
        assert plus[0] == minus[0] and (plus[1], minus[1]) == (1, -1)
    assert len({s for s, _ in members}) == cfg.population
    assert all(sign == 1 for _, sign in draw_members(small_cfg(), 1))
    # In the trainer: all 2N members are z-scored together and logged with their signs.
    policy = make_micro_policy()
    fitness = [1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.25, 0.75]
    run = RunDir(tmp_path / "run")
    train_es(policy, FakeTask(), EXAMPLES, cfg, run, evaluator=ScriptedEvaluator([fitness]))
    row = run.metrics("updates.jsonl")[0]
    assert row["signs"] == [1, -1] * cfg.population
    assert row["coefs"] == pytest.approx([cfg.alpha / 8 * z for z in zscore(fitness)], rel=1e-12)


def test_members_and_batches_are_deterministic_per_iteration():
    cfg = small_cfg()
    assert draw_members(cfg, 5) == draw_members(cfg, 5)
    assert draw_members(cfg, 5) != draw_members(cfg, 6)
    assert draw_members(cfg, 5) != draw_members(small_cfg(seed=1), 5)
    prompts = [[i] for i in range(len(EXAMPLES))]
    b1, b2 = draw_batch(cfg, 2, EXAMPLES, prompts), draw_batch(cfg, 2, EXAMPLES, prompts)
    assert b1.indices == b2.indices and b1.sample_seeds == b2.sample_seeds
    assert len(b1.indices) == 3 and len(set(b1.indices)) == 3
    assert b1.prompt_ids == [prompts[i] for i in b1.indices]
    assert len({tuple(draw_batch(cfg, it, EXAMPLES, prompts).indices) for it in range(1, 9)}) > 1
    greedy_all = draw_batch(small_cfg(batch_size=0, decoding="greedy"), 1, EXAMPLES, prompts)
    assert greedy_all.indices == list(range(6))
    assert draw_batch(small_cfg(decoding="greedy"), 1, EXAMPLES, prompts).sample_seeds is None


def test_common_random_numbers_within_an_iteration(tmp_path):
    """All members of an iteration decode the same prompts with the same sampling seeds: with zero-size
    perturbations (an evaluator with sigma 0) every member produces the same responses, hence the same fitness."""
    policy = make_micro_policy()
    cfg = small_cfg(iterations=2)
    seen: list[tuple[int, list, list, list]] = []
    scorer = TaskScorer(FakeTask(), cfg.max_new_tokens, temperature=1.0, top_p=0.95)

    def spy(pol, batch):
        out = pol.generate(batch.prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=0.95,
                           seeds=batch.sample_seeds)
        seen.append((batch.iteration, batch.prompt_ids, batch.sample_seeds, out.response_ids))
        return scorer(pol, batch)

    run = RunDir(tmp_path / "run")
    train_es(policy, FakeTask(), EXAMPLES, cfg, run, evaluator=SequentialEvaluator(policy, spy, 0.0))
    assert len(seen) == 2 * cfg.population
    for it in (1, 2):
        rows = [s for s in seen if s[0] == it]
        assert all(r[1:] == rows[0][1:] for r in rows)  # same prompts, seeds, and (sigma=0) responses
    assert seen[0][2] != seen[-1][2]  # fresh sampling seeds each iteration
    for row in run.metrics("updates.jsonl"):
        assert len(set(row["fitness"])) == 1
        assert all(c == 0.0 for c in row["coefs"])


# ----------------------------------------------------------------------------------------------
# The training loop


def test_budget_counters_and_metrics(tmp_path):
    policy = make_micro_policy()
    run = RunDir(tmp_path / "run")
    cfg = small_cfg(iterations=3)
    res = train_es(policy, FakeTask(), EXAMPLES, cfg, run)
    assert res["iterations"] == 3
    assert res["rollouts"] == 3 * cfg.population * cfg.batch_size
    rows = run.metrics()
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert rows[-1]["rollouts"] == res["rollouts"]
    assert 0 < res["tokens"] <= res["rollouts"] * cfg.max_new_tokens
    assert rows[-1]["tokens"] == res["tokens"]
    for key in ("reward_mean", "reward_std", "reward_min", "reward_max", "t_perturb", "t_generate",
                "t_reward", "t_restore", "t_update", "update_norm", "reward_errors", "seconds"):
        assert key in rows[0], key
    assert res["final_fitness"]["reward_mean"] == rows[-1]["reward_mean"]
    assert res["peak_memory_bytes"] > 0 and res["reward_errors"] == 0
    assert (run.path / "checkpoints" / "final" / "trainer_state.json").exists()
    assert run.read_results()["rollouts"] == res["rollouts"]


def test_stops_on_max_rollouts_without_splitting_an_iteration(tmp_path):
    per_iteration = 4 * 3
    cfg = small_cfg(iterations=0, max_rollouts=2 * per_iteration + per_iteration // 2)
    res = train_es(make_micro_policy(), FakeTask(), EXAMPLES, cfg, RunDir(tmp_path / "run"))
    assert res["iterations"] == 2 and res["rollouts"] == 2 * per_iteration


class SometimesRaisingTask(FakeTask):
    calls = 0

    def reward(self, text: str, example: Example) -> float:
        type(self).calls += 1
        if type(self).calls % 3 == 0:
            raise ValueError("a reward that fails now and then")
        return super().reward(text, example)


def test_a_few_reward_errors_are_counted_not_fatal(tmp_path):
    run = RunDir(tmp_path / "run")
    res = train_es(make_micro_policy(), SometimesRaisingTask(), EXAMPLES, small_cfg(iterations=1), run)
    assert res["reward_errors"] == 4  # one of each member's 3 responses
    assert run.metrics()[0]["reward_errors"] == 4


def test_a_reward_that_fails_for_most_of_a_batch_stops_the_run(tmp_path):
    from esgrpo.tasks.base import RewardError

    with pytest.raises(RewardError, match="the reward failed for 3 of the 3 responses"):
        train_es(make_micro_policy(), RaisingTask(), EXAMPLES, small_cfg(iterations=1), RunDir(tmp_path / "run"))


def test_config_checks(tmp_path):
    from esgrpo.config import from_dict

    with pytest.raises(ConfigError):
        from_dict(ESConfig, {"iterations": 0, "max_rollouts": 0})
    with pytest.raises(ConfigError):
        from_dict(ESConfig, {"population": 1})
    assert from_dict(ESConfig, {"population": 1, "antithetic": True}).members_per_iteration == 2
    with pytest.raises(ConfigError):
        train_es(make_micro_policy(), FakeTask(), EXAMPLES, small_cfg(batch_size=7), RunDir(tmp_path))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replay_rebuilds_the_weights_bit_exactly(tmp_path, dtype):
    policy = make_micro_policy(dtype=dtype)
    base = params_of(policy)
    run = RunDir(tmp_path / "run")
    train_es(policy, FakeTask(), EXAMPLES, small_cfg(iterations=3, checkpoint_every=1, kl_every=2), run)
    rows = run.metrics()
    assert any(r["update_norm"] > 0 for r in rows)  # the test is not vacuous: weights moved
    assert "kl" in rows[1] and rows[1]["kl"] >= 0 and "kl" not in rows[0]
    assert any(not torch.equal(a, b) for a, b in zip(base, params_of(policy), strict=True))

    out = replay_run(run.path)
    assert out == {"out": str(run.path / "replay"), "iterations": 3, "matches_final": True}
    rebuilt = replay(run.path / "checkpoints" / step_name(0), run.path / "updates.jsonl")
    for (name, p), (_, q) in zip(policy.named_parameters(), rebuilt.named_parameters(), strict=True):
        assert q.dtype == dtype and torch.equal(p, q), name
    replay_run(run.path, out_dir=tmp_path / "upto1", upto=1)
    assert same_weights(tmp_path / "upto1", run.path / "checkpoints" / step_name(1))
    assert not same_weights(tmp_path / "upto1", run.path / "checkpoints" / "final")


def test_a_log_made_with_another_noise_version_is_neither_replayed_nor_resumed(tmp_path):
    import json

    run = RunDir(tmp_path / "run")
    train_es(make_micro_policy(), FakeTask(), EXAMPLES, small_cfg(iterations=2, checkpoint_every=1), run)
    rows = run.metrics("updates.jsonl")
    assert {r["noise"] for r in rows} == {NOISE_VERSION}
    for r in rows:  # as an esgrpo with the earlier per-tensor torch.Generator noise wrote them
        del r["noise"]
    (run.path / "updates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EsgrpoError, match="noise version 'v1 .*this esgrpo draws"):
        replay_run(run.path)
    with pytest.raises(EsgrpoError, match="cannot resume .* noise version"):
        train_es(make_micro_policy(), FakeTask(), EXAMPLES, small_cfg(iterations=3, checkpoint_every=1), run,
                 resume=True)


@pytest.mark.parametrize("chunk", [4, 36, 1 << 22])
def test_apply_update_does_not_depend_on_the_chunk_size(chunk):
    policy = make_micro_policy()
    params = policy.named_parameters()
    members, coefs = [(11, 1), (12, -1), (13, 1)], [0.01, 0.02, -0.005]
    reference = make_micro_policy()
    apply_update(reference.named_parameters(), members, coefs)
    apply_update(params, members, coefs, chunk=chunk)
    for (name, p), (_, q) in zip(params, reference.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_resume_equals_uninterrupted_run(tmp_path):
    cfg = small_cfg(iterations=4, checkpoint_every=2)
    full = make_micro_policy()
    full_run = RunDir(tmp_path / "full")
    train_es(full, FakeTask(), EXAMPLES, cfg, full_run)

    # A run that crashed after iteration 3: checkpoint at 2, logs up to 3, no final checkpoint.
    cut = RunDir(tmp_path / "cut")
    train_es(make_micro_policy(), FakeTask(), EXAMPLES, small_cfg(iterations=3, checkpoint_every=2), cut)
    shutil.rmtree(cut.path / "checkpoints" / "final")
    resumed = make_micro_policy()  # the base, as the CLI would load it
    res = train_es(resumed, FakeTask(), EXAMPLES, cfg, cut, resume=True)

    assert res["iterations"] == 4 and res["rollouts"] == 4 * 4 * 3
    for (name, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert cut.metrics("updates.jsonl") == full_run.metrics("updates.jsonl")
    assert [r["iteration"] for r in cut.metrics()] == [1, 2, 3, 4]
    with pytest.raises(ConfigError):  # changing what the weights depend on is refused
        train_es(make_micro_policy(), FakeTask(), EXAMPLES, small_cfg(iterations=5, sigma=0.1), cut,
                 resume=True)


def test_score_fn_failure_leaves_weights_restored():
    policy = make_micro_policy()
    before = params_of(policy)

    def boom(pol, batch) -> Score:
        raise RuntimeError("generation failed")

    ev = SequentialEvaluator(policy, boom, sigma=0.1)
    batch = Batch(iteration=1, indices=[0], examples=EXAMPLES[:1], prompt_ids=[[1, 2]], sample_seeds=None)
    with pytest.raises(RuntimeError):
        ev.evaluate([(1, 1)], batch)
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(policy), strict=True))
