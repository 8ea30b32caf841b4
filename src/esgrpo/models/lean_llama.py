"""A lean decoding step for Llama-family models: a static KV cache, the model's own weight tensors, and
little Python per step.

The Hugging Face forward pass spends a good part of a decoding step on generic machinery: a dynamic
cache that concatenates every layer's keys and values at every step (quadratic copying), mask and
position bookkeeping, module calls and output objects. `LlamaStepper` does the same arithmetic with
none of that: keys and values are written into preallocated buffers, each layer is a handful of calls on
the live weight tensors (so ES perturbations and GRPO updates are seen at once, nothing is copied), and
the attention, rotary embedding, norms and MLP are Hugging Face's own functions called on the same
inputs, so the logits, and therefore the tokens, are the ones the generic path produces (tests and
`esgrpo bench rollout` check the tokens).

Used by rollout.generate for `LlamaForCausalLM` models with the sdpa or eager attention; any other
architecture uses the generic path (`HFStepper`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from esgrpo.rollout import cache_kwargs

SUPPORTED = ("LlamaForCausalLM",)


def supports(model: torch.nn.Module) -> bool:
    """Whether the lean step reproduces this model's forward pass."""
    cfg = getattr(model, "config", None)
    return (type(model).__name__ in SUPPORTED and cfg is not None
            and getattr(cfg, "_attn_implementation", "sdpa") in ("sdpa", "eager")
            and not getattr(cfg, "pretraining_tp", 1) > 1)


class HFStepper:
    """The generic path: the model's own forward with a DynamicCache (any causal LM)."""

    can_select = False  # the batch keeps its rows until every row has finished
    can_share = False  # no shared-prefix prefill (rollout.generate's shared_prefix)

    def __init__(self, model: torch.nn.Module, batch: int, max_len: int) -> None:
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)

    def __call__(self, ids: Tensor, mask: Tensor, position_ids: Tensor) -> Tensor:
        """Logits of the last position after feeding `ids` (mask: the whole sequence so far)."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                         **cache_kwargs(self.model, self.cache), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]


class LlamaStepper:
    """The lean path for Llama: the same arithmetic as HFStepper on a static cache (see the module docstring)."""

    can_select = True  # finished rows can leave the batch
    can_share = True  # a call with one row writes its keys and values to every row (a shared prompt prefix)

    def __init__(self, model: torch.nn.Module, batch: int, max_len: int) -> None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward

        self.model = model
        inner = model.model
        self.embed, self.norm, self.rotary = inner.embed_tokens, inner.norm, inner.rotary_emb
        self.layers = list(inner.layers[: model.config.num_hidden_layers])
        self.lm_head = model.lm_head
        self.rope = apply_rotary_pos_emb
        self.attention = (sdpa_attention_forward if model.config._attn_implementation == "sdpa"
                          else eager_attention_forward)
        first = self.layers[0].self_attn
        kv_heads = model.config.num_key_value_heads
        p = next(model.parameters())
        shape = (batch, kv_heads, max_len, first.head_dim)
        self.keys = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.layers]
        self.values = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.layers]
        self.length = 0  # positions filled in the cache

    def _mask(self, mask: Tensor, q_len: int) -> Tensor | None:
        """The boolean attention mask Hugging Face builds for sdpa: None without padding, else
        [B, 1, q_len, kv_len] with True where a query may attend (causal within the new tokens)."""
        if bool(mask.all()):
            return None
        kv = mask.shape[1]
        allowed = mask.bool()[:, None, None, :].expand(-1, 1, q_len, kv)
        if q_len > 1:
            causal = torch.ones((q_len, kv), dtype=torch.bool, device=mask.device).tril(kv - q_len)
            allowed = allowed & causal
        return allowed

    @staticmethod
    def _rms_norm(norm: torch.nn.Module, x: Tensor) -> Tensor:
        """LlamaRMSNorm.forward, op for op (without the module call)."""
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * h.to(x.dtype)

    def select(self, rows: Tensor) -> None:
        """Keep only these batch rows in the cache (finished rows leave the batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]

    @torch.no_grad()
    def __call__(self, ids: Tensor, mask: Tensor, position_ids: Tensor) -> Tensor:
        B, T = ids.shape
        start, end = self.length, self.length + T
        x = F.embedding(ids, self.embed.weight, self.embed.padding_idx)
        cos, sin = self.rotary(x, position_ids=position_ids)
        att_mask = self._mask(mask, T)
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            att = layer.self_attn
            h = self._rms_norm(layer.input_layernorm, x)
            shape = (B, T, -1, att.head_dim)
            q = F.linear(h, att.q_proj.weight, att.q_proj.bias).view(shape).transpose(1, 2)
            k = F.linear(h, att.k_proj.weight, att.k_proj.bias).view(shape).transpose(1, 2)
            v = F.linear(h, att.v_proj.weight, att.v_proj.bias).view(shape).transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
            keys[:, :, start:end] = k  # one row (a shared prefix) broadcasts to every row of the cache
            values[:, :, start:end] = v
            o, _ = self.attention(att, q, keys[:B, :, :end], values[:B, :, :end], att_mask, dropout=0.0,
                                  scaling=att.scaling)
            x = x + F.linear(o.reshape(B, T, -1).contiguous(), att.o_proj.weight, att.o_proj.bias)
            h = self._rms_norm(layer.post_attention_layernorm, x)
            mlp = layer.mlp
            x = x + F.linear(mlp.act_fn(F.linear(h, mlp.gate_proj.weight, mlp.gate_proj.bias))
                             * F.linear(h, mlp.up_proj.weight, mlp.up_proj.bias),
                             mlp.down_proj.weight, mlp.down_proj.bias)
        self.length = end
        return F.linear(self._rms_norm(self.norm, x[:, -1:, :]), self.lm_head.weight, self.lm_head.bias)[:, -1, :]


def stepper(model: torch.nn.Module, batch: int, max_len: int, lean: bool = True) -> HFStepper | LlamaStepper:
    """The decoding step for `model`: the lean one where it applies (and `lean`), else the generic one."""
    if lean and supports(model):
        return LlamaStepper(model, batch, max_len)
    return HFStepper(model, batch, max_len)
