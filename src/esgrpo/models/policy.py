"""The small interface trainers and evaluators use to talk to a causal LM.

    policy.encode(messages_list)      -> prompt token ids (chat template, generation prompt)
    policy.generate(prompt_ids, ...)  -> Generation (texts, token ids, optional log-probs)
    policy.logprobs(prompt_ids, response_ids) -> differentiable per-token log-probs
    policy.named_parameters()         -> the trainable tensors, in a stable order
    policy.save(path)                 -> a Hugging Face checkpoint directory

ES perturbs and restores the tensors returned by `named_parameters()` in place; GRPO optimizes them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from esgrpo.rollout import Generation, generate, response_logprobs, shared_prompt_logprobs


class Policy:
    """A causal LM plus its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_ids = self._eos_ids()
        self.engine = None  # None: esgrpo's own decoding loop; else e.g. a VLLMEngine (models/vllm_engine.py)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            e = getattr(src, "eos_token_id", None) if src is not None else None
            if isinstance(e, int):
                ids.add(e)
            elif isinstance(e, list | tuple):
                ids.update(int(x) for x in e)
        if not ids:
            raise ValueError(f"model '{self.name}' defines no EOS token")
        return ids

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, messages_list: list[list[dict[str, str]]]) -> list[list[int]]:
        """Chat-template each conversation and append the assistant generation prompt."""
        out = []
        for messages in messages_list:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys") and "input_ids" in ids:  # BatchEncoding in newer transformers
                ids = ids["input_ids"]
            out.append([int(t) for t in ids])
        return out

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t not in self.eos_ids], skip_special_tokens=True)

    def generate(self, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seeds: list[int] | None = None, return_logprobs: bool = False,
                 batch_size: int | None = None, stop: Callable[[str], bool] | None = None,
                 shared_prefix: bool = False) -> Generation:
        """Generate in micro-batches of `batch_size` prompts (results are batch-size independent); `stop`: a
        rule on the decoded response that ends it early; `shared_prefix`: each micro-batch's common prompt
        prefix computed once (rollout.generate). With an engine, it decodes (batch_size and shared_prefix are
        the engine's business) after receiving the current weights if they changed."""
        if self.engine is not None:
            return self.engine.generate(prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                        top_p=top_p, seeds=seeds, return_logprobs=return_logprobs,
                                        eos_ids=self.eos_ids, decode=self.decode, stop=stop)
        was_training = self.model.training
        self.model.eval()
        bs = batch_size or len(prompt_ids)
        parts = []
        for s in range(0, len(prompt_ids), bs):
            parts.append(generate(
                self.model, prompt_ids[s:s + bs], eos_ids=self.eos_ids, pad_id=self.pad_id,
                max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                seeds=None if seeds is None else seeds[s:s + bs], return_logprobs=return_logprobs,
                decode=self.decode, stop=stop, shared_prefix=shared_prefix))
        self.model.train(was_training)
        return Generation(
            response_ids=[r for p in parts for r in p.response_ids],
            texts=[t for p in parts for t in p.texts],
            logprobs=[x for p in parts for x in p.logprobs] if return_logprobs else None,
            finished=[f for p in parts for f in p.finished])

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]],
                 temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        return response_logprobs(self.model, prompt_ids, response_ids, self.pad_id, temperature)

    def shared_prompt_logprobs(self, prompts: list[list[int]], counts: list[int], response_ids: list[list[int]],
                               temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """logprobs for responses in groups: prompts[j] is the prompt of the next counts[j] responses, computed
        once for them (rollout.shared_prompt_log_softmax)."""
        return shared_prompt_logprobs(self.model, prompts, counts, response_ids, self.pad_id, temperature)

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        """Trainable tensors in a stable order; tied weights appear once."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def num_parameters(self) -> int:
        return sum(p.numel() for _, p in self.named_parameters())

    def save(self, path: str | Path) -> Path:
        """Write a Hugging Face checkpoint (safetensors + config + tokenizer)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        return path
