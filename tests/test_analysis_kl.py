"""KL drift: exactly 0 for identical models, > 0 when perturbed, and the closed form for a known logit shift."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_micro_policy
from esgrpo.analysis.kl import kl_drift, kl_on_responses
from esgrpo.models.policy import Policy
from esgrpo.rollout import positions
from esgrpo.tasks import get_task, load_examples


@pytest.fixture(scope="module")
def examples():
    return {t: load_examples(t, "synthetic", "test", 3, seed=0) for t in ("countdown", "boolq")}


class ShiftedLogits(torch.nn.Module):
    """base logits + c * onehot(v) at every position: a known change of the output distribution."""

    def __init__(self, base: torch.nn.Module, v: int, c: float):
        super().__init__()
        self.base, self.v, self.c = base, v, c
        self.config = base.config
        self.generation_config = base.generation_config

    def forward(self, **kw):
        out = self.base(**kw)
        shift = torch.zeros(out.logits.shape[-1], dtype=out.logits.dtype)
        shift[self.v] = self.c
        out.logits = out.logits + shift
        return out


def test_identical_models_give_exactly_zero(examples):
    a, b = make_micro_policy(seed=0), make_micro_policy(seed=0)  # same weights, separate objects
    for ref in (a, b):
        res = kl_drift(a, ref, examples, n_samples=2, max_new_tokens=6, seed=5)
        for task, r in res.items():
            assert r["kl"] == 0.0 and r["kl_per_token"] == 0.0 and r["k3"] == 0.0, task
            assert r["kl_se"] == 0.0
            assert r["n"] == 2 * len(examples[task]) and r["n_prompts"] == 3 and r["samples_per_prompt"] == 2
            assert r["tokens"] > 0 and "Rao-Blackwellized" in r["estimator"] and "T=1" in r["estimator"]


def test_perturbed_model_has_positive_kl_and_finite_se(examples):
    ref = make_micro_policy(seed=0)
    pol = make_micro_policy(seed=0)
    with torch.no_grad():
        for _, p in pol.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    res = kl_drift(pol, ref, examples, n_samples=2, max_new_tokens=6, seed=5, batch_size=4)
    for r in res.values():
        assert r["kl"] > 0 and r["kl_per_token"] > 0
        assert math.isfinite(r["kl_se"]) and r["kl_se"] > 0
        assert r["kl_se"] == pytest.approx(r["kl_std"] / math.sqrt(r["n"]))
        assert math.isfinite(r["k3"]) and r["k3"] >= 0
    # the same seed gives the same responses, hence the same numbers; micro-batching is invisible
    again = kl_drift(pol, ref, {"boolq": examples["boolq"]}, n_samples=2, max_new_tokens=6, seed=5, batch_size=16)
    assert again["boolq"]["kl"] == pytest.approx(res["boolq"]["kl"], rel=1e-5)


def test_known_logit_shift_matches_closed_form(examples):
    """pi_theta = softmax(l + c e_v), pi_ref = softmax(l): per position
    KL = c p_v - log(1 + q_v (e^c - 1)), with q_v = softmax(l)_v and p_v = q_v e^c / (1 + q_v (e^c - 1))."""
    ref = make_micro_policy(seed=0)
    v, c = 7, 1.5
    pol = Policy(ShiftedLogits(ref.model, v, c), ref.tokenizer, name="shifted")
    res = kl_drift(pol, ref, {"countdown": examples["countdown"]}, n_samples=2, max_new_tokens=5, seed=3,
                   return_samples=True)["countdown"]
    task = get_task("countdown")
    prompts = ref.encode([task.messages(ex) for ex in examples["countdown"]])
    # the samples are pi_theta's seeded responses
    for s in res["samples"]:
        gen = pol.generate([prompts[s["prompt_index"]]], max_new_tokens=5, temperature=1.0, seeds=[s["seed"]])
        assert gen.response_ids[0] == s["response_ids"]
    total = 0.0
    for s in res["samples"]:
        ids = torch.tensor([prompts[s["prompt_index"]] + s["response_ids"]])
        attn = torch.ones_like(ids)
        with torch.no_grad():
            logits = ref.model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits[0].double()
        P, T = len(prompts[s["prompt_index"]]), len(s["response_ids"])
        q_v = torch.softmax(logits[P - 1:P + T - 1], dim=-1)[:, v]
        z = 1 + q_v * (math.exp(c) - 1)
        p_v = q_v * math.exp(c) / z
        closed = float((c * p_v - torch.log(z)).sum())
        assert s["kl"] == pytest.approx(closed, rel=1e-4, abs=1e-7)
        total += closed
    assert res["kl"] == pytest.approx(total / len(res["samples"]), rel=1e-4)
    assert math.isfinite(res["k3"]) and res["k3"] >= 0  # a noisier estimate of the same quantity


def test_kl_on_responses_and_argument_checks(examples):
    a = make_micro_policy(seed=0)
    kl, k3s, toks = kl_on_responses(a, a, [[3, 4], [5]], [[6, 7, 8], []])
    assert kl == [0.0, 0.0] and k3s == [0.0, 0.0] and toks == [3, 0]
    with pytest.raises(ValueError, match="temperature"):
        kl_drift(a, a, examples, n_samples=1, max_new_tokens=4, seed=0, temperature=0.0)
    res = kl_drift(a, a, {"boolq": examples["boolq"][:2]}, n_samples=1, max_new_tokens=4, seed=0,
                   temperature=0.7, with_k3=False)["boolq"]
    assert "k3" not in res and "T=0.7" in res["estimator"] and res["kl"] == 0.0
