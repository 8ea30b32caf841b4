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

    # The weight operations of one step, as methods so that a subclass can add per-row terms (LowRankStepper).
    def _linear(self, h: Tensor, module: torch.nn.Module) -> Tensor:
        return F.linear(h, module.weight, module.bias)

    def _norm(self, norm: torch.nn.Module, x: Tensor) -> Tensor:
        return self._rms_norm(norm, x)

    def _embed(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.embed.weight, self.embed.padding_idx)

    def select(self, rows: Tensor) -> None:
        """Keep only these batch rows in the cache (finished rows leave the batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]

    @torch.no_grad()
    def __call__(self, ids: Tensor, mask: Tensor, position_ids: Tensor) -> Tensor:
        B, T = ids.shape
        start, end = self.length, self.length + T
        x = self._embed(ids)
        cos, sin = self.rotary(x, position_ids=position_ids)
        att_mask = self._mask(mask, T)
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            att = layer.self_attn
            h = self._norm(layer.input_layernorm, x)
            shape = (B, T, -1, att.head_dim)
            q = self._linear(h, att.q_proj).view(shape).transpose(1, 2)
            k = self._linear(h, att.k_proj).view(shape).transpose(1, 2)
            v = self._linear(h, att.v_proj).view(shape).transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
            keys[:, :, start:end] = k  # one row (a shared prefix) broadcasts to every row of the cache
            values[:, :, start:end] = v
            o, _ = self.attention(att, q, keys[:B, :, :end], values[:B, :, :end], att_mask, dropout=0.0,
                                  scaling=att.scaling)
            x = x + self._linear(o.reshape(B, T, -1).contiguous(), att.o_proj)
            h = self._norm(layer.post_attention_layernorm, x)
            mlp = layer.mlp
            x = x + self._linear(mlp.act_fn(self._linear(h, mlp.gate_proj)) * self._linear(h, mlp.up_proj),
                                 mlp.down_proj)
        self.length = end
        return self._linear(self._norm(self.norm, x[:, -1:, :]), self.lm_head)[:, -1, :]


class LowRankStepper(LlamaStepper):
    """Every member of a low-rank ES population in one batch (EGGROLL, arXiv 2511.16652): row i decodes with
    weights W + c_i A_m B_m^T on every matrix (m = the member of row i, c_i its sign x sigma / sqrt(r)), computed
    as x W^T + c_i (x B_m) A_m^T. The products with W are shared by all rows and no weight is written; the
    low-rank terms of all members are two more matrix products per matrix: x [B_1 .. B_M] (every member's
    projections), masked to the row's own member and scaled, then times [A_1 .. A_M]^T. Norm weights are per
    member (`norms`: the members' perturbed copies, es.lowrank_other full) or shared.

    factors: id(weight tensor) -> (A (M, out, r), B (M, in, r)) float32; row_member (rows,) long; row_scale
    (rows,) float32; norms: id(norm weight) -> (M, hidden) in the weights' dtype. The low-rank terms are computed
    in float32 and added to the shared product, so the logits equal those of the materialized weights
    (W + c A B^T rounded once) up to float rounding: a greedy token can flip where two are nearly tied."""

    can_share = False  # each member's prefix differs

    def __init__(self, model: torch.nn.Module, batch: int, max_len: int, factors: dict[int, tuple[Tensor, Tensor]],
                 row_member: Tensor, row_scale: Tensor, norms: dict[int, Tensor] | None = None) -> None:
        super().__init__(model, batch, max_len)
        # (A_cat (out, M r), B_cat (in, M r)): member m's factors in columns m r .. (m + 1) r - 1
        self.factors = {k: (a.permute(1, 0, 2).reshape(a.shape[1], -1), b.permute(1, 0, 2).reshape(b.shape[1], -1))
                        for k, (a, b) in factors.items()}
        self.rank = next(iter(factors.values()))[0].shape[-1] if factors else 1
        self.members = next(iter(factors.values()))[0].shape[0] if factors else 1
        self.norms = norms or {}
        self.row_member = row_member
        self._set_rows(row_member, row_scale)

    def _set_rows(self, row_member: Tensor, row_scale: Tensor) -> None:
        """The (rows, M r) weights that keep each row's own member's r columns, scaled by c_i."""
        weight = torch.zeros((len(row_member), self.members), dtype=torch.float32, device=row_member.device)
        weight[torch.arange(len(row_member), device=row_member.device), row_member] = row_scale
        self.row_member, self.row_scale = row_member, row_scale
        self.mix = weight.repeat_interleave(self.rank, dim=1)

    def _linear(self, h: Tensor, module: torch.nn.Module) -> Tensor:
        out = F.linear(h, module.weight, module.bias)
        f = self.factors.get(id(module.weight))
        if f is None:
            return out
        a, b = f
        t = (h.float() @ b) * self.mix[:, None, :]  # (rows, T, M r): each row's own member's projections
        return out + (t @ a.T).to(out.dtype)

    def _embed(self, ids: Tensor) -> Tensor:
        x = super()._embed(ids)
        f = self.factors.get(id(self.embed.weight))
        if f is None:
            return x
        a, b = f  # embedding row id of member m: W[id] + c A_m[id] B_m^T
        return x + ((a[ids] * self.mix[:, None, :]) @ b.T).to(x.dtype)

    def _norm(self, norm: torch.nn.Module, x: Tensor) -> Tensor:
        w = self.norms.get(id(norm.weight))
        if w is None:
            return self._rms_norm(norm, x)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return w[self.row_member][:, None, :] * h.to(x.dtype)

    def select(self, rows: Tensor) -> None:
        super().select(rows)
        self._set_rows(self.row_member[rows], self.row_scale[rows])


def stepper(model: torch.nn.Module, batch: int, max_len: int, lean: bool = True) -> HFStepper | LlamaStepper:
    """The decoding step for `model`: the lean one where it applies (and `lean`), else the generic one."""
    if lean and supports(model):
        return LlamaStepper(model, batch, max_len)
    return HFStepper(model, batch, max_len)
