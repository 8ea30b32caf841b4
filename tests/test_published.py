"""train/published.py and grpo.numerics published: the public code's arithmetic, computed by hand and compared
bitwise; published runs are deterministic and replayable; the modes agree in float32."""

from __future__ import annotations

import pytest
import torch

from conftest import make_micro_policy
from esgrpo.config import ESConfig, GRPOConfig, from_dict
from esgrpo.errors import ConfigError
from esgrpo.runs import RunDir
from esgrpo.train.es import apply_update, replay_run, train_es
from esgrpo.train.grpo import _Optimizer
from esgrpo.train.noise import Perturbation, tensor_noise
from esgrpo.train.published import PublishedPerturbation, published_update
from test_es import EXAMPLES, FakeTask, params_of, small_cfg

MEMBERS = [(11, 1), (22, -1), (33, 1)]
COEFS = [3e-3, -1.5e-3, 7e-4]


pytestmark = pytest.mark.usefixtures("one_thread")  # the shared fixture in conftest.py


def _linear(dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48).to(dtype)
    return [(n, p.detach()) for n, p in lin.named_parameters()]


def test_published_perturb_and_restore_are_in_place_adds_in_the_weights_dtype():
    params = _linear(torch.bfloat16)
    before = {n: p.clone() for n, p in params}
    pert = PublishedPerturbation(params)
    pert.perturb(7, -1, 0.01)
    for n, p in params:
        d = tensor_noise(7, n, p.shape).to(torch.bfloat16) * -0.01  # the noise drawn, then scaled, in bf16
        assert torch.equal(p, before[n] + d), n  # one bf16 add
    pert.restore()
    for n, p in params:
        d = tensor_noise(7, n, p.shape).to(torch.bfloat16) * -0.01
        assert torch.equal(p, (before[n] + d) - d), n  # subtracting the regenerated noise
    # ... which does not give the weights back in bf16 (the known defect), unlike the exact copy
    assert any(not torch.equal(p, before[n]) for n, p in params)
    exact = Perturbation(params)
    held = {n: p.clone() for n, p in params}
    exact.perturb(7, -1, 0.01)
    exact.restore()
    assert all(torch.equal(p, held[n]) for n, p in params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_published_update_is_n_sequential_in_place_adds(dtype):
    params = _linear(dtype)
    hand = {n: p.clone() for n, p in params}
    for (seed, sign), c in zip(MEMBERS, COEFS, strict=True):
        for n, p in params:
            hand[n] = hand[n] + tensor_noise(seed, n, p.shape).to(dtype) * (c * sign)
    audit: dict[str, float] = {}
    before = {n: p.clone() for n, p in params}
    norm = published_update(params, MEMBERS, COEFS, audit=audit)
    for n, p in params:
        assert torch.equal(p, hand[n]), n
    applied = torch.cat([(p.double() - before[n].double()).flatten() for n, p in params])
    assert norm == pytest.approx(float(applied.norm()), rel=1e-6)
    if dtype == torch.float32:  # float32: the published and exact updates agree to rounding
        exact = _linear(dtype)
        apply_update(exact, MEMBERS, COEFS)
        for (_, p), (_, q) in zip(params, exact, strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
        assert audit["update_cosine"] == pytest.approx(1.0, abs=1e-6)
    else:  # bf16: three roundings per weight instead of one; the audit sees the loss
        assert audit["update_cosine"] < 0.999 and audit["changed_frac"] < 1.0


def test_published_es_run_drifts_logs_the_drift_and_replays_bit_exactly(tmp_path):
    policy = make_micro_policy(dtype=torch.bfloat16)
    run = RunDir(tmp_path / "run")
    train_es(policy, FakeTask(), EXAMPLES, small_cfg(iterations=2, numerics="published"), run)
    rows = run.metrics()
    assert all(r["restore_drift_frac"] > 0 and r["restore_drift_norm"] > 0 for r in rows)  # bf16 restores drift
    assert run.metrics("updates.jsonl")[0]["numerics"] == "published"
    assert replay_run(run.path)["matches_final"] is True  # replay repeats the perturb/restore cycles
    # the same run in exact mode ends elsewhere (and logs no drift)
    exact = make_micro_policy(dtype=torch.bfloat16)
    run2 = RunDir(tmp_path / "exact")
    train_es(exact, FakeTask(), EXAMPLES, small_cfg(iterations=2), run2)
    assert "restore_drift_norm" not in run2.metrics()[0]
    assert any(not torch.equal(a, b) for a, b in zip(params_of(policy), params_of(exact), strict=True))


def test_published_es_is_refused_on_ray():
    with pytest.raises(ConfigError, match="numerics = published"):
        from_dict(ESConfig, {"numerics": "published", "backend": "ray"})


def _grads(optim, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in optim.params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def test_published_grpo_steps_the_bf16_weights_with_bf16_moments_and_audits_against_float32():
    policy = make_micro_policy(dtype=torch.bfloat16)
    optim = _Optimizer(policy, GRPOConfig(lr=1e-3, lr_schedule="constant", numerics="published"), planned=2)
    assert all(m is p for m, p in zip(optim.masters, optim.params, strict=True))  # no float32 masters
    before = [p.detach().clone() for p in optim.params]
    shadow_before = [s.detach().clone() for s in optim.shadow]
    _grads(optim)
    audit: dict[str, float] = {}
    optim.step(audit)
    state = optim.opt.state[optim.params[0]]
    assert state["exp_avg"].dtype == torch.bfloat16  # the moments live in the weights' dtype
    assert "master" not in optim.state()
    intended = torch.cat([(s.detach() - b).double().flatten()
                          for s, b in zip(optim.shadow, shadow_before, strict=True)])
    applied = torch.cat([(p.double() - b.double()).flatten() for p, b in zip(optim.params, before, strict=True)])
    assert audit["intended_norm"] == pytest.approx(float(intended.norm()), rel=1e-5)
    assert audit["update_cosine"] == pytest.approx(float(intended @ applied / (intended.norm() * applied.norm())),
                                                   rel=1e-5)
    assert 0 < audit["update_cosine"] < 1


def test_published_grpo_equals_exact_on_float32_weights():
    a, b = make_micro_policy(), make_micro_policy()
    oa = _Optimizer(a, GRPOConfig(lr=1e-3, lr_schedule="constant"), planned=2)
    ob = _Optimizer(b, GRPOConfig(lr=1e-3, lr_schedule="constant", numerics="published"), planned=2)
    for o in (oa, ob):
        _grads(o)
        o.step({})
    assert all(torch.equal(p, q) for p, q in zip(oa.params, ob.params, strict=True))


def test_published_grpo_is_refused_by_the_trl_backend(tmp_path):
    from esgrpo.train.grpo_trl import trl_arguments

    with pytest.raises(ConfigError, match="grpo.numerics"):
        trl_arguments(GRPOConfig(numerics="published"), tmp_path, 2)
