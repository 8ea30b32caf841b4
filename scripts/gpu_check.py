"""The GPU check (run by scripts/gpu-check.sh on a machine with CUDA; `--device cpu --small` runs the same
code on a CPU as a dry run, which the test suite does).

Prints one JSON object (also written to OUT/gpu-check.json when $OUT is set):
  noise       the counter-based ES noise on CPU vs the device for a few tensors: identical Philox words,
              and the largest difference of the Gaussians (float32 transforms of two math libraries)
  tiny        one ES iteration and one GRPO step of the tiny model on the device (seconds, finite)
  es_overhead ES perturb + restore + update seconds per member on randomly initialised Llama models
              (~0.5B, ~1.5B, ~4B parameters, bf16 weights, fp32 accumulation), built from a config: no
              download
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# Llama shapes of about 0.5B, 1.5B and 4B parameters (Qwen2.5 / Qwen3-like widths and depths).
SIZES = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
    "4B": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=151936),
}
SMALL = {"small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=512)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def noise_agreement(device: torch.device) -> dict:
    from esgrpo.train.noise import philox4x32, tensor_key, tensor_noise

    out = {}
    for name, shape in (("model.embed_tokens.weight", (4096, 512)), ("model.layers.0.mlp.up_proj.weight", (999, 37)),
                        ("model.norm.weight", (4096,))):
        k0, k1 = tensor_key(12345, name)
        ctr = torch.arange(1 << 16, dtype=torch.int64)
        zero = torch.zeros_like(ctr)
        words_cpu = philox4x32(ctr & 0xFFFFFFFF, ctr >> 32, zero, zero, k0, k1)
        ctr_d, zero_d = ctr.to(device), zero.to(device)
        words_dev = philox4x32(ctr_d & 0xFFFFFFFF, ctr_d >> 32, zero_d, zero_d, k0, k1)
        same_words = all(torch.equal(a, b.cpu()) for a, b in zip(words_cpu, words_dev, strict=True))
        a, b = tensor_noise(12345, name, shape, "cpu"), tensor_noise(12345, name, shape, device).cpu()
        diff = (a - b).abs()
        out[name] = {"identical_words": same_words, "max_abs_diff": float(diff.max()),
                     "bit_identical_fraction": float((diff == 0).double().mean())}
    return out


def tiny_steps(device: torch.device) -> dict:
    import tempfile

    from esgrpo.config import ESConfig, GRPOConfig, ModelConfig
    from esgrpo.models import load_policy
    from esgrpo.runs import RunDir
    from esgrpo.tasks import get_task, load_examples
    from esgrpo.train.es import train_es
    from esgrpo.train.grpo import train_grpo

    task = get_task("math")
    train = load_examples("math", "synthetic", "train", 64, seed=1234)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train_es(load_policy(ModelConfig(device=str(device))), task, train,
                       ESConfig(population=16, sigma=0.015, alpha=0.03, iterations=1, batch_size=64, max_new_tokens=32,
                                checkpoint_every=0, save_base=False), RunDir(Path(tmp) / "es"))
        out["es_iteration_seconds"] = time.perf_counter() - t0
        out["es_fitness"] = res["final_fitness"]
        t0 = time.perf_counter()
        res = train_grpo(load_policy(ModelConfig(device=str(device))), task, train,
                         GRPOConfig(steps=1, prompts_per_step=16, group_size=8, lr=3e-4, max_new_tokens=32,
                                    checkpoint_every=0), RunDir(Path(tmp) / "grpo"))
        out["grpo_step_seconds"] = time.perf_counter() - t0
        out["grpo_reward"] = res["final_reward"]
    return out


def es_overhead(device: torch.device, sizes: dict, members: int = 4) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from esgrpo.train.es import apply_update
    from esgrpo.train.noise import Perturbation

    out = {}
    for label, shape in sizes.items():
        cfg = LlamaConfig(**shape, tie_word_embeddings=False)
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        params = [(n, p) for n, p in model.named_parameters()]
        d = sum(p.numel() for _, p in params)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base_mem = torch.cuda.memory_allocated(device)
        pert = Perturbation(params)
        pert.perturb(1, 1, 0.001)  # warm-up (compiles the kernels)
        pert.restore()
        apply_update(params, [(1, 1)], [1e-6])
        t = {"perturb": 0.0, "restore": 0.0}
        for n in range(members):
            sync(device)
            t0 = time.perf_counter()
            pert.perturb(100 + n, 1, 0.001)
            sync(device)
            t1 = time.perf_counter()
            pert.restore()
            sync(device)
            t2 = time.perf_counter()
            t["perturb"] += t1 - t0
            t["restore"] += t2 - t1
        sync(device)
        t0 = time.perf_counter()
        apply_update(params, [(100 + n, 1) for n in range(members)], [1e-5] * members)
        sync(device)
        t["update"] = time.perf_counter() - t0
        per_member = {k: v / members for k, v in t.items()}
        row = {"parameters": d, "seconds_per_member": per_member,
               "total_seconds_per_member": sum(per_member.values())}
        if device.type == "cuda":
            row["es_extra_memory_over_weights"] = (torch.cuda.max_memory_allocated(device) - base_mem) / (2 * d)
        out[label] = row
        del model, params, pert
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="Tiny shapes only (a dry run of the code on a CPU).")
    ap.add_argument("--skip-tiny", action="store_true", help="Skip the tiny ES iteration and GRPO step.")
    args = ap.parse_args()
    device = torch.device(args.device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    t0 = time.time()
    report["noise"] = noise_agreement(device)
    if not args.skip_tiny:
        report["tiny"] = tiny_steps(device)
    report["es_overhead"] = es_overhead(device, SMALL if args.small else SIZES)
    report["seconds"] = time.time() - t0
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu-check.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
