"""ES noise: the counter-based generator (known answers, statistics, chunk and device independence),
independent per tensor; perturb/restore is bit-exact."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest
import torch

from conftest import make_micro_policy
from esgrpo.train.noise import CHUNK, Perturbation, derive_seed, philox4x32, tensor_key, tensor_noise

N = 1 << 20  # samples per statistical test: standard error of a correlation 1/sqrt(N) ~ 0.001


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_philox_matches_the_random123_known_answers():
    """Salmon et al.'s Philox4x32-10 known-answer vectors (Random123 kat_vectors)."""
    zero = torch.zeros(1, dtype=torch.int64)
    ones = torch.full((1,), 0xFFFFFFFF, dtype=torch.int64)
    pi = [torch.tensor([v]) for v in (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)]
    assert [int(v) for v in philox4x32(zero, zero, zero, zero, 0, 0)] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C,
                                                                         0x9B00DBD8]
    assert [int(v) for v in philox4x32(ones, ones, ones, ones, 0xFFFFFFFF, 0xFFFFFFFF)] == [
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert [int(v) for v in philox4x32(*pi, 0xA4093822, 0x299F31D0)] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420,
                                                                         0x24126EA1]


def _philox_reference(ctr: tuple[int, ...], key: tuple[int, int]) -> list[int]:
    """Philox4x32-10 on Python integers, as Random123 writes it (unsigned 64-bit products)."""
    m, (k0, k1), c = 0xFFFFFFFF, key, list(ctr)
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & m, (p0 >> 32) ^ c[3] ^ k1, p0 & m]
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return c


@pytest.mark.parametrize("compiled", [False, True])
def test_the_int32_rounds_give_the_reference_words_on_random_counters_and_keys(compiled):
    """The kernels' int32 rounds (wrapping multiplies and adds) against Philox on Python integers: counters
    across the 2^31 and 2^32 boundaries (the high counter word), keys with the top bit set."""
    from esgrpo.train import noise

    rng = random.Random(0)
    words = torch.compile(noise._words, dynamic=True) if compiled else noise._words
    for first in (0, 2 ** 31 - 300, 2 ** 32 - 300, 2 ** 40 + rng.randrange(2 ** 30)):
        k0, k1 = rng.randrange(2 ** 32), rng.randrange(2 ** 31, 2 ** 32)
        got = words(torch.tensor(k0), torch.tensor(k1), torch.tensor(first), 1024)
        got = torch.stack([w.to(torch.int64) & 0xFFFFFFFF for w in got], 1)
        for i in [0, 1, 299, 300, 511, 1023]:
            c = first + i
            assert got[i].tolist() == _philox_reference((c & 0xFFFFFFFF, c >> 32, 0, 0), (k0, k1)), (first, i)


def test_the_noise_values_are_those_of_the_noise_version():
    """Values of NOISE_VERSION drawn before the generator moved to int32 lanes (the same integers, so the same
    normals; the tolerance covers other math libraries' last bits, a wrong integer moves a value by order 1)."""
    from esgrpo.train.noise import NOISE_VERSION

    assert NOISE_VERSION == "philox4x32-10/box-muller-f32/v2"
    want = [0.058620892465114594, 0.20935767889022827, 1.2891305685043335, -1.0377411842346191, 0.17836153507232666,
            -0.748763382434845, 0.33882108330726624, 0.8122373223304749, 1.2539209127426147, 0.8455801010131836,
            -0.11571335792541504, -0.01835535280406475]
    assert tensor_noise(7, "w", (4, 3)).flatten().tolist() == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_a_device_whose_integer_ops_do_not_wrap_is_refused(monkeypatch):
    from esgrpo.train import noise

    monkeypatch.setattr(noise, "_CHECKED", set())
    monkeypatch.setattr(noise, "_KERNELS", {})
    monkeypatch.setattr(noise, "_bits", lambda v: v % (1 << 31))  # a word's top bit lost: no longer modulo 2^32
    with pytest.raises(RuntimeError, match="wrong Philox words on cpu"):
        tensor_noise(3, "w", (16,))


def test_same_seed_and_name_give_identical_noise_for_every_chunk_size():
    a = tensor_noise(123, "model.layers.0.self_attn.q_proj.weight", (300, 101))
    assert a.dtype == torch.float32 and a.shape == (300, 101)
    for chunk in (4, 7, 4096, 30_300 + 3, CHUNK):
        assert torch.equal(tensor_noise(123, "model.layers.0.self_attn.q_proj.weight", (300, 101), chunk=chunk), a)
    # an element's value depends on its index only: a longer tensor starts with the same values
    assert torch.equal(tensor_noise(123, "w", (500,))[:97], tensor_noise(123, "w", (97,)))


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight"])
def test_noise_is_standard_normal_per_tensor(name):
    eps = tensor_noise(5, name, (N,)).double()
    se = 1 / math.sqrt(N)
    assert abs(float(eps.mean())) < 4 * se
    assert abs(float(eps.var()) - 1) < 4 * math.sqrt(2) * se  # var of a sample variance ~ 2/N
    # Kolmogorov-Smirnov against N(0, 1): D < 1.95 / sqrt(N) at the 0.1% level
    x, _ = eps.sort()
    cdf = torch.special.ndtr(x)
    i = torch.arange(1, N + 1, dtype=torch.float64)
    d = max(float((i / N - cdf).max()), float((cdf - (i - 1) / N).max()))
    assert d < 1.95 / math.sqrt(N)
    # tails: P(|z| > 3) = 0.0027
    tail = float((eps.abs() > 3).double().mean())
    assert abs(tail - 0.0027) < 4 * math.sqrt(0.0027 / N)


def test_members_tensors_chunks_and_lanes_are_uncorrelated():
    """Correlations within 4 standard errors (1/sqrt(n)) of 0: between members, between same-shape tensors,
    between neighbouring chunks, between the four values of one Philox counter, and at lag 1."""
    shape = (N,)
    base = tensor_noise(7, "model.layers.0.self_attn.q_proj.weight", shape)
    limit = 4 / math.sqrt(N)
    assert abs(corr(base, tensor_noise(8, "model.layers.0.self_attn.q_proj.weight", shape))) < limit  # members
    assert abs(corr(base, tensor_noise(7, "model.layers.1.self_attn.q_proj.weight", shape))) < limit  # tensors
    assert abs(corr(base, tensor_noise(7, "model.layers.0.self_attn.k_proj.weight", shape))) < limit
    half = N // 2
    assert abs(corr(base[:half], base[half:])) < 4 / math.sqrt(half)  # neighbouring chunks of a tensor
    lanes = base.view(-1, 4)
    for a, b in ((0, 1), (0, 2), (1, 3), (2, 3)):
        assert abs(corr(lanes[:, a], lanes[:, b])) < 4 / math.sqrt(N // 4), (a, b)
    assert abs(corr(base[:-1], base[1:])) < limit


def test_keys_are_stable_sha256_words():
    # sha256-derived: the same numbers on every machine and Python version (replay depends on it)
    assert tensor_key(7, "a") != tensor_key(7, "b") and tensor_key(7, "a") == tensor_key(7, "a")
    assert all(0 <= k < 2**32 for k in tensor_key(7, "a"))
    assert derive_seed(5, "w") == derive_seed("5", "w") and 0 <= derive_seed(0, "x") < 2**63


def _eager_noise() -> torch.Tensor:
    code = ("import torch, sys; from esgrpo.train.noise import tensor_noise; "
            "torch.save(tensor_noise(11, 'w', (100_000,)), sys.argv[1])")
    return code


def test_compiled_and_eager_give_the_same_integers_and_gaussians_up_to_the_last_bits(tmp_path):
    """The integers are exact everywhere; the float32 transforms may differ by a few ulps between math
    libraries (here: torch.compile's vs ATen's eager kernels)."""
    out = tmp_path / "eager.pt"
    env = {**os.environ, "ESGRPO_NOISE_COMPILE": "0"}
    subprocess.run([sys.executable, "-c", _eager_noise(), str(out)], check=True, env=env)
    eager, compiled = torch.load(out), tensor_noise(11, "w", (100_000,))
    diff = (eager - compiled).abs()
    assert float(diff.max()) <= 8 * torch.finfo(torch.float32).eps * float(compiled.abs().max())
    assert float((diff == 0).double().mean()) > 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_restore_is_bit_exact_over_100_cycles(dtype):
    policy = make_micro_policy(dtype=dtype)
    params = policy.named_parameters()
    original = [p.detach().clone() for _, p in params]
    pert = Perturbation(params)
    for cycle in range(100):
        pert.perturb(member_seed=1000 + cycle, sign=1 if cycle % 2 else -1, sigma=0.01)
        assert not torch.equal(params[0][1], original[0])  # it really moved
        pert.restore()
    for (name, p), o in zip(params, original, strict=True):
        assert p.dtype == dtype
        assert torch.equal(p, o), name


@pytest.mark.parametrize("chunk", [CHUNK, 64, 4 * 37 + 4])
def test_perturbation_is_sigma_times_tensor_noise_rounded_once(chunk):
    policy = make_micro_policy(dtype=torch.bfloat16)
    params = policy.named_parameters()
    original = [p.detach().clone() for _, p in params]
    pert = Perturbation(params, chunk=chunk)
    pert.perturb(member_seed=42, sign=-1, sigma=0.02)
    for (name, p), o in zip(params, original, strict=True):
        expected = (o.float() - 0.02 * tensor_noise(42, name, p.shape)).to(torch.bfloat16)
        assert torch.equal(p, expected), name
    with pytest.raises(RuntimeError):
        pert.perturb(member_seed=43, sign=1, sigma=0.02)  # perturbing twice would stack noise
    pert.restore()


def test_subtracting_regenerated_noise_in_bf16_drifts():
    """Why restore copies a backup: w + s*e - s*e in bf16 is not w (the paper's known defect)."""
    w = torch.randn(4096, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    naive = w.clone()
    for cycle in range(20):
        eps = tensor_noise(cycle, "w", w.shape)
        naive = (naive.float() + 0.0015 * eps).to(torch.bfloat16)
        naive = (naive.float() - 0.0015 * eps).to(torch.bfloat16)
    assert not torch.equal(naive, w)



_AVX2_CHECK = """
import sys, torch
from esgrpo.train import noise
torch.set_num_threads(1)
worst = 0.0
k0, k1 = noise._scalars(11, "w", torch.device("cpu"))
eager = noise._noise(k0, k1, torch.tensor(0), 0, 9_000)  # the eager ops, never compiled
for chunk in (1002, 256, 4000):  # chunks that start inside a counter block and far from counter 0
    worst = max(worst, float((noise.tensor_noise(11, "w", (9_000,), chunk=chunk) - eager).abs().max()))
print(worst)
for dtype in (torch.float32, torch.bfloat16):  # Perturbation: the _perturbed kernel
    backup = torch.randn(9_000).to(dtype)
    p = noise.Perturbation([("w", torch.nn.Parameter(backup.clone(), requires_grad=False))], chunk=1002)
    p.perturb(11, 1, 1.0)
    want = (backup.float() + eager).to(dtype).float()
    print(float((p.params[0][1].detach().float() - want).abs().max()), flush=True)
"""


def test_the_noise_is_right_with_avx2_kernels(tmp_path):
    """torch.compile's AVX2 code for the noise kernels (ATen pinned to AVX2 on an AVX-512 CPU) returned wrong
    values for half of the elements, or garbage, for some sizes, offsets and thread counts; whatever the
    compiled code does, the noise drawn through the guarded kernels equals the eager ops' (last bits aside)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _AVX2_CHECK], check=True, env=env, capture_output=True, text=True)
    noise_, f32, bf16 = (float(x) for x in out.stdout.strip().splitlines()[-3:])
    assert noise_ < 1e-5 and f32 < 1e-5  # the float transforms' last bits
    assert bf16 <= 2 ** -5  # at most one bfloat16 rounding step of |w| < 8


def test_a_miscompiled_kernel_is_caught_before_it_draws_noise(monkeypatch, capsys):
    """The known-answer check: a compiled kernel whose values differ from its eager ops is never used."""
    from esgrpo.train import noise

    def broken_compile(fn, dynamic=True):
        return lambda *args: fn(*args) + 1.0  # wrong noise

    monkeypatch.setattr(noise, "_KERNELS", {})
    monkeypatch.setattr(noise.torch, "compile", broken_compile)
    monkeypatch.delenv("ESGRPO_NOISE_COMPILE", raising=False)
    x = noise.tensor_noise(3, "w", (4000,))
    assert "the compiled kernel _noise differs from its eager ops by up to 1" in capsys.readouterr().err
    assert noise._KERNELS[("_noise", "cpu")] is noise._noise
    monkeypatch.setattr(noise, "_KERNELS", {})
    monkeypatch.setenv("ESGRPO_NOISE_COMPILE", "0")
    assert torch.equal(x, noise.tensor_noise(3, "w", (4000,)))
