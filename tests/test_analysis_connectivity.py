"""Linear interpolation between checkpoints (exact ends, restore), the barrier's sign, set_parameters,
and the held-out-corpus NLL (capability) against a hand computation."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_micro_policy
from esgrpo.analysis.capability import heldout_nll, response_nll
from esgrpo.analysis.connectivity import (
    barrier,
    barriers,
    default_alphas,
    greedy_references,
    interpolate,
    make_evaluate_fn,
    parameter_table,
    set_parameters,
)
from esgrpo.config import GenerationConfig
from esgrpo.models.tiny import render, tokenize_docs
from esgrpo.tasks import load_examples


def params(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p, _ in parameter_table(policy)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ends(tmp_path_factory):
    root = tmp_path_factory.mktemp("ends")
    a, b = make_micro_policy(seed=0), make_micro_policy(seed=1)
    return a, b, a.save(root / "a"), b.save(root / "b")


# --- barrier (pure) ---------------------------------------------------------------------------------------------


def test_barrier_sign_convention():
    alphas = default_alphas(5)
    assert alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    line = [0.2 + 0.4 * a for a in alphas]  # ends 0.2 and 0.6
    dip = [v - 0.3 * 4 * a * (1 - a) for v, a in zip(line, alphas, strict=True)]  # convex: 0.3 below at a=0.5
    bump = [v + 0.1 * 4 * a * (1 - a) for v, a in zip(line, alphas, strict=True)]  # concave: above the line
    assert barrier(dip, alphas) == pytest.approx(0.3)
    assert barrier(bump, alphas) == pytest.approx(0.0)
    assert barrier(line, alphas) == pytest.approx(0.0)
    # lower is better (NLL): a bump is the barrier, a dip is not
    assert barrier(bump, alphas, higher_is_better=False) == pytest.approx(0.1)
    assert barrier(dip, alphas, higher_is_better=False) == pytest.approx(0.0)
    # uneven alphas: the line is evaluated at each alpha
    assert barrier([0.0, 0.0, 1.0], [0.0, 0.25, 1.0]) == pytest.approx(0.25)
    points = [{"alpha": a, "metrics": {"x/accuracy": d, "x/ref_nll": b}} for a, d, b in zip(alphas, dip, bump,
                                                                                           strict=True)]
    assert barriers(points) == pytest.approx({"x/accuracy": 0.3, "x/ref_nll": 0.1})
    with pytest.raises(ValueError):
        barrier([1.0, 2.0], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError):
        barrier([1.0, 2.0, 3.0], [0.0, 1.0, 0.5])


# --- set_parameters -----------------------------------------------------------------------------------------------


def test_set_parameters_aliases_strict_and_dtype():
    pol = make_micro_policy(seed=0)
    src = make_micro_policy(seed=1)
    names = [n for n, _, _ in parameter_table(pol)]
    tied = [aliases for _, _, aliases in parameter_table(pol) if len(aliases) > 1]
    assert tied and "lm_head.weight" in tied[0]  # the micro model ties lm_head to the embedding
    state = {n: p.detach() for n, p in src.model.named_parameters()}
    emb = state.pop("model.embed_tokens.weight")
    set_parameters(pol, {**state, "lm_head.weight": emb})  # the alias sets the tied tensor
    assert same(params(pol), params(src))
    with pytest.raises(ValueError, match="not given"):
        set_parameters(pol, state)
    with pytest.raises(KeyError):
        set_parameters(pol, {"nope": emb}, strict=False)
    with pytest.raises(ValueError, match="shape"):
        set_parameters(pol, {names[0]: emb[:1]}, strict=False)
    half = make_micro_policy(seed=0, dtype=torch.bfloat16)
    set_parameters(half, params(src))
    assert all(torch.equal(p, params(src)[n].to(torch.bfloat16)) for n, p in params(half).items())


# --- interpolate --------------------------------------------------------------------------------------------------


def test_interpolation_ends_are_exact_and_policy_restored(ends):
    a, b, a_dir, b_dir = ends
    pol = make_micro_policy(seed=2)
    before = params(pol)
    examples = {"boolq": load_examples("boolq", "synthetic", "test", 2, seed=0),
                "math": load_examples("math", "synthetic", "test", 2, seed=0)}
    gen = GenerationConfig(max_new_tokens=6, batch_size=4)
    refs = greedy_references(a, examples, max_new_tokens=6)
    assert set(refs) == set(examples) and all(len(r["response_ids"]) == 2 for r in refs.values())
    evaluate = make_evaluate_fn(examples, gen, references=refs)
    seen = []

    def evaluate_fn(policy):
        seen.append(params(policy))
        return evaluate(policy)

    alphas = [0.0, 0.5, 1.0]
    points = interpolate(pol, a_dir, b_dir, alphas, evaluate_fn)
    assert [p["alpha"] for p in points] == alphas
    assert same(seen[0], params(a)) and same(seen[2], params(b))  # bitwise ends
    for k, t in seen[1].items():
        torch.testing.assert_close(t, 0.5 * params(a)[k] + 0.5 * params(b)[k])
    assert points[0]["metrics"] == evaluate(a) and points[2]["metrics"] == evaluate(b)
    m = points[0]["metrics"]
    assert {"boolq/accuracy", "boolq/mean_reward", "math/ref_nll", "ref_nll", "mean_accuracy"} <= set(m)
    assert m["ref_nll"] > 0
    assert same(params(pol), before)  # restored
    assert set(barriers(points)) >= {"ref_nll", "mean_accuracy"}


def test_midpoint_of_identical_checkpoints_equals_them(ends):
    a, _, a_dir, _ = ends
    pol = make_micro_policy(seed=2)
    ids = a.encode([[{"role": "user", "content": "Is the sky blue?"}]])

    def evaluate_fn(policy):
        return {"w": params(policy), "nll": response_nll(policy, ids, [[5, 6, 7]])[0][0]}

    points = interpolate(pol, a_dir, a_dir, default_alphas(3), evaluate_fn)
    for p in points:
        assert same(p["metrics"]["w"], params(a))
        assert p["metrics"]["nll"] == evaluate_fn(a)["nll"]


# --- capability: held-out corpus NLL ------------------------------------------------------------------------------


def test_heldout_nll_matches_hand_computation(tmp_path):
    pol = make_micro_policy(seed=0)
    rows = [
        {"task": "boolq", "kind": "correct", "response": "\\boxed{yes}",
         "messages": [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": "Sky blue?"}]},
        {"task": "math", "kind": "slip", "response": "7+15=22. The answer is 22",
         "messages": [{"role": "user", "content": "Compute 7+5*3."}]},
        {"task": "boolq", "kind": "wrong", "response": "\\boxed{no}",
         "messages": [{"role": "user", "content": "Is water wet?"}]},
    ]
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = heldout_nll(pol, tmp_path, batch_size=2)
    # by hand: one document at a time, the pretraining tokenization, response tokens only
    per_doc = []
    for r in rows:
        (ids, start), = tokenize_docs([r], pol.tokenizer)
        assert pol.tokenizer.decode(ids) == render(r["messages"], r["response"])
        with torch.no_grad():
            lp, mask = pol.logprobs([ids[:start]], [ids[start:]])
        per_doc.append((-float(lp.sum()), int(mask.sum())))
    total = sum(s for s, _ in per_doc) / sum(n for _, n in per_doc)
    assert res["nll"] == pytest.approx(total, rel=1e-5)
    assert res["docs"] == 3 and res["tokens"] == sum(n for _, n in per_doc)
    boolq = [per_doc[0], per_doc[2]]
    assert res["per_task"]["boolq"]["nll"] == pytest.approx(sum(s for s, _ in boolq) / sum(n for _, n in boolq),
                                                            rel=1e-5)
    assert res["per_task"]["math"]["nll"] == pytest.approx(per_doc[1][0] / per_doc[1][1], rel=1e-5)
    assert set(res["per_kind"]) == {"correct", "slip", "wrong"}
    assert heldout_nll(pol, rows[:1])["nll"] == pytest.approx(per_doc[0][0] / per_doc[0][1], rel=1e-5)
    assert heldout_nll(pol, tmp_path / "heldout.jsonl", max_docs=1)["docs"] == 1
    with pytest.raises(ValueError, match="tiny model"):
        heldout_nll(pol, tmp_path / "elsewhere")
