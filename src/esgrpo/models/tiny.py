"""The built-in `tiny` model: a few-million-parameter Llama, its tokenizer and its pretraining.

Everything is built here, offline and seeded:
1. a corpus of the four tasks' prompts (chat template, the tasks' system prompts) with short
   demonstrations, deliberately noisy. Most are in the right format (slips, a right answer in a
   format the reward rejects, are rare), but on "error-prone" prompts (decided by the last
   alphanumeric character of the question, a visible surface feature, see `error_prone`) most
   demonstrations make the task's systematic mistake (Task.demonstration, kind "mistake": the plain
   sum, one more than the result, the next choice, the negated answer) and the rest are right. So the
   greedy base model answers those prompts wrong in the right format while its samples often hold the
   right answer: headroom that RL reaches by learning the task (not to make that mistake), in general,
   not by memorizing the 200 training prompts, and not by repairing the format. A few random wrong
   answers everywhere keep the right answer from being certain;
2. a byte-level BPE tokenizer (digits split individually) with a chat template;
3. a Llama-architecture model trained from scratch on the responses (next-token loss on the
   assistant turn), cosine learning rate, AdamW.

The result is a Hugging Face directory (safetensors + config + tokenizer) cached under
`<cache_dir>/tiny-<hash of the build config>` and reused; a held-out slice of the corpus is
saved beside it (`heldout.jsonl`) for the capability probe.

The default recipe's build ships with esgrpo (`models/shipped/tiny/`, with its recipe hash and weights
hash in build.json), so every machine starts from the same weights: floating-point kernels are chosen
by CPU features at run time (ATen dispatches AVX-512, AVX2 or plain code), and a build on a machine
with other features gives other weights. `esgrpo models build tiny --force` rebuilds and says whether
the result matches the shipped weights bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from esgrpo.config import TinyModelConfig
from esgrpo.runs import write_json

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS_ROUND = 3000
BUILD_VERSION = 7  # bump when the corpus or training recipe changes, to invalidate caches


def error_prone(question: str) -> bool:
    """The visible prompt feature that makes the task's systematic mistake likely in the corpus.

    The last alphanumeric character of the question (one token just before the assistant turn)
    with code point = 2 or 3 mod 4: about 40-65% of each task's prompts (measured on the synthetic
    test splits: countdown 0.41, math 0.64, chemistry 0.37, boolq 0.53).
    """
    for ch in reversed(question):
        if ch.isalnum():
            return ord(ch) % 4 in (2, 3)
    return False


def build_corpus(cfg: TinyModelConfig) -> list[dict]:
    """Seeded documents: {"task", "messages", "response", "kind"} from the tasks' pretrain split."""
    from esgrpo.tasks import TASK_NAMES, get_task

    rng = random.Random(cfg.seed)
    docs = []
    for name in TASK_NAMES:
        task = get_task(name)
        # Rounds of distinct instances: small instance spaces (3-number Countdown) may then repeat
        # across rounds instead of being crowded out by the larger ones.
        examples: list = []
        total = round(cfg.corpus_per_task * cfg.corpus_weights.get(name, 1.0))
        for r in range(-(-total // CORPUS_ROUND)):
            n = min(CORPUS_ROUND, total - len(examples))
            examples += task.synthetic("pretrain", n, seed=cfg.seed + 17 + 1000 * r)
        for ex in examples:
            prone = error_prone(ex.question)
            p_slip = cfg.p_slip_prone if prone else cfg.task_p_slip_other.get(name, cfg.p_slip_other)
            p_mistake = cfg.p_mistake_prone if prone else cfg.p_mistake_other
            kind = _demo_kind(rng.random(), p_slip, p_mistake, cfg.p_wrong)
            docs.append({"task": name, "messages": task.messages(ex), "uid": ex.uid,
                         "response": task.demonstration(ex, rng, kind), "kind": kind})
    rng.shuffle(docs)
    return docs


def _demo_kind(u: float, p_slip: float, p_mistake: float, p_wrong: float) -> str:
    """The kind of one demonstration from one uniform draw `u`: a slip with probability p_slip, else the
    systematic mistake with p_mistake, else a random wrong answer with p_wrong, else correct."""
    for kind, share in (("slip", p_slip), ("mistake", p_mistake), ("wrong", p_wrong)):
        if u < share:
            return kind
        u = (u - share) / (1 - share)
    return "correct"


def render(messages: list[dict[str, str]], response: str | None = None) -> str:
    """The chat template as plain text (for tokenizer training)."""
    text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"
    return text if response is None else text + response + "<|end|>"


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with individually split digits, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
                                   additional_special_tokens=SPECIAL_TOKENS[2:])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def make_model(cfg: TinyModelConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def tokenize_docs(docs: list[dict], tokenizer) -> list[tuple[list[int], int]]:
    """(token ids, index of the first response token) per document."""
    out = []
    for d in docs:
        prompt = tokenizer.encode(render(d["messages"]), add_special_tokens=False)
        resp = tokenizer.encode(d["response"] + "<|end|>", add_special_tokens=False)
        out.append((prompt + resp, len(prompt)))
    return out


def batch_loss(model, batch: list[tuple[list[int], int]], pad_id: int) -> torch.Tensor:
    """Mean next-token loss over the response tokens of a right-padded batch."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    target_mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, (seq, start) in enumerate(batch):
        ids[i, :len(seq)] = torch.tensor(seq)
        attn[i, :len(seq)] = 1
        target_mask[i, start:len(seq)] = True
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    targets = ids[:, 1:]
    mask = target_mask[:, 1:]
    return torch.nn.functional.cross_entropy(logits[mask], targets[mask])


def length_bucketed_batches(lengths: list[int], batch_size: int, g: torch.Generator) -> list[list[int]]:
    """One epoch of batches of similar-length documents (less padding), in random order.

    Documents are sorted by length plus uniform jitter (so batches differ between epochs), cut into
    batches, and the batches shuffled; popping from the end yields them.
    """
    jitter = torch.rand(len(lengths), generator=g) * 8
    order = torch.argsort(torch.tensor(lengths, dtype=torch.float32) + jitter).tolist()
    chunks = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    perm = torch.randperm(len(chunks), generator=g).tolist()
    return [chunks[i] for i in perm]


def pretrain(model, data: list[tuple[list[int], int]], cfg: TinyModelConfig, pad_id: int,
             log=print) -> list[dict]:
    """AdamW with linear warmup and cosine decay; returns the loss curve."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(cfg.seed)
    model.train()
    curve, t0, running = [], time.time(), None
    batches: list[list[int]] = []
    every = max(1, min(50, cfg.steps // 10))  # progress/loss-curve interval
    for step in range(cfg.steps):
        lr = cfg.lr * (step + 1) / max(1, cfg.warmup) if step < cfg.warmup else \
            cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))
        for group in opt.param_groups:
            group["lr"] = lr
        if not batches:
            batches = length_bucketed_batches([len(s) for s, _ in data], cfg.batch_size, g)
        loss = batch_loss(model, [data[i] for i in batches.pop()], pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            el = time.time() - t0
            eta = el / (step + 1) * (cfg.steps - step - 1)
            log(f"[tiny] step {step + 1}/{cfg.steps} loss {running:.3f} lr {lr:.2e} "
                f"{el:.0f}s elapsed, ETA {eta:.0f}s")
            curve.append({"step": step + 1, "loss": running, "lr": lr, "seconds": el})
    model.eval()
    return curve


def config_hash(cfg: TinyModelConfig) -> str:
    blob = json.dumps({"cfg": asdict(cfg), "version": BUILD_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


SHIPPED = Path(__file__).parent / "shipped" / "tiny"


def tiny_path(cfg: TinyModelConfig, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"tiny-{config_hash(cfg)}"


def shipped_tiny(cfg: TinyModelConfig) -> Path | None:
    """The shipped build if it was made from this recipe, else None."""
    try:
        build = json.loads((SHIPPED / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return SHIPPED if build.get("recipe_hash") == config_hash(cfg) else None


def compare_builds(built: Path, shipped: Path) -> str:
    """Whether two builds hold bit-identical weights; if not, by how much they differ and the CPU features
    each was built with (the usual cause)."""
    from safetensors.torch import load_file

    a, b = load_file(str(built / "model.safetensors")), load_file(str(shipped / "model.safetensors"))
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if same:
        return "the rebuilt weights equal the shipped ones bit for bit"
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b)
    caps = [json.loads((d / "build.json").read_text()).get("cpu_capability", "?") for d in (built, shipped)]
    return (f"the rebuilt weights differ from the shipped ones (max |difference| {diff:.3g}); built here with CPU "
            f"capability {caps[0]}, shipped with {caps[1]}: floating-point kernels differ between CPU features. "
            "Runs keep using the shipped weights; this build stays in the cache for a tiny recipe other than the "
            "default")


def weights_sha256(model_dir: Path) -> str:
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_tiny(cfg: TinyModelConfig, cache_dir: str | Path, force: bool = False, log=None) -> Path:
    """Build (or reuse) the tiny model; returns its Hugging Face directory."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out = tiny_path(cfg, cache_dir)
    if (out / "build.json").exists() and not force:
        return out
    t0 = time.time()
    docs = build_corpus(cfg)
    n_held = max(50, len(docs) // 40)
    heldout, train_docs = docs[:n_held], docs[n_held:]
    log(f"[tiny] corpus: {len(train_docs)} documents (+{n_held} held out); training tokenizer")
    tokenizer = train_tokenizer([render(d["messages"], d["response"]) for d in train_docs], cfg.vocab_size)
    model = make_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    data = tokenize_docs(train_docs, tokenizer)
    mean_len = sum(len(s) for s, _ in data) / len(data)
    log(f"[tiny] model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
        f"mean document {mean_len:.0f} tokens; pretraining {cfg.steps} steps")
    curve = pretrain(model, data, cfg, tokenizer.pad_token_id, log)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    with open(tmp / "heldout.jsonl", "w") as f:
        for d in heldout:
            f.write(json.dumps(d) + "\n")
    kinds = {k: sum(d["kind"] == k for d in train_docs) / len(train_docs)
             for k in ("correct", "wrong", "mistake", "slip")}
    write_json(tmp / "build.json", {
        "recipe_hash": config_hash(cfg), "weights_sha256": weights_sha256(tmp),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "config": asdict(cfg), "version": BUILD_VERSION, "parameters": n_params, "vocab": len(tokenizer),
        "documents": len(train_docs), "heldout_documents": n_held, "mean_document_tokens": mean_len,
        "demonstration_mix": kinds, "loss_curve": curve, "seconds": time.time() - t0,
        "threads": torch.get_num_threads(),
    })
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"[tiny] built in {time.time() - t0:.0f}s -> {out}")
    return out
