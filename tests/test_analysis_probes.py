"""Direction probes: the t grid, unit directions along the deltas, the seeded random direction, t = 0 = base."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_micro_policy
from esgrpo.analysis.capability import response_nll
from esgrpo.analysis.connectivity import parameter_table
from esgrpo.analysis.probes import direction_probe, probe_grid, unit_direction


def params(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p, _ in parameter_table(policy)}


def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensors[k].flatten().double() for k in sorted(tensors)])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """base, "es" (a large dense displacement) and "grpo" (a small one on two tensors)."""
    root = tmp_path_factory.mktemp("probe")
    base = make_micro_policy(seed=0)
    base_dir = base.save(root / "base")
    g = torch.Generator().manual_seed(7)
    es = make_micro_policy(seed=0)
    with torch.no_grad():
        for _, p, _ in parameter_table(es):
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    grpo = make_micro_policy(seed=0)
    with torch.no_grad():
        for _, p, _ in parameter_table(grpo)[-2:]:
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return base, {"es": es, "grpo": grpo}, base_dir, {"es": es.save(root / "es"), "grpo": grpo.save(root / "grpo")}


def test_probe_grid():
    grid = probe_grid([2.0, 0.1, None], n=4)
    assert grid[0] == 0.0 and grid[-1] == pytest.approx(3.0)
    assert 2.0 in grid and 0.1 in grid and grid == sorted(grid)
    assert grid == pytest.approx([0.0, 0.1, 1.0, 2.0, 3.0])  # the grid 0, 1, 2, 3 plus the norms, 2 once
    with pytest.raises(ValueError):
        probe_grid([0.0])


def test_unit_directions_point_along_the_deltas(ckpts):
    base, movers, base_dir, dirs = ckpts
    for label, pol in movers.items():
        u, norm = unit_direction(base, base_dir, dirs[label])
        delta = flat(params(pol)) - flat(params(base))
        fu = flat(u)
        assert norm == pytest.approx(float(delta.norm()), rel=1e-6)
        assert float(fu.norm()) == pytest.approx(1.0, abs=1e-6)
        assert float(torch.dot(fu, delta) / (fu.norm() * delta.norm())) == pytest.approx(1.0, abs=1e-6)


def test_random_direction_is_seeded(ckpts):
    base, _, base_dir, _ = ckpts
    r1, n1 = unit_direction(base, base_dir, None, random_seed=3)
    r2, _ = unit_direction(base, base_dir, None, random_seed=3)
    r3, _ = unit_direction(base, base_dir, None, random_seed=4)
    assert n1 is None
    assert all(torch.equal(r1[k], r2[k]) for k in r1)
    assert float(flat(r1).norm()) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(torch.dot(flat(r1), flat(r3)))) < 0.1  # different (and nearly orthogonal) for another seed


def test_direction_probe(ckpts):
    base, movers, base_dir, dirs = ckpts
    ids = base.encode([[{"role": "user", "content": "Compute 7+5*3."}]])
    resp = [base.tokenizer.encode("7+15=22. \\boxed{22}<|end|>", add_special_tokens=False)]
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate_fn(policy):
        seen.append(params(policy))
        return {"nll": response_nll(policy, ids, resp)[0][0]}

    base_eval = evaluate_fn(base)
    seen.clear()
    pol = make_micro_policy(seed=5)
    before = params(pol)
    es_norm = float((flat(params(movers["es"])) - flat(params(base))).norm())
    ts = [0.0, 0.5, es_norm]
    res = direction_probe(pol, base_dir, dirs, ts, evaluate_fn, random_seed=11)
    assert list(res["directions"]) == ["es", "grpo", "random"]
    assert res["directions"]["es"]["norm"] == pytest.approx(es_norm, rel=1e-6)
    assert res["directions"]["random"]["norm"] is None and res["directions"]["random"]["source"] == "random"
    for i, (label, d) in enumerate(res["directions"].items()):
        assert [p["t"] for p in d["points"]] == ts
        assert d["points"][0]["metrics"] == base_eval, label  # t = 0 is the base, for every direction
        assert all(torch.equal(seen[3 * i][k], v) for k, v in params(base).items())  # bitwise
    # t = ||delta_es|| along the ES direction lands on the ES checkpoint (up to rounding)
    for k, v in params(movers["es"]).items():
        torch.testing.assert_close(seen[2][k], v, atol=1e-5, rtol=1e-5)
    # the random direction at t: ||theta - theta_base|| = t
    moved = flat(seen[7]) - flat(params(base))
    assert float(moved.norm()) == pytest.approx(0.5, rel=1e-5)
    cos = res["cosine"]
    assert cos["es"]["es"] == pytest.approx(1.0) and math.isfinite(cos["es"]["grpo"])
    assert cos["es"]["grpo"] == pytest.approx(cos["grpo"]["es"])
    assert all(torch.equal(v, before[k]) for k, v in params(pol).items())  # restored
    # per-direction grids
    res2 = direction_probe(pol, base_dir, {"grpo": dirs["grpo"]}, {"grpo": [0.0, 0.01], "random": [0.0]},
                           evaluate_fn, random_seed=11)
    assert [p["t"] for p in res2["directions"]["random"]["points"]] == [0.0]
    with pytest.raises(ValueError, match="reserved"):
        direction_probe(pol, base_dir, {"random": dirs["es"]}, ts, evaluate_fn)
