"""Weight-space statistics on hand-built safetensors checkpoints with known answers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from esgrpo.analysis.weights import (
    bf16_spacing,
    cosine,
    iter_deltas,
    iter_tensors,
    layer_index,
    module_type,
    random_cosine_baseline,
    sparsity,
    update_norms,
    update_rank,
)
from esgrpo.checkpoints import CheckpointError

Q = "model.layers.0.self_attn.q_proj.weight"
LN0 = "model.layers.0.input_layernorm.weight"
UP = "model.layers.1.mlp.up_proj.weight"
EMB = "model.embed_tokens.weight"
NORM = "model.norm.weight"
POS = "model.position_ids"  # an integer buffer: skipped


def base_tensors() -> dict[str, torch.Tensor]:
    """Sums of squares: embed 10, q 16, ln0 4, up 8, norm 4 (total 42); 96 float weights."""
    return {
        EMB: torch.full((10, 4), 0.5),
        Q: torch.ones(4, 4),
        LN0: torch.ones(4),
        UP: torch.full((8, 4), 0.5),
        NORM: torch.ones(4),
        POS: torch.arange(6),
    }


def save(path, tensors, filename="model.safetensors"):
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / filename))
    return path


def with_changes(changes: dict[str, torch.Tensor], tensors=None) -> dict[str, torch.Tensor]:
    """base_tensors() with the given deltas added."""
    out = {k: v.clone() for k, v in (tensors or base_tensors()).items()}
    for name, delta in changes.items():
        out[name] = out[name] + delta
    return out


def one_hot(shape, index, value) -> torch.Tensor:
    t = torch.zeros(shape)
    t[index] = value
    return t


def flat_random_delta(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in base_tensors().items() if v.is_floating_point()}


# --- names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "layer"),
    [
        (Q, "attention", 0),
        ("model.layers.7.self_attn.o_proj.bias", "attention", 7),
        ("model.layers.12.mlp.down_proj.weight", "mlp", 12),
        (UP, "mlp", 1),
        (EMB, "embedding", None),
        ("lm_head.weight", "embedding", None),
        (NORM, "norm", None),
        ("model.layers.3.post_attention_layernorm.weight", "norm", 3),
        ("model.layers.3.self_attn.q_norm.weight", "norm", 3),
        ("model.rotary_emb.inv_freq", "other", None),
    ],
)
def test_module_type_and_layer_index(name, kind, layer):
    assert module_type(name) == kind
    assert layer_index(name) == layer


# --- reading ---------------------------------------------------------------------------------------------------


def test_iter_tensors_sorted_fp32_skips_integers(tmp_path):
    ckpt = save(tmp_path / "base", base_tensors())
    got = list(iter_tensors(ckpt))
    assert [n for n, _ in got] == sorted([EMB, Q, LN0, UP, NORM])
    assert all(t.dtype == torch.float32 for _, t in got)


def test_iter_deltas_gives_ckpt_minus_base(tmp_path):
    base = save(tmp_path / "base", base_tensors())
    a = save(tmp_path / "a", with_changes({Q: one_hot((4, 4), (1, 2), 0.25)}))
    b = save(tmp_path / "b", with_changes({NORM: torch.full((4,), -1.0)}))
    rows = {name: (theta, deltas) for name, theta, deltas in iter_deltas(base, a, b)}
    theta, (da, db) = rows[Q]
    assert torch.equal(theta, torch.ones(4, 4))
    assert torch.equal(da, one_hot((4, 4), (1, 2), 0.25)) and not db.any()
    assert torch.equal(rows[NORM][1][1], torch.full((4,), -1.0))


def test_sharded_checkpoint_reads_every_file(tmp_path):
    full = base_tensors()
    changed = with_changes({Q: one_hot((4, 4), (0, 0), 3.0), UP: one_hot((8, 4), (0, 0), 4.0)})
    base = save(tmp_path / "base", full)
    shard_1 = {k: changed[k] for k in (EMB, Q, POS)}
    shard_2 = {k: changed[k] for k in (LN0, UP, NORM)}
    sharded = save(tmp_path / "sharded", shard_1, "model-00001-of-00002.safetensors")
    save(sharded, shard_2, "model-00002-of-00002.safetensors")
    assert sorted(n for n, _ in iter_tensors(sharded)) == sorted([EMB, Q, LN0, UP, NORM])
    assert update_norms(base, sharded)["total"]["abs"] == pytest.approx(5.0)
    # the same shards, listed by an index file; a stray file the index does not name is ignored
    weight_map = {k: "model-00001-of-00002.safetensors" for k in shard_1}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in shard_2}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    save(sharded, {"stray": torch.ones(3)}, "consolidated.safetensors")
    assert update_norms(base, sharded)["total"]["abs"] == pytest.approx(5.0)
    # a single file works as a checkpoint too
    assert update_norms(base / "model.safetensors", base)["total"]["abs"] == 0.0


def test_name_stored_twice_across_shards_raises(tmp_path):
    ckpt = save(tmp_path / "c", {Q: torch.ones(4, 4)}, "a.safetensors")
    save(ckpt, {Q: torch.ones(4, 4)}, "b.safetensors")
    with pytest.raises(CheckpointError, match="stored twice"):
        list(iter_tensors(ckpt))


def test_empty_directory_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        list(iter_tensors(tmp_path / "empty"))


def test_missing_name_raises_naming_tensor_and_both_paths(tmp_path):
    base = save(tmp_path / "base", base_tensors())
    fewer = {k: v for k, v in base_tensors().items() if k != NORM}
    other = save(tmp_path / "other", fewer)
    for args in ((base, other), (other, base)):
        with pytest.raises(CheckpointError) as err:
            update_norms(*args)
        message = str(err.value)
        assert NORM in message and str(base) in message and str(other) in message


def test_shape_mismatch_raises_naming_tensor_and_both_paths(tmp_path):
    base = save(tmp_path / "base", base_tensors())
    other = save(tmp_path / "other", {**base_tensors(), UP: torch.zeros(4, 8)})
    with pytest.raises(CheckpointError) as err:
        cosine(base, base, other)
    message = str(err.value)
    assert UP in message and str(base) in message and str(other) in message and "[8, 4]" in message


def test_bf16_checkpoints_are_upcast(tmp_path):
    base16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in base_tensors().items()}
    new16 = dict(base16)
    new16[Q] = (base16[Q].float() + one_hot((4, 4), (0, 0), 3.0)).to(torch.bfloat16)  # 1 + 3 = 4 exactly
    new16[UP] = (base16[UP].float() + one_hot((8, 4), (2, 1), 4.0)).to(torch.bfloat16)  # 0.5 + 4 exactly
    base, new = save(tmp_path / "base", base16), save(tmp_path / "new", new16)
    assert all(t.dtype == torch.float32 for _, t in iter_tensors(new))
    norms = update_norms(base, new)
    assert norms["total"]["abs"] == pytest.approx(5.0)
    assert norms["total"]["base_norm"] == pytest.approx(math.sqrt(42))


# --- norms ---------------------------------------------------------------------------------------------------


def test_update_norms_known_delta(tmp_path):
    base = save(tmp_path / "base", base_tensors())
    new = save(tmp_path / "new", with_changes({Q: one_hot((4, 4), (0, 1), 3.0), UP: one_hot((8, 4), (5, 2), -4.0)}))
    norms = update_norms(base, new)
    total = norms["total"]
    assert total["abs"] == pytest.approx(5.0)
    assert total["base_norm"] == pytest.approx(math.sqrt(42))
    assert total["relative"] == pytest.approx(5 / math.sqrt(42))
    assert total["numel"] == 96

    layers = norms["per_layer"]
    assert list(layers) == ["layer 0", "layer 1", "non-layer"]
    layer_0 = {"abs": 3.0, "base_norm": math.sqrt(20), "relative": 3 / math.sqrt(20), "numel": 20}
    assert layers["layer 0"] == pytest.approx(layer_0)
    assert layers["layer 1"]["abs"] == pytest.approx(4.0) and layers["layer 1"]["relative"] == pytest.approx(4 / 8**0.5)
    assert layers["non-layer"] == pytest.approx({"abs": 0.0, "base_norm": math.sqrt(14), "relative": 0.0, "numel": 44})

    modules = norms["per_module"]
    assert list(modules) == ["attention", "mlp", "embedding", "norm"]
    assert modules["attention"]["abs"] == pytest.approx(3.0) and modules["attention"]["relative"] == pytest.approx(0.75)
    assert modules["mlp"]["abs"] == pytest.approx(4.0) and modules["mlp"]["numel"] == 32
    assert modules["norm"] == pytest.approx({"abs": 0.0, "base_norm": math.sqrt(8), "relative": 0.0, "numel": 8})

    assert norms["per_tensor"][Q]["abs"] == pytest.approx(3.0)
    assert norms["per_tensor"][Q]["module"] == "attention" and norms["per_tensor"][Q]["layer"] == 0
    assert POS not in norms["per_tensor"]


def test_update_norms_zero_base_tensor_gives_nan_relative(tmp_path):
    base = save(tmp_path / "base", {Q: torch.zeros(2, 2)})
    new = save(tmp_path / "new", {Q: torch.ones(2, 2)})
    norms = update_norms(base, new)
    assert norms["total"]["abs"] == pytest.approx(2.0)
    assert math.isnan(norms["total"]["relative"])


# --- cosine --------------------------------------------------------------------------------------------------


def cosine_of(tmp_path, delta_a, delta_b):
    base = save(tmp_path / "base", base_tensors())
    a = save(tmp_path / "a", with_changes(delta_a))
    b = save(tmp_path / "b", with_changes(delta_b))
    return cosine(base, a, b)


def test_cosine_orthogonal_is_zero(tmp_path):
    out = cosine_of(tmp_path, {Q: one_hot((4, 4), (0, 0), 2.0)}, {UP: one_hot((8, 4), (0, 0), 5.0)})
    assert out["cosine"] == 0.0
    assert out["norm_a"] == pytest.approx(2.0) and out["norm_b"] == pytest.approx(5.0)
    assert out["d"] == 96
    assert out["inv_sqrt_d"] == pytest.approx(1 / math.sqrt(96))
    assert out["zero_delta"] == {"a": False, "b": False}
    assert math.isnan(out["per_tensor"][Q]["cosine"])  # b does not touch q_proj


@pytest.mark.parametrize(("scale", "expected"), [(2.5, 1.0), (1.0, 1.0), (-0.5, -1.0)])
def test_cosine_parallel_and_antiparallel(tmp_path, scale, expected):
    delta = flat_random_delta(0)
    out = cosine_of(tmp_path, delta, {k: scale * v for k, v in delta.items()})
    assert out["cosine"] == pytest.approx(expected, abs=1e-6)
    assert out["per_tensor"][UP]["cosine"] == pytest.approx(expected, abs=1e-6)


def test_cosine_matches_flat_computation_and_is_scale_invariant(tmp_path):
    da, db = flat_random_delta(1), flat_random_delta(2)
    db[Q] = db[Q] + 2 * da[Q]  # correlated on one tensor, so the cosine is clearly nonzero
    flat_a = torch.cat([da[k].flatten() for k in sorted(da)]).double()
    flat_b = torch.cat([db[k].flatten() for k in sorted(db)]).double()
    expected = float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()))
    plain = cosine_of(tmp_path / "plain", da, db)["cosine"]
    scaled = cosine_of(tmp_path / "scaled", {k: 7 * v for k, v in da.items()}, {k: 0.01 * v for k, v in db.items()})
    assert plain == pytest.approx(expected, abs=1e-5)
    assert scaled["cosine"] == pytest.approx(expected, abs=1e-5)
    assert 0.2 < expected < 0.9


def test_cosine_zero_delta_is_nan_and_flagged(tmp_path):
    out = cosine_of(tmp_path, {}, {Q: one_hot((4, 4), (0, 0), 1.0)})
    assert math.isnan(out["cosine"])
    assert out["zero_delta"] == {"a": True, "b": False}
    assert out["norm_a"] == 0.0


def test_random_directions_in_large_d_are_near_orthogonal(tmp_path):
    g = torch.Generator().manual_seed(3)
    name = "model.layers.0.mlp.down_proj.weight"
    base = save(tmp_path / "base", {name: torch.zeros(100, 200)})
    a = save(tmp_path / "a", {name: torch.randn(100, 200, generator=g)})
    b = save(tmp_path / "b", {name: torch.randn(100, 200, generator=g)})
    out = cosine(base, a, b)
    assert out["d"] == 20_000
    assert out["random_baseline"] == pytest.approx(math.sqrt(2 / (math.pi * 20_000)), rel=1e-4)
    assert abs(out["cosine"]) < 4 * out["random_baseline"]
    assert cosine(base, a, a)["cosine"] == pytest.approx(1.0)


def test_random_cosine_baseline_exact_values():
    assert random_cosine_baseline(1) == pytest.approx(1.0)  # cos = +-1
    assert random_cosine_baseline(2) == pytest.approx(2 / math.pi)  # |cos| of a uniform angle
    assert random_cosine_baseline(3) == pytest.approx(0.5)  # cos uniform on [-1, 1] (Archimedes)
    # the two branches (lgamma below 1e4, asymptotic series above) agree at the switch
    assert random_cosine_baseline(9_999) == pytest.approx(random_cosine_baseline(10_000), rel=2e-4)
    d = 4_020_000_000
    assert random_cosine_baseline(d) == pytest.approx(math.sqrt(2 / (math.pi * d)), rel=1e-9)


# --- sparsity ------------------------------------------------------------------------------------------------


def test_sparsity_counts_known_mask_and_honours_tolerance(tmp_path):
    base = save(tmp_path / "base", base_tensors())
    emb_delta = torch.zeros(10, 4)
    emb_delta[[0, 3, 9], [1, 2, 3]] = 1.0  # 3 big changes
    up_delta = torch.zeros(8, 4)
    up_delta[[1, 6], [0, 0]] = 1e-3  # 2 small ones
    new = save(tmp_path / "new", with_changes({EMB: emb_delta, UP: up_delta}))

    exact = sparsity(base, new)
    assert exact["changed"] == 5 and exact["numel"] == 96
    assert exact["frac_changed"] == pytest.approx(5 / 96)
    assert exact["per_tensor"][EMB]["frac_changed"] == pytest.approx(3 / 40)
    assert exact["per_tensor"][UP]["changed"] == 2
    assert exact["atol"] == 0.0 and "|delta| > 0" in exact["tolerance"]

    loose = sparsity(base, new, atol=0.01)
    assert loose["changed"] == 3 and loose["frac_changed"] == pytest.approx(3 / 96)
    assert "0.01" in loose["tolerance"]
    assert sparsity(base, new, atol=2.0)["changed"] == 0
    assert sparsity(base, base)["frac_changed"] == 0.0


def test_bf16_spacing_values():
    x = torch.tensor([1.0, 1.5, 3.0, -2.0, 0.0, 2.0**-130, 2.0**-126, 1000.0])
    expected = torch.tensor([2.0**-7, 2.0**-7, 2.0**-6, 2.0**-6, 2.0**-133, 2.0**-133, 2.0**-133, 2.0**2])
    assert torch.equal(bf16_spacing(x), expected)
    # against bf16 itself: the next bf16 above a positive normal bf16 number is exactly one spacing away
    g = torch.Generator().manual_seed(0)
    values = (torch.randn(1000, generator=g).abs() * 10.0 ** torch.randint(-20, 20, (1000,), generator=g)).bfloat16()
    values = values[values > 0]
    following = (values.view(torch.int16) + 1).view(torch.bfloat16)
    assert torch.equal(following.float() - values.float(), bf16_spacing(values.float()))


def test_sparsity_bf16_spacing_field_on_hand_built_case(tmp_path):
    name = "model.layers.0.mlp.down_proj.weight"
    theta = torch.tensor([1.0, 1.0, 3.0, 0.0, -2.0])  # spacings 2^-7, 2^-7, 2^-6, 2^-133, 2^-6
    delta = torch.tensor([1e-3, 0.01, 0.01, 0.0, 0.02])  # below, above, below, below (unchanged), above
    base = save(tmp_path / "base", {name: theta})
    new = save(tmp_path / "new", {name: theta + delta})
    out = sparsity(base, new)
    assert out["changed"] == 4
    assert out["below_bf16_spacing"] == 3
    assert out["frac_below_bf16_spacing"] == pytest.approx(3 / 5)
    assert out["frac_changed_below_bf16_spacing"] == pytest.approx(2 / 4)
    assert out["per_tensor"][name]["below_bf16_spacing"] == 3

    # tolerance in units of bf16 spacing: changed by more than one bf16 step
    in_steps = sparsity(base, new, atol=1.0, rel_spacing=True)
    assert in_steps["changed"] == 2
    assert in_steps["rel_spacing"] is True and "bf16_spacing" in in_steps["tolerance"]


# --- rank ----------------------------------------------------------------------------------------------------


def rank_checkpoints(tmp_path, delta):
    name = "model.layers.0.self_attn.o_proj.weight"
    g = torch.Generator().manual_seed(5)
    theta = torch.randn(delta.shape, generator=g)
    base = save(tmp_path / "base", {name: theta, NORM: torch.ones(4)})
    new = save(tmp_path / "new", {name: theta + delta, NORM: torch.ones(4)})
    return base, new, name


def test_update_rank_of_known_rank_two_delta(tmp_path):
    g = torch.Generator().manual_seed(4)
    u, _ = torch.linalg.qr(torch.randn(16, 2, generator=g))
    v, _ = torch.linalg.qr(torch.randn(12, 2, generator=g))
    delta = 3.0 * torch.outer(u[:, 0], v[:, 0]) + 1.0 * torch.outer(u[:, 1], v[:, 1])  # singular values 3, 1
    base, new, name = rank_checkpoints(tmp_path, delta)
    out = update_rank(base, new, top_k=4, energy=0.95)
    stats = out["per_matrix"][name]
    assert out["skipped"] == [NORM]
    assert stats["shape"] == [16, 12] and stats["max_rank"] == 12
    top = stats["top_singular_values"]
    assert len(top) == 4
    assert top[:2] == pytest.approx([3.0, 1.0], abs=1e-4)
    assert max(top[2:]) < 1e-4 * top[0]
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    assert stats["effective_rank"] == pytest.approx(math.exp(float(-(p * p.log()).sum())), abs=1e-3)  # 1.7548
    assert 1.0 <= stats["effective_rank"] <= 2.0
    assert stats["energy_rank"] == 2  # 9 / 10 < 0.95
    assert update_rank(base, new, energy=0.8)["per_matrix"][name]["energy_rank"] == 1
    assert stats["stable_rank"] == pytest.approx(10 / 9, rel=1e-4)
    assert stats["frobenius"] == pytest.approx(math.sqrt(10), rel=1e-5)


def test_update_rank_of_scaled_identity_is_full(tmp_path):
    base, new, name = rank_checkpoints(tmp_path, 0.5 * torch.eye(8))
    stats = update_rank(base, new, top_k=8, energy=0.9)["per_matrix"][name]
    assert stats["effective_rank"] == pytest.approx(8.0, rel=1e-5)
    assert stats["top_singular_values"] == pytest.approx([0.5] * 8, rel=1e-5)
    assert stats["energy_rank"] == 8  # 7/8 of the energy is not enough
    assert update_rank(base, new, energy=0.5)["per_matrix"][name]["energy_rank"] == 4


def test_update_rank_zero_delta_and_random_baseline(tmp_path):
    base, new, name = rank_checkpoints(tmp_path, torch.zeros(16, 12))
    zero = update_rank(base, new)["per_matrix"][name]
    assert math.isnan(zero["effective_rank"]) and zero["energy_rank"] == 0 and zero["frobenius"] == 0.0

    delta = torch.outer(torch.ones(16), torch.ones(12))  # rank one, norm sqrt(192)
    base, new, name = rank_checkpoints(tmp_path / "r1", delta)
    stats = update_rank(base, new, random_baseline=True)["per_matrix"][name]
    assert stats["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    random = stats["random"]
    assert random["frobenius"] == pytest.approx(math.sqrt(192), rel=1e-5)
    assert 6.0 < random["effective_rank"] <= 12.0  # a Gaussian matrix is spread over all directions
