"""The built-in tiny model: tokenizer, chat template, noisy corpus, deterministic build, HF round-trip."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from esgrpo.config import TinyModelConfig
from esgrpo.models.tiny import _demo_kind, build_corpus, build_tiny, error_prone, render, train_tokenizer
from esgrpo.tasks import TASK_NAMES

SMALL = TinyModelConfig(hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4, steps=25,
                        corpus_per_task=200, batch_size=8, warmup=5, vocab_size=400)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny(SMALL, tmp_path_factory.mktemp("cache"))


def test_corpus_is_seeded_and_mixes_correct_wrong_mistakes_and_slips():
    a, b = build_corpus(SMALL), build_corpus(SMALL)
    assert a == b
    assert {d["task"] for d in a} == set(TASK_NAMES)
    kinds = Counter(d["kind"] for d in a)
    assert min(kinds["correct"], kinds["wrong"], kinds["mistake"], kinds["slip"]) > 0
    # the systematic mistake concentrates on the error-prone prompts (a visible feature), by construction:
    # there it outnumbers the right answers (so greedy makes it), elsewhere it is rare
    rate = lambda docs, kind: sum(d["kind"] == kind for d in docs) / len(docs)  # noqa: E731
    for task in TASK_NAMES:
        docs = [d for d in a if d["task"] == task]
        prone = [d for d in docs if error_prone(d["messages"][-1]["content"])]
        other = [d for d in docs if not error_prone(d["messages"][-1]["content"])]
        expected = (1 - SMALL.p_slip_prone) * SMALL.p_mistake_prone
        assert abs(rate(prone, "mistake") - expected) < 0.12, (task, rate(prone, "mistake"), expected)
        assert rate(prone, "mistake") > rate(prone, "correct"), task
        assert rate(other, "mistake") < 0.15 and rate(other, "correct") > 0.6, task
        assert rate(docs, "slip") < 0.1, task
    # every mistake is a wrong answer in the right format
    from esgrpo.tasks import get_task
    for d in a[:400]:
        if d["kind"] == "mistake":
            task = get_task(d["task"])
            assert task.answer(d["response"]) is not None, d


@pytest.mark.parametrize("u, kind", [(0.0, "slip"), (0.099, "slip"), (0.1, "mistake"), (0.549, "mistake"),
                                     (0.55, "wrong"), (0.594, "wrong"), (0.596, "correct"), (0.999, "correct")])
def test_demo_kind_splits_one_draw_in_order(u, kind):
    # by hand: slip 0.1; mistake 0.5 of the remaining 0.9 = 0.45 (to 0.55); wrong 0.1 of the remaining 0.45
    # = 0.045 (to 0.595); correct the rest
    assert _demo_kind(u, 0.1, 0.5, 0.1) == kind


def test_tokenizer_splits_digits_and_round_trips():
    texts = [render(d["messages"], d["response"]) for d in build_corpus(SMALL)]
    tok = train_tokenizer(texts, 400)
    ids = tok.encode("Numbers: 12 7. Target: 19.", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert "12" not in pieces and "1" in pieces and "2" in pieces  # digits are single tokens
    assert tok.decode(ids) == "Numbers: 12 7. Target: 19."
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>S<|end|><|user|>Q<|end|><|assistant|>"


def test_build_is_deterministic_cached_and_loads_with_from_pretrained(built, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((built / "build.json").read_text())
    assert info["parameters"] > 0 and info["loss_curve"][-1]["loss"] < info["loss_curve"][0]["loss"]
    again = build_tiny(SMALL, built.parent)  # cached: same directory, not rebuilt
    assert again == built
    fresh = build_tiny(SMALL, tmp_path)  # rebuilt from scratch: bit-identical weights
    from safetensors.torch import load_file

    wa, wb = load_file(str(built / "model.safetensors")), load_file(str(fresh / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    model = AutoModelForCausalLM.from_pretrained(built)
    tok = AutoTokenizer.from_pretrained(built)
    assert tok.chat_template and tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>"
    ids = torch.tensor([tok.encode("Compute 2+3.", add_special_tokens=False)])
    assert model(input_ids=ids).logits.shape[-1] == len(tok)
    assert (built / "heldout.jsonl").exists()


def test_policy_checkpoint_round_trip(built, tmp_path):
    """save -> from_pretrained gives the same logits (the run records' checkpoint format)."""
    from esgrpo.models.hub import load_hf
    from esgrpo.models.policy import Policy

    m, t = load_hf(str(built))
    p = Policy(m, t)
    ids = torch.tensor([p.encode([[{"role": "user", "content": "Is it?"}]])[0]])
    before = m(input_ids=ids).logits
    p.save(tmp_path / "ckpt")
    m2, _ = load_hf(str(tmp_path / "ckpt"))
    assert torch.equal(before, m2(input_ids=ids).logits)
