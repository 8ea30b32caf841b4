"""Generation: greedy determinism, padding equivalence, seeded sampling, EOS handling, log-probs."""

from __future__ import annotations

import pytest
import torch

from esgrpo.rollout import left_pad, positions, sample_from_logits

MSGS = [
    [{"role": "system", "content": "Solve it."}, {"role": "user", "content": "Numbers: 3 5 7. Target: 22."}],
    [{"role": "user", "content": "Is the sky blue?"}],
    [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": "Compute 7+5*3 and 9-2."}],
]


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_greedy_is_deterministic(micro_policy):
    prompts = micro_policy.encode(MSGS)
    a = micro_policy.generate(prompts, max_new_tokens=12)
    b = micro_policy.generate(prompts, max_new_tokens=12)
    assert a.response_ids == b.response_ids
    assert a.texts == b.texts


def test_padding_equivalence_greedy(micro_policy):
    """A prompt alone and inside a left-padded batch gives the same greedy output."""
    prompts = micro_policy.encode(MSGS)
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    batch = micro_policy.generate(prompts, max_new_tokens=12)
    for i, p in enumerate(prompts):
        alone = micro_policy.generate([p], max_new_tokens=12)
        assert alone.response_ids[0] == batch.response_ids[i]


def test_seeded_sampling_is_batch_independent(micro_policy):
    """Common random numbers: a row's sample depends only on its seed, not on its batch."""
    prompts = micro_policy.encode(MSGS)
    seeds = [11, 22, 33]
    full = micro_policy.generate(prompts, max_new_tokens=10, temperature=1.0, top_p=0.95, seeds=seeds)
    again = micro_policy.generate(prompts, max_new_tokens=10, temperature=1.0, top_p=0.95, seeds=seeds)
    assert full.response_ids == again.response_ids
    for i in range(3):
        alone = micro_policy.generate([prompts[i]], max_new_tokens=10, temperature=1.0, top_p=0.95,
                                      seeds=[seeds[i]])
        assert alone.response_ids[0] == full.response_ids[i]
    other = micro_policy.generate(prompts, max_new_tokens=10, temperature=1.0, top_p=0.95, seeds=[1, 2, 3])
    assert other.response_ids != full.response_ids


def test_micro_batching_is_invisible(micro_policy):
    prompts = micro_policy.encode(MSGS)
    a = micro_policy.generate(prompts, max_new_tokens=8, temperature=1.0, seeds=[1, 2, 3])
    b = micro_policy.generate(prompts, max_new_tokens=8, temperature=1.0, seeds=[1, 2, 3], batch_size=1)
    assert a.response_ids == b.response_ids


def test_stops_at_eos_and_reports_logprobs(micro_policy):
    prompts = micro_policy.encode(MSGS)
    first = micro_policy.generate(prompts, max_new_tokens=6, return_logprobs=True)
    for ids, lp in zip(first.response_ids, first.logprobs, strict=True):
        assert len(ids) == len(lp) and all(x <= 0 for x in lp)
    # Declare the token row 0 emits third to be an EOS: row 0 must now stop right there.
    stop = first.response_ids[0][2]
    micro_policy.eos_ids = micro_policy.eos_ids | {stop}
    out = micro_policy.generate(prompts, max_new_tokens=6)
    cut = first.response_ids[0].index(stop) + 1
    assert out.response_ids[0] == first.response_ids[0][:cut]
    assert out.finished[0]
    for ids, fin in zip(out.response_ids, out.finished, strict=True):
        assert fin == any(t in micro_policy.eos_ids for t in ids)
        assert len(ids) <= 6


def test_generation_logprobs_match_scoring(micro_policy):
    """log-probs returned by generate equal those recomputed by a full forward pass."""
    prompts = micro_policy.encode(MSGS)
    out = micro_policy.generate(prompts, max_new_tokens=8, temperature=1.0, seeds=[4, 5, 6], return_logprobs=True)
    with torch.no_grad():
        lp, mask = micro_policy.logprobs(prompts, out.response_ids)
    for i, row in enumerate(out.logprobs):
        n = len(row)
        assert int(mask[i].sum()) == n
        assert torch.allclose(lp[i, :n], torch.tensor(row), atol=1e-4)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    gens = [torch.Generator().manual_seed(s) for s in range(1)]
    seen = set()
    for s in range(200):
        gens = [torch.Generator().manual_seed(s)]
        seen.add(int(sample_from_logits(logits, 1.0, 0.8, gens)))
    assert seen == {0, 1}
    assert int(sample_from_logits(logits, 0.0, 1.0, None)) == 0


def _full_sequence_logprobs(model, prompt_ids, response_ids, pad_id):
    """The reference: logits at every position of [pad | prompt | response | pad], then the response slice."""
    B, P = len(prompt_ids), max(len(p) for p in prompt_ids)
    T = max(len(r) for r in response_ids)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        ids[i, P - len(p):P] = torch.tensor(p)
        attn[i, P - len(p):P + len(r)] = 1
        ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits[:, P - 1:P + T - 1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None]).squeeze(-1)


def test_logprobs_at_response_positions_only_equal_the_full_sequence_ones():
    """GRPO's scoring forward computes the vocabulary head at the response positions only (logits_to_keep): the
    log-probs and the gradients equal those of the full-sequence logits (float tolerance; on this CPU, bitwise)."""
    from esgrpo.config import ModelConfig
    from esgrpo.models import load_policy
    from esgrpo.rollout import response_logprobs

    policy = load_policy(ModelConfig(name="tiny", threads=1))
    prompts = policy.encode(MSGS)
    gen = policy.generate(prompts, max_new_tokens=10, temperature=1.0, seeds=[1, 2, 3])
    responses = [r if r else [policy.pad_id] for r in gen.response_ids]
    assert len({len(r) for r in responses}) > 1 or len({len(p) for p in prompts}) > 1  # padding on some side
    params = [p for _, p in policy.named_parameters()]
    kept, mask = response_logprobs(policy.model, prompts, responses, policy.pad_id)
    grads_kept = torch.autograd.grad((kept * mask).sum(), params)
    full = _full_sequence_logprobs(policy.model, prompts, responses, policy.pad_id) * mask
    grads_full = torch.autograd.grad(full.sum(), params)
    torch.testing.assert_close(kept, full, rtol=1e-6, atol=1e-6)
    for g_kept, g_full in zip(grads_kept, grads_full, strict=True):
        torch.testing.assert_close(g_kept, g_full, rtol=1e-5, atol=1e-7)


def test_shared_prompt_logprobs_equal_the_per_response_ones():
    """grpo.shared_prompt: each prompt computed once for its group (its keys and values repeated), the responses
    on them. Log-probs and gradients equal the per-response forward's to float tolerance, with prompts of
    different lengths (left padding), responses of different lengths (right padding) and an empty response."""
    from esgrpo.config import ModelConfig
    from esgrpo.models import load_policy
    from esgrpo.rollout import response_logprobs, shared_prompt_logprobs

    policy = load_policy(ModelConfig(name="tiny", threads=1))
    prompts = policy.encode(MSGS)
    assert len({len(p) for p in prompts}) > 1
    counts = [3, 1, 2]
    rep = [p for p, c in zip(prompts, counts, strict=True) for _ in range(c)]
    gen = policy.generate(rep, max_new_tokens=10, temperature=1.0, seeds=list(range(len(rep))))
    responses = [list(r) for r in gen.response_ids]
    responses[1] = []  # an empty response: no tokens, masked everywhere
    responses[2], responses[4] = responses[2][:4], responses[4][:1]  # ragged lengths: right padding
    assert len({len(r) for r in responses}) > 2
    params = [p for _, p in policy.named_parameters()]
    weights = torch.linspace(0.5, 1.5, len(rep))[:, None]  # a loss that weighs rows differently
    shared, mask_s = shared_prompt_logprobs(policy.model, prompts, counts, responses, policy.pad_id, 0.9)
    grads_s = torch.autograd.grad((shared * weights).sum(), params)
    each, mask_e = response_logprobs(policy.model, rep, responses, policy.pad_id, 0.9)
    grads_e = torch.autograd.grad((each * weights).sum(), params)
    assert torch.equal(mask_s, mask_e) and mask_s[1].sum() == 0
    torch.testing.assert_close(shared, each, rtol=1e-5, atol=1e-5)
    for g_s, g_e in zip(grads_s, grads_e, strict=True):
        torch.testing.assert_close(g_s, g_e, rtol=1e-4, atol=2e-5)


def test_shared_prompt_logprobs_refuse_counts_that_do_not_add_up():
    from esgrpo.rollout import shared_prompt_logprobs

    with pytest.raises(ValueError, match="counts"):
        shared_prompt_logprobs(torch.nn.Linear(1, 1), [[1, 2]], [2], [[3]], 0)


def test_common_prefix_and_middle_padding_by_hand():
    from esgrpo.rollout import common_prefix, middle_pad

    seqs = [[1, 2, 3, 4], [1, 2, 3, 9, 9, 9], [1, 2, 5]]
    assert common_prefix(seqs) == 2 and common_prefix([[1, 2], [1, 2, 3]]) == 2 and common_prefix([[4], [5]]) == 0
    ids, mask = middle_pad(seqs, 2, 0, torch.device("cpu"))
    assert ids.tolist() == [[1, 2, 0, 0, 3, 4], [1, 2, 3, 9, 9, 9], [1, 2, 0, 0, 0, 5]]
    assert mask.tolist() == [[1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 1]]
    # every real token keeps the position it has left-padded
    assert positions(mask).tolist() == [[0, 1, 1, 1, 2, 3], [0, 1, 2, 3, 4, 5], [0, 1, 1, 1, 1, 2]]


def test_shared_prefix_generation_matches_the_full_prefill():
    """es.shared_prefix: the prompts' common prefix (here a two-shot prefix) is prefilled once with one row and
    broadcast to the batch. The first logits equal the full prefill's to float tolerance, and the greedy
    responses are the same (a token may only differ where two are nearly tied; none is here)."""
    from esgrpo.config import DataConfig, ModelConfig, PromptConfig
    from esgrpo.models import load_policy
    from esgrpo.models.lean_llama import LlamaStepper
    from esgrpo.rollout import common_prefix, generate, middle_pad
    from esgrpo.tasks import get_task
    from esgrpo.tasks.prompting import make_task

    policy = load_policy(ModelConfig(name="tiny", threads=1))
    task = make_task("math", PromptConfig(shots=2), DataConfig())
    prompts = task.prompt_ids(policy, get_task("math").synthetic("test", 12, seed=3))
    shared = common_prefix(prompts)
    assert shared >= 40 and len({len(p) for p in prompts}) > 1  # a real shared prefix, ragged rests
    full_ids, full_mask = left_pad(prompts, policy.pad_id, policy.device)
    full = LlamaStepper(policy.model, len(prompts), full_ids.shape[1] + 1)(full_ids, full_mask, positions(full_mask))
    ids, mask = middle_pad(prompts, shared, policy.pad_id, policy.device)
    step = LlamaStepper(policy.model, len(prompts), ids.shape[1] + 1)
    step(ids[:1, :shared], mask[:1, :shared], positions(mask)[:1, :shared])
    split = step(ids[:, shared:], mask, positions(mask)[:, shared:])
    torch.testing.assert_close(split, full, rtol=1e-4, atol=1e-4)
    kw = {"eos_ids": policy.eos_ids, "pad_id": policy.pad_id, "max_new_tokens": 12}
    assert generate(policy.model, prompts, shared_prefix=True, **kw).response_ids == \
        generate(policy.model, prompts, **kw).response_ids
