"""load_hf / resolve_dtype / resolve_device: local round trip and one-line errors (no network needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esgrpo.errors import ConfigError, ModelLoadError
from esgrpo.models import hub
from esgrpo.models.hub import load_hf, resolve_device, resolve_dtype

WORDS = ["the", "a", "is", "of", "and", "to", "in", "what", "plus", "equals", "one", "two", "three",
         "four", "five", "yes", "no", "answer", "question"]


def _tiny_tokenizer():
    """A word-level tokenizer built in memory: no eos-as-pad, no padding side set (load_hf must fix both)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


def test_local_directory_round_trips(tiny_dir):
    path, original = tiny_dir
    model, tokenizer = load_hf(str(path), device="cpu")
    assert model.device.type == "cpu"
    assert model.dtype == torch.float32
    assert not model.training
    ids = tokenizer("what is one plus two", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, original(input_ids=ids).logits)


def test_tokenizer_is_ready_for_batched_generation(tiny_dir):
    path, _ = tiny_dir
    model, tokenizer = load_hf(str(path), device="cpu")
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    batch = tokenizer(["yes", "what is one plus two"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == tokenizer.pad_token_id  # left-padded
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize(("name", "expected"), [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_dtype_is_applied(tiny_dir, name, expected):
    model, _ = load_hf(str(tiny_dir[0]), dtype=name, device="cpu")
    assert model.dtype == expected


def test_missing_local_path_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as info:
        load_hf(str(missing))
    message = str(info.value)
    assert str(missing) in message and "\n" not in message
    assert "smollm2-135m" in message


def test_file_instead_of_directory(tmp_path):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_hf(str(weights))


def test_unknown_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache, whatever the machine has
    name = "esgrpo-test/definitely-not-a-model"
    with pytest.raises(ModelLoadError) as info:
        load_hf(name)
    message = str(info.value)
    assert name in message and "offline" in message and "\n" not in message


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    name = "esgrpo-test/definitely-not-a-model"
    with pytest.raises(ModelLoadError) as info:
        load_hf(name)
    assert name in str(info.value)


def test_invalid_hub_id(monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match="nor a valid hub id"):
        load_hf("not a valid id!!")


def test_bad_dtype_is_config_error(tiny_dir):
    with pytest.raises(ConfigError, match="float32.*bfloat16.*float16.*auto"):
        load_hf(str(tiny_dir[0]), dtype="fp8")


def test_resolve_dtype():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("BFloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("auto") is None
    with pytest.raises(ConfigError, match="int8"):
        resolve_dtype("int8")


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="allowed"):
        resolve_device("gpu0")
