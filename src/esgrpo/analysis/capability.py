"""Capability retention: NLL of fixed text under a policy.

`heldout_nll` scores the built-in tiny model's held-out pretraining documents (`heldout.jsonl`, saved
beside the tiny model by `models.tiny.build_tiny`): the mean per-token negative log-likelihood of the
response tokens (the tokens the pretraining loss was computed on), overall, per task and per
demonstration kind. The documents are tokenized by `models.tiny.tokenize_docs`, exactly as in
pretraining. Only the tiny model has such a corpus; for any other model directory a ValueError says so.

`response_nll` is the shared primitive: summed NLL and token count of given responses (token ids) after
given prompts (token ids), batched, under torch.no_grad.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from esgrpo.models.policy import Policy
from esgrpo.models.tiny import tokenize_docs

HELDOUT_FILE = "heldout.jsonl"


@torch.no_grad()
def response_nll(policy: Policy, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]],
                 batch_size: int = 16) -> tuple[list[float], list[int]]:
    """Per response: (sum over its tokens of -log pi(token | prefix), number of tokens), untempered.

    Empty responses give (0.0, 0). Forward passes run in micro-batches of `batch_size` rows.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    was_training = policy.model.training
    policy.model.eval()
    sums: list[float] = []
    counts: list[int] = []
    try:
        for s in range(0, len(prompt_ids), batch_size):
            p = [list(x) for x in prompt_ids[s:s + batch_size]]
            r = [list(x) for x in response_ids[s:s + batch_size]]
            if not any(r):
                sums += [0.0] * len(r)
                counts += [0] * len(r)
                continue
            lp, mask = policy.logprobs(p, r)
            sums += [-float(x) for x in (lp * mask).double().sum(dim=1).tolist()]
            counts += [len(x) for x in r]
    finally:
        policy.model.train(was_training)
    return sums, counts


def heldout_path(model_dir: str | Path) -> Path | None:
    """The held-out corpus file of a model directory (or the file itself), or None if there is none."""
    p = Path(model_dir)
    if p.is_file():
        return p
    f = p / HELDOUT_FILE
    return f if f.is_file() else None


def load_heldout(model_dir_or_rows: str | Path | Sequence[dict], max_docs: int | None = None) -> list[dict]:
    """Held-out documents ({"messages", "response", "task", "kind", ...}), the first `max_docs` of them.

    `model_dir_or_rows`: the tiny model's directory, a `.jsonl` file in the same schema, or the rows.
    Raises ValueError when a directory holds no `heldout.jsonl` (only the built-in tiny model has one).
    """
    if isinstance(model_dir_or_rows, str | Path):
        path = heldout_path(model_dir_or_rows)
        if path is None:
            raise ValueError(f"no {HELDOUT_FILE} in {model_dir_or_rows}: the held-out pretraining corpus exists "
                             f"only for the built-in tiny model (models/tiny.py); pass its directory or the rows")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = list(model_dir_or_rows)
    if max_docs is not None:
        rows = rows[:max_docs]
    for i, r in enumerate(rows):
        if "messages" not in r or "response" not in r:
            raise ValueError(f"held-out row {i} lacks 'messages' or 'response': keys {sorted(r)}")
    if not rows:
        raise ValueError("no held-out documents to score")
    return rows


def _summary(nll: float, tokens: int, docs: int) -> dict[str, Any]:
    mean = nll / tokens if tokens else float("nan")
    return {"nll": mean, "perplexity": math.exp(mean) if tokens else float("nan"), "tokens": tokens, "docs": docs}


def heldout_nll(policy: Policy, model_dir_or_rows: str | Path | Sequence[dict], max_docs: int | None = None,
                batch_size: int = 16) -> dict[str, Any]:
    """Mean per-token NLL (nats) of the held-out documents' response tokens (the "<|end|>" included).

    Returns {"nll", "perplexity", "tokens", "docs", "per_task": {task: {same keys}},
    "per_kind": {kind: {same keys}}}; "nll" is total NLL / total tokens (token-weighted).
    """
    rows = load_heldout(model_dir_or_rows, max_docs)
    data = tokenize_docs(rows, policy.tokenizer)
    prompts = [ids[:start] for ids, start in data]
    responses = [ids[start:] for ids, start in data]
    sums, counts = response_nll(policy, prompts, responses, batch_size)
    out = _summary(sum(sums), sum(counts), len(rows))
    for key, field in (("per_task", "task"), ("per_kind", "kind")):
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(str(r.get(field, "?")), []).append(i)
        out[key] = {g: _summary(sum(sums[i] for i in idx), sum(counts[i] for i in idx), len(idx))
                    for g, idx in sorted(groups.items())}
    return out
