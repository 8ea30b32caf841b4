"""ES variants: low-rank noise (es.rank, EGGROLL) and anchored weight decay (es.anchor_decay, AWD), each against a
hand computation, bit-exact replay and resume, and their bad inputs."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from conftest import make_micro_policy
from esgrpo.checkpoints import same_weights
from esgrpo.config import validate
from esgrpo.errors import ConfigError
from esgrpo.runs import RunDir
from esgrpo.train.anchor import anchor_step
from esgrpo.train.es import apply_update, replay_run, train_es
from esgrpo.train.lowrank import LowRankPerturbation, factors, lowrank_noise
from esgrpo.train.noise import Perturbation, tensor_noise
from test_es import EXAMPLES, FakeTask, small_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def test_factors_are_the_counter_based_noise_of_each_factor_and_eps_has_unit_variance():
    a, b = factors(5, "w", (300, 200), 4)
    assert a.shape == (300, 4) and b.shape == (200, 4)
    assert torch.equal(a, tensor_noise(5, "w#A", (300, 4))) and torch.equal(b, tensor_noise(5, "w#B", (200, 4)))
    assert not torch.equal(factors(6, "w", (300, 200), 4)[0], a)  # another member, other factors
    eps = lowrank_noise(5, "w", (300, 200), 4)
    assert torch.equal(eps, (a @ b.T) * (1 / math.sqrt(4)))
    assert torch.linalg.matrix_rank(eps) == 4
    assert abs(float(eps.mean())) < 0.02 and abs(float(eps.var()) - 1) < 0.1  # like full-rank eps


@pytest.mark.parametrize("other", ["full", "frozen"])
def test_lowrank_perturbation_by_hand_and_bit_exact_restore(other):
    policy = make_micro_policy()
    params = policy.named_parameters()
    before = [p.detach().clone() for _, p in params]
    pert = LowRankPerturbation(params, rank=2, other=other)
    pert.perturb(9, -1, 0.05)
    full = make_micro_policy()
    Perturbation(full.named_parameters()).perturb(9, -1, 0.05)
    for (name, p), b, (_, f) in zip(params, before, full.named_parameters(), strict=True):
        if p.dim() == 2:
            want = (b.float() + (-0.05) * lowrank_noise(9, name, p.shape, 2)).to(p.dtype)
        else:
            want = f if other == "full" else b
        assert torch.equal(p, want), name
    pert.restore()
    assert all(torch.equal(p, b) for (_, p), b in zip(params, before, strict=True))


def test_lowrank_update_by_hand():
    policy = make_micro_policy()
    params = policy.named_parameters()
    before = [p.detach().clone() for _, p in params]
    members, coefs, r = [(11, 1), (12, -1), (13, 1)], [0.01, 0.02, -0.005], 2
    apply_update(params, members, coefs, rank=r, other="frozen")
    for (name, p), b in zip(params, before, strict=True):
        if p.dim() != 2:
            assert torch.equal(p, b), name  # frozen
            continue
        fs = [factors(s, name, p.shape, r) for s, _ in members]
        a = torch.cat([f[0] * (c * g / math.sqrt(r)) for f, (_, g), c in zip(fs, members, coefs, strict=True)], 1)
        bb = torch.cat([f[1] for f in fs], 1)
        assert torch.equal(p, b + a @ bb.T), name
        # the same as summing the members' materialized eps, up to the order of float sums
        slow = b + sum(c * g * lowrank_noise(s, name, p.shape, r) for (s, g), c in zip(members, coefs, strict=True))
        torch.testing.assert_close(p, slow, rtol=0, atol=1e-6)
        assert torch.linalg.matrix_rank(p - b) == min(len(members) * r, *p.shape)  # not low rank


@pytest.mark.parametrize("cfg_kw", [{"rank": 1}, {"rank": 2, "lowrank_other": "frozen"},
                                    {"anchor_decay": "l2", "anchor_lambda": 20.0},
                                    {"anchor_decay": "l1", "anchor_lambda": 0.01},
                                    {"rank": 1, "anchor_decay": "l2", "anchor_lambda": 20.0}])
def test_variant_runs_replay_and_resume_bit_exactly(tmp_path, cfg_kw):
    cfg = small_cfg(iterations=4, checkpoint_every=2, **cfg_kw)
    full = make_micro_policy()
    base = [p.detach().clone() for _, p in full.named_parameters()]
    run = RunDir(tmp_path / "full")
    train_es(full, FakeTask(), EXAMPLES, cfg, run)
    assert any(not torch.equal(b, p) for b, (_, p) in zip(base, full.named_parameters(), strict=True))
    rows = run.metrics("updates.jsonl")
    assert ("lowrank" in rows[0]) == bool(cfg.rank) and ("anchor" in rows[0]) == (cfg.anchor_decay != "none")
    assert replay_run(run.path)["matches_final"] is True

    cut = RunDir(tmp_path / "cut")  # crashed after iteration 3: checkpoint at 2, no final
    train_es(make_micro_policy(), FakeTask(), EXAMPLES, small_cfg(iterations=3, checkpoint_every=2, **cfg_kw), cut)
    shutil.rmtree(cut.path / "checkpoints" / "final")
    resumed = make_micro_policy()
    train_es(resumed, FakeTask(), EXAMPLES, cfg, cut, resume=True)
    assert same_weights(cut.path / "checkpoints" / "final", run.path / "checkpoints" / "final")
    assert cut.metrics("updates.jsonl") == rows


@pytest.mark.parametrize("decay", ["l2", "l1"])
def test_anchor_step_by_hand(decay):
    torch.manual_seed(0)
    w0 = [torch.randn(5, 7), torch.randn(7)]
    w = [t + 0.3 * torch.randn_like(t) for t in w0]
    params = [(f"p{i}", t.clone()) for i, t in enumerate(w)]
    step = 0.2
    anchor_step(params, w0, decay, step)
    for (_, p), a, x in zip(params, w0, w, strict=True):
        d = x - a
        want = a + (1 - step) * d if decay == "l2" else a + torch.sign(d) * torch.clamp(d.abs() - step, min=0)
        assert torch.equal(p, want)


def test_anchored_decay_keeps_the_walk_near_its_start(tmp_path):
    def drift(**kw) -> float:
        policy = make_micro_policy()
        base = [p.detach().clone() for _, p in policy.named_parameters()]
        train_es(policy, FakeTask(), EXAMPLES, small_cfg(iterations=8, alpha=0.05, **kw), RunDir(tmp_path / str(kw)))
        return math.sqrt(sum(float((p - b).pow(2).sum()) for b, (_, p) in zip(base, policy.named_parameters(),
                                                                                strict=True)))

    free, anchored = drift(), drift(anchor_decay="l2", anchor_lambda=10.0)  # decay step 0.5 per iteration
    assert anchored < 0.75 * free


@pytest.mark.parametrize("kw, key", [({"rank": 1, "numerics": "published"}, "es.rank' = 1 with es.numerics"),
                                     ({"anchor_decay": "l2", "anchor_lambda": -1.0}, "es.anchor_lambda' = -1"),
                                     ({"anchor_decay": "l2", "anchor_lambda": 200.0}, "decay step es.alpha x"),
                                     ({"anchor_decay": "l1", "anchor_lambda": 0.0}, "must lie in \\(0, 1\\)")])
def test_bad_variant_settings_are_one_line_naming_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        validate(small_cfg(**kw), "es.")


def test_a_rank_above_a_matrix_side_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"es.rank' = 33 exceeds the smaller side of weight matrix .* at most 32"):
        train_es(make_micro_policy(), FakeTask(), EXAMPLES, small_cfg(rank=33), RunDir(out))
    assert not out.exists()


@pytest.mark.parametrize("cfg_kw", [{"rank": 1}, {"anchor_decay": "l2", "anchor_lambda": 10.0}])
def test_the_update_norm_follows_the_random_walk_prediction(tmp_path, cfg_kw):
    """A reward the weights cannot move (constant: every z-score 0 would stop the walk, so a random one): the
    walk is pure diffusion, and its norm is awd_norm (es_norm when there is no decay) within a few percent."""
    from esgrpo.theory.predict import awd_norm

    class Dice(FakeTask):
        calls = 0

        def reward(self, text, example):  # a fixed pseudo-random sequence: fitness independent of the weights
            Dice.calls += 1
            return (Dice.calls * 2654435761 % 1000) / 1000

    cfg = small_cfg(iterations=12, alpha=0.02, population=8, **cfg_kw)
    policy = make_micro_policy()
    base = [p.detach().clone() for _, p in policy.named_parameters()]
    train_es(policy, Dice(), EXAMPLES, cfg, RunDir(tmp_path / "run"))
    d = sum(p.numel() for _, p in policy.named_parameters())
    norm = math.sqrt(sum(float((p - b).double().pow(2).sum()) for b, (_, p) in zip(base, policy.named_parameters(),
                                                                                     strict=True)))
    want = awd_norm(cfg.alpha, cfg.members_per_iteration, cfg.iterations, d, cfg.alpha * cfg.anchor_lambda)
    assert 0.93 < norm / want < 1.07


def test_the_batched_population_equals_member_by_member_up_to_rounding():
    """Tiny, greedy, 8 members (antithetic) x 32 math prompts: the batched decode (shared products + each row's
    low-rank term) against member by member with A B^T materialized into the weights (LowRankPerturbation)."""
    from esgrpo.config import ESConfig, ModelConfig
    from esgrpo.models import load_policy
    from esgrpo.tasks import get_task, load_examples
    from esgrpo.train.batched_population import BatchedLowRankEvaluator
    from esgrpo.train.es import draw_batch, draw_members
    from esgrpo.train.population import SequentialEvaluator, es_scorer

    policy = load_policy(ModelConfig(name="tiny"))
    task = get_task("math")
    examples = load_examples("math", "synthetic", "train", 32)
    cfg = ESConfig(population=4, antithetic=True, sigma=0.01, rank=1, batch_size=32, max_new_tokens=40)
    members, batch = draw_members(cfg, 1), draw_batch(cfg, 1, examples, task.prompt_ids(policy, examples))
    before = [p.detach().clone() for _, p in policy.named_parameters()]
    scorer = es_scorer(task, cfg)
    batched = BatchedLowRankEvaluator(policy, scorer, cfg.sigma, rank=1, rows_per_batch=100)
    _, rows = batched.decode(members, batch)
    assert all(torch.equal(b, p) for b, (_, p) in zip(before, policy.named_parameters(), strict=True))  # no writes
    pert = LowRankPerturbation(policy.named_parameters(), rank=1)
    agree = 0
    for m, (seed, sign) in enumerate(members):
        pert.perturb(seed, sign, cfg.sigma)
        one = policy.generate(batch.prompt_ids, max_new_tokens=40, stop=task.stop).response_ids
        pert.restore()
        agree += sum(a == b for a, b in zip(one, rows[m * 32:(m + 1) * 32], strict=True))
    assert agree >= 0.97 * len(rows)  # the same tokens on (nearly) every row
    seq = SequentialEvaluator(policy, scorer, cfg.sigma, rank=1).evaluate(members, batch)
    bat = batched.evaluate(members, batch)
    assert bat.rollouts == seq.rollouts == 8 * 32
    if agree == len(rows):
        assert bat.fitness == seq.fitness
    for f_b, f_s in zip(bat.fitness, seq.fitness, strict=True):
        assert abs(f_b - f_s) <= (len(rows) - agree) / 32 + 1e-12  # only disagreeing rows can differ


def test_variant_arms_are_found_by_name_not_position():
    """The analyses find the variant arms as the arms that are not ES short, ES long or GRPO, in their order,
    wherever they stand in the list."""
    from esgrpo.analysis.study import cosine_pairs, variant_paths
    from esgrpo.config import variant_arms
    from esgrpo.report.seeds import variant_sequence_rows

    arms = ["es_short", "awd", "es_long", "grpo", "lowrank1"]
    assert variant_arms(arms) == ["awd", "lowrank1"]
    pairs = cosine_pairs(arms)
    assert set(pairs) == {("es_long", "grpo"), ("es_short", "grpo"), ("es_short", "es_long"),
                          *((m, v) for v in ("awd", "lowrank1") for m in ("es_short", "es_long", "grpo")),
                          ("awd", "lowrank1")} and len(pairs) == 10
    assert set(variant_paths(arms)) == {"es_short->awd", "awd->grpo", "es_short->lowrank1", "lowrank1->grpo"}
    # the sequence's forgetting is one number per arm (over all tasks), so one row per arm, not per task
    iv = {"mean": 0.01, "lo": 0.0, "hi": 0.02, "n": 3, "values": [0.0, 0.01, 0.02]}
    agg = {"table1": {f"{t}/gain {a}": iv for t in ("math", "boolq") for a in ("es_short", "grpo", "awd")},
           "sequence": {"mean_forgetting awd - es_short": iv, "mean_forgetting awd - grpo": iv}}
    header, rows = variant_sequence_rows(agg)
    assert [r[0] for r in rows] == ["awd"] and len(header) == 3
