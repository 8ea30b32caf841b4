"""Batched generation with a KV cache, and log-probabilities of given responses.

Why a hand-written loop instead of `model.generate`: sampling draws one uniform number per row
and step from a per-row generator seeded by the caller. A response then depends only on its own
seed and the model, not on the batch it sits in, which gives ES its common random numbers (every
population member decodes prompt i with the same seed) and makes micro-batching invisible.
Sampling uses the inverse CDF over the probabilities sorted in descending order, so a small
weight perturbation that leaves the ranking intact leaves the sample intact.

Prompts are left-padded; position ids are computed from the attention mask so a padded prompt
sees the same positions as it would alone.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Generation:
    """Responses of one `generate` call (row i answers prompt i)."""

    response_ids: list[list[int]]  # generated tokens, EOS included if produced, no padding
    texts: list[str]
    logprobs: list[list[float]] | None = None  # log pi(token) under the untempered model
    finished: list[bool] = field(default_factory=list)  # stopped at EOS (else hit max_new_tokens)

    @property
    def n_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)


def left_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), left-padded to the longest sequence."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix every sequence starts with."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return n


def middle_pad(seqs: list[list[int]], prefix: int, pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask) with the padding between a shared prefix of `prefix` tokens and the rest:
    [prefix | pad | rest]. With positions() the real tokens get the positions they have left-padded."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :prefix] = torch.tensor(s[:prefix], dtype=torch.long)
        mask[i, :prefix] = 1
        rest = s[prefix:]
        if rest:
            ids[i, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
            mask[i, width - len(rest):] = 1
    return ids.to(device), mask.to(device)


# A shared prompt prefix shorter than this is not worth a separate prefill.
MIN_SHARED_PREFIX = 8


def positions(mask: Tensor) -> Tensor:
    """Position ids that ignore left padding."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def sample_from_logits(logits: Tensor, temperature: float, top_p: float,
                       generators: list[torch.Generator] | None) -> Tensor:
    """Greedy if temperature == 0, else temperature + nucleus sampling with one uniform per row."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(dim=-1)
    if top_p < 1.0:
        keep = (cum - sorted_p) < top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        cum = sorted_p.cumsum(dim=-1)
    if generators is None:
        u = torch.rand(logits.shape[0], device="cpu")
    else:
        u = torch.stack([torch.rand((), generator=g) for g in generators])
    u = (u.to(cum.device) * cum[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cum, u).clamp(max=cum.shape[-1] - 1)
    return order.gather(-1, idx).squeeze(-1)


@torch.no_grad()
def generate(model: torch.nn.Module, prompt_ids: list[list[int]], *, eos_ids: set[int], pad_id: int,
             max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seeds: list[int] | None = None, return_logprobs: bool = False,
             decode=None, lean: bool = True, stop: Callable[[str], bool] | None = None,
             shared_prefix: bool = False, make_step: Callable[[int, int], Any] | None = None) -> Generation:
    """Decode a batch of prompts; stops each row at its first EOS and the batch when all rows stopped.

    lean: use the lean Llama step (models/lean_llama.py) where it applies: it computes the same logits as
    the model's generic forward (used for every other architecture, and with lean=False), and it drops
    finished rows from the batch instead of decoding padding for them. stop: a rule on a row's decoded
    response (needs `decode`) that ends it early, e.g. once its answer is complete. shared_prefix: on the lean
    path, the prompts' common token prefix (a few-shot prefix) is computed once, with batch 1, and its keys and
    values written to every row; the rest of each prompt follows it (padding between the two, middle_pad).
    The same arithmetic as the full prefill up to float rounding (the prefix's matrix products run on one row
    instead of B), so a token can differ where two are nearly tied: off by default, unused by the generic path.
    make_step(batch, max_len): builds the step instead of `stepper` (the batched low-rank ES population's,
    train/batched_population.py)."""
    from esgrpo.models.lean_llama import stepper

    device = next(model.parameters()).device
    B = len(prompt_ids)
    gens = None
    if temperature > 0 and seeds is not None:
        if len(seeds) != B:
            raise ValueError(f"need one seed per prompt: {len(seeds)} seeds for {B} prompts")
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    max_len = max(len(p) for p in prompt_ids) + max_new_tokens
    # make_step(batch, max_len): another step with the lean one's interface (the batched low-rank population's)
    step = make_step(B, max_len) if make_step is not None else stepper(model, B, max_len, lean=lean)
    # The common prefix leaves at least one token per prompt, whose logits start the decoding.
    shared = min(common_prefix(prompt_ids), min(len(p) for p in prompt_ids) - 1) \
        if shared_prefix and step.can_share and B > 1 else 0
    if shared >= MIN_SHARED_PREFIX:
        ids, mask = middle_pad(prompt_ids, shared, pad_id, device)
        pos_all = positions(mask)
        step(ids[:1, :shared], mask[:1, :shared], pos_all[:1, :shared])  # written to every row
        logits = step(ids[:, shared:], mask, pos_all[:, shared:])
    else:
        ids, mask = left_pad(prompt_ids, pad_id, device)
        logits = step(ids, mask, positions(mask))
    pos = positions(mask)[:, -1]
    eos = torch.tensor(sorted(eos_ids), device=device)
    rows = torch.arange(B, device=device)  # the batch rows still decoding, in order
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lps = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device) if return_logprobs else None
    length = torch.zeros(B, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        row_gens = None if gens is None else [gens[i] for i in rows.tolist()]
        nxt = sample_from_logits(logits, temperature, top_p, row_gens)
        live = ~finished[rows]  # all of them on the lean path; the generic path also carries finished rows
        tokens[rows[live], t] = nxt[live]
        if lps is not None:
            lp_t = torch.log_softmax(logits.float(), dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
            lps[rows[live], t] = lp_t[live]
        length[rows[live]] = t + 1
        finished[rows[live]] |= torch.isin(nxt[live], eos)
        if stop is not None and decode is not None:
            for i in rows[~finished[rows]].tolist():
                if stop(decode(tokens[i, :int(length[i])].tolist())):
                    finished[i] = True
        if bool(finished.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
        pos = pos + 1
        if step.can_select:
            keep = (~finished[rows]).nonzero().squeeze(-1)
            if len(keep) < len(rows):  # drop finished rows: their decoding would be thrown away
                step.select(keep)
                rows, nxt, mask, pos = rows[keep], nxt[keep], mask[keep], pos[keep]
        else:  # the generic path keeps the batch's shape: finished rows decode padding
            nxt = torch.where(finished[rows], torch.full_like(nxt, pad_id), nxt)
        logits = step(nxt[:, None], mask, pos[:, None])
    gen, lp, length, finished = tokens.cpu(), None if lps is None else lps.cpu(), length.cpu(), finished.cpu()
    response_ids = [gen[i, :int(length[i])].tolist() for i in range(B)]
    logprobs = [lp[i, :int(length[i])].tolist() for i in range(B)] if lp is not None else None
    texts = [decode(r) for r in response_ids] if decode else ["" for _ in response_ids]
    return Generation(response_ids, texts, logprobs, finished.tolist())


def response_log_softmax(model: torch.nn.Module, prompt_ids: list[list[int]], response_ids: list[list[int]],
                         pad_id: int, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """fp32 log-softmax(logits / T) at every response position, differentiable.

    Returns (logp (B, T, V), mask (B, T), targets (B, T)): row i, position t is the distribution of
    response token t given prompt i and response tokens < t; T is the longest response; mask is 1 on
    real tokens. Sequences are laid out as [left pad | prompt | response | right pad].
    """
    device = next(model.parameters()).device
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    T = max(1, max(len(r) for r in response_ids))
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    resp_mask = torch.zeros((B, T), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attn[i, P - len(p):P] = 1
        if r:
            ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
            attn[i, P:P + len(r)] = 1
            resp_mask[i, :len(r)] = 1
    ids, attn, resp_mask = ids.to(device), attn.to(device), resp_mask.to(device)
    # Only the T positions that predict a response token need the vocabulary head: with a few-shot prompt of
    # ~250 tokens and ~20 response tokens, full-sequence float32 logits over a 49k vocabulary were most of a
    # GRPO step's time and memory. `logits_to_keep` (Hugging Face causal LMs) keeps the last T + 1 positions,
    # P - 1 .. P + T - 1; models without it compute all of them and are sliced.
    if _keeps_logits(model):
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn), logits_to_keep=T + 1).logits
        logits = logits[:, :T, :].float()
    else:
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits
        logits = logits[:, P - 1:P + T - 1, :].float()  # the logits that predict each response token
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1), resp_mask, ids[:, P:P + T]


def _keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes `logits_to_keep` (and so computes the head on those positions only)."""
    return _takes_logits_to_keep(type(model))


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:  # once per model class, not once per micro-batch
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """The KV cache as the model's forward takes it: `cache=` (transformers 5.24) or `past_key_values=`
    (earlier 5.x, e.g. the 5.19 that vLLM's builds pin). A wrong name would be swallowed by **kwargs and every
    step would decode without its past."""
    return {_cache_name(type(model)): cache}


@functools.cache
def _cache_name(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def shared_prompt_log_softmax(model: torch.nn.Module, prompts: list[list[int]], counts: list[int],
                              response_ids: list[list[int]], pad_id: int,
                              temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """response_log_softmax for responses that share prompts, each distinct prompt computed once.

    `prompts[j]` is the prompt of the next `counts[j]` responses (GRPO's group of K samples of one prompt).
    1. the prompts alone, left-padded, keeping their keys and values (with their graph) and the logits of
       their last position (which predict response token 0);
    2. those keys and values repeated `counts[j]` times, and the responses run on them at positions that
       continue each prompt, giving the logits that predict response tokens 1..T-1.
    The backward pass then also goes through each prompt once instead of once per response. The values equal
    response_log_softmax's up to float rounding (the attention sums over the prompt are split differently).
    Needs a Hugging Face model that fills a `DynamicCache` passed as `cache` (`.layers[i].keys/.values`).
    """
    if len(prompts) != len(counts) or sum(counts) != len(response_ids) or min(counts, default=1) < 1:
        raise ValueError(f"{len(prompts)} prompts with counts {counts} for {len(response_ids)} responses")
    device = next(model.parameters()).device
    B = len(response_ids)
    P = max(len(p) for p in prompts)
    T = max(1, max(len(r) for r in response_ids))
    p_ids, p_attn = left_pad(prompts, pad_id, device)
    r_ids = torch.full((B, T), pad_id, dtype=torch.long)
    resp_mask = torch.zeros((B, T), dtype=torch.float32)
    for i, r in enumerate(response_ids):
        if r:
            r_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            resp_mask[i, :len(r)] = 1
    r_ids, resp_mask = r_ids.to(device), resp_mask.to(device)
    repeats = torch.tensor(counts, device=device)

    # 1. The prompts once: their cache and the distribution of response token 0.
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)  # filled in place (the model's `cache` argument)
    kwargs = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    out = model(input_ids=p_ids, attention_mask=p_attn, position_ids=positions(p_attn), use_cache=True,
                **cache_kwargs(model, cache), **kwargs)
    first = out.logits[:, -1:, :].repeat_interleave(repeats, dim=0)
    if T == 1:
        logits = first.float()
    else:
        # 2. The responses on the repeated prompt cache (a response's pad tail is masked, never attended to).
        for layer in cache.layers:
            layer.keys = layer.keys.repeat_interleave(repeats, dim=0)
            layer.values = layer.values.repeat_interleave(repeats, dim=0)
        r_attn = (resp_mask > 0).long()
        r_attn[:, 0] = 1  # an empty response still has its (ignored) first position
        attn = torch.cat([p_attn.repeat_interleave(repeats, dim=0), r_attn], dim=1)
        start = p_attn.sum(dim=1).repeat_interleave(repeats)[:, None]
        pos = start + torch.arange(T, device=device)[None, :]
        rest = model(input_ids=r_ids[:, :T - 1], attention_mask=attn[:, :P + T - 1], position_ids=pos[:, :T - 1],
                     **cache_kwargs(model, cache), use_cache=True).logits
        logits = torch.cat([first, rest], dim=1).float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1), resp_mask, r_ids


def response_logprobs(model: torch.nn.Module, prompt_ids: list[list[int]], response_ids: list[list[int]],
                      pad_id: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-token log pi(response | prompt), differentiable: (logprobs, mask), both (B, T)."""
    logp, resp_mask, targets = response_log_softmax(model, prompt_ids, response_ids, pad_id, temperature)
    lp = logp.gather(-1, targets[..., None]).squeeze(-1)
    return lp * resp_mask, resp_mask


def shared_prompt_logprobs(model: torch.nn.Module, prompts: list[list[int]], counts: list[int],
                           response_ids: list[list[int]], pad_id: int,
                           temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """response_logprobs with each distinct prompt computed once (shared_prompt_log_softmax): (logprobs, mask)."""
    logp, resp_mask, targets = shared_prompt_log_softmax(model, prompts, counts, response_ids, pad_id, temperature)
    lp = logp.gather(-1, targets[..., None]).squeeze(-1)
    return lp * resp_mask, resp_mask
