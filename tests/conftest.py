"""Shared fixtures: tiny random models (fast) and offline hub settings."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # micro models: thread overhead exceeds the gain

MICRO_TEXTS = [
    "<|system|>Solve it.<|end|><|user|>Numbers: 3 5 7. Target: 22.<|end|><|assistant|>\\boxed{3*5+7}<|end|>",
    "<|system|>Answer yes or no.<|end|><|user|>Is the sky blue?<|end|><|assistant|>\\boxed{yes}<|end|>",
    "<|user|>Compute 7+5*3.<|end|><|assistant|>7+15=22. \\boxed{22}<|end|>",
    '<|user|>Which element has the symbol Fe? A) iron B) tin<|end|><|assistant|>"answer": "A"<|end|>',
] * 4


def make_micro_policy(seed: int = 0, hidden: int = 32, layers: int = 2, dtype: torch.dtype = torch.float32):
    """A randomly initialised 2-layer Llama with a small BPE tokenizer: fast, not competent."""
    from esgrpo.config import TinyModelConfig
    from esgrpo.models.policy import Policy
    from esgrpo.models.tiny import make_model, train_tokenizer

    tok = train_tokenizer(MICRO_TEXTS, vocab_size=300)
    cfg = TinyModelConfig(seed=seed, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
                          num_heads=4, max_positions=256)
    model = make_model(cfg, tok).to(dtype)
    model.eval()
    return Policy(model, tok, name="micro")


@pytest.fixture
def micro_policy():
    return make_micro_policy()


def _stub_task_class():
    from esgrpo.tasks.base import Task

    class StubTask(Task):
        """A task for trainer tests: subclasses define `reward`; it has no data of its own."""

        name = "stub"
        system_prompt = "Answer."

        def synthetic(self, split, n, seed):
            raise NotImplementedError

        def from_hub(self, split, n, path):
            raise NotImplementedError

        def demonstration(self, example, rng, kind):
            raise NotImplementedError

    return StubTask


StubTask = _stub_task_class()


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after (micro models gain nothing from threads, and on a
    shared CPU extra threads mostly spin)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A model cache shared by the tests of one module."""
    return str(tmp_path_factory.mktemp("cache"))
