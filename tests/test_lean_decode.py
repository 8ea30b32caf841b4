"""The lean Llama decoding step: the same tokens (and log-probs) as the generic loop and as Hugging Face's
generate, for greedy and seeded sampling, with grouped-query attention, bf16 and rows finishing early;
other architectures use the generic loop."""

from __future__ import annotations

import pytest
import torch

from conftest import MICRO_TEXTS, make_micro_policy
from esgrpo.config import ModelConfig
from esgrpo.models import load_policy
from esgrpo.models.lean_llama import HFStepper, LlamaStepper, stepper, supports
from esgrpo.rollout import generate, left_pad
from esgrpo.tasks import get_task, load_examples


def _gqa_policy(dtype=torch.float32):
    """A random Llama with grouped-query attention (4 query heads, 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from esgrpo.models.policy import Policy
    from esgrpo.models.tiny import train_tokenizer

    tok = train_tokenizer(MICRO_TEXTS, vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    return Policy(model, tok, name="gqa")


def _prompts(policy, task: str, n: int = 24) -> list[list[int]]:
    return policy.encode([get_task(task).messages(e) for e in load_examples(task, "synthetic", "test", n, seed=3)])


def _both(policy, prompts, **kw):
    common = dict(eos_ids=policy.eos_ids, pad_id=policy.pad_id, return_logprobs=True, **kw)
    return generate(policy.model, prompts, lean=False, **common), generate(policy.model, prompts, lean=True, **common)


@pytest.mark.parametrize("make", [lambda: load_policy(ModelConfig()), make_micro_policy, _gqa_policy,
                                  lambda: _gqa_policy(torch.bfloat16)], ids=["tiny", "micro", "gqa", "gqa-bf16"])
@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampled"])
def test_lean_step_gives_the_generic_loops_tokens(make, sampling):
    policy = make()
    assert supports(policy.model)
    prompts = _prompts(policy, "math") + _prompts(policy, "countdown")  # prompts of different lengths: padding
    kw = {"temperature": 1.0, "top_p": 0.95, "seeds": list(range(len(prompts)))} if sampling else {}
    generic, lean = _both(policy, prompts, max_new_tokens=20, **kw)
    assert lean.response_ids == generic.response_ids and lean.finished == generic.finished
    lengths = {len(r) for r in lean.response_ids}
    if make is not make_micro_policy:
        assert len(lengths) > 1 or not all(lean.finished)  # rows finish at different steps
    for a, b in zip(lean.logprobs, generic.logprobs, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)


def test_lean_step_matches_hugging_face_generate_greedy():
    policy = load_policy(ModelConfig())
    prompts = _prompts(policy, "boolq", 32)
    ours = generate(policy.model, prompts, eos_ids=policy.eos_ids, pad_id=policy.pad_id, max_new_tokens=24).response_ids
    ids, mask = left_pad(prompts, policy.pad_id, policy.device)
    with torch.no_grad():
        out = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                                    pad_token_id=policy.pad_id, eos_token_id=sorted(policy.eos_ids))
    for row, mine in zip(out[:, ids.shape[1]:].tolist(), ours, strict=True):
        n = next((i + 1 for i, t in enumerate(row) if t in policy.eos_ids), len(row))
        assert row[:n] == mine


def test_other_architectures_use_the_generic_loop():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=64))
    assert not supports(gpt2) and isinstance(stepper(gpt2, 2, 10), HFStepper)
    assert isinstance(stepper(make_micro_policy().model, 2, 10), LlamaStepper)
    assert isinstance(stepper(make_micro_policy().model, 2, 10, lean=False), HFStepper)


def test_lean_step_reads_the_live_weights():
    """ES perturbs the weights in place between generations: the lean step must see the change at once."""
    policy = make_micro_policy()
    prompts = _prompts(policy, "math", 8)
    kw = dict(eos_ids=policy.eos_ids, pad_id=policy.pad_id, max_new_tokens=8, return_logprobs=True)
    before = generate(policy.model, prompts, **kw)
    with torch.no_grad():
        policy.model.lm_head.weight.mul_(1.5)
    after_lean, after_generic = (generate(policy.model, prompts, lean=b, **kw) for b in (True, False))
    assert after_lean.response_ids == after_generic.response_ids
    assert after_lean.logprobs != before.logprobs
