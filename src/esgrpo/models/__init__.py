"""Model loading: `tiny` (built here), `smollm2-135m` (converted from GGUF), or any HF id/path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from esgrpo.config import BuildConfig, ModelConfig, TinyModelConfig
from esgrpo.errors import ModelLoadError
from esgrpo.models.policy import Policy

BUILTIN = ("tiny", "smollm2-135m")


def resolve_model_path(cfg: ModelConfig, tiny: TinyModelConfig | None = None, force: bool = False) -> str:
    """A path (or hub id) that `from_pretrained` accepts; builds/converts built-in models on first use.

    tiny: the shipped build when the recipe is the default one (force: rebuild into the cache anyway)."""
    if cfg.name == "tiny":
        from esgrpo.models.tiny import build_tiny, shipped_tiny

        tiny = tiny or TinyModelConfig()
        shipped = shipped_tiny(tiny)
        if shipped is not None and not force:
            return str(shipped)
        return str(build_tiny(tiny, cfg.cache_dir, force=force))
    if cfg.name == "smollm2-135m":
        from esgrpo.models.smollm2 import ensure_smollm2

        if force:
            shutil.rmtree(Path(cfg.cache_dir) / "smollm2-135m", ignore_errors=True)
        return str(ensure_smollm2(Path(cfg.cache_dir)))
    return cfg.name


def model_identity(cfg: ModelConfig, tiny: TinyModelConfig | None = None) -> str:
    """What names the base model's weights: the recipe hash for `tiny`, the id/path otherwise."""
    path = resolve_model_path(cfg, tiny)
    if cfg.name == "tiny":
        from esgrpo.models.tiny import config_hash

        return f"tiny-{config_hash(tiny or TinyModelConfig())}"
    return Path(path).name if cfg.name in BUILTIN else path


def load_policy(cfg: ModelConfig, tiny: TinyModelConfig | None = None, engine: str = "native") -> Policy:
    """Load a model + tokenizer as a Policy on the configured device and dtype; engine vllm: it generates through
    an in-process vLLM engine (models/vllm_engine.py) built from the same checkpoint."""
    import torch

    if engine == "vllm":
        from esgrpo.models.vllm_engine import require_vllm

        require_vllm()  # before anything is loaded or written

    from esgrpo.models.hub import load_hf

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        if torch.get_num_threads() != cfg.threads:
            raise ModelLoadError(f"model.threads = {cfg.threads} could not be set (torch uses "
                                 f"{torch.get_num_threads()})")
    path = resolve_model_path(cfg, tiny)
    print(f"[model] loading {cfg.name} from {path}", file=sys.stderr, flush=True)
    model, tokenizer = load_hf(path, dtype=cfg.dtype, device=cfg.device)
    return with_engine(Policy(model, tokenizer, name=cfg.name), engine, path)


def with_engine(policy: Policy, engine: str, source_dir: str) -> Policy:
    """The policy, generating through `engine` (native: its own loop; vllm: an engine built from source_dir)."""
    if engine == "vllm":
        from esgrpo.models.vllm_engine import VLLMEngine

        dtype = str(next(policy.model.parameters()).dtype).removeprefix("torch.")
        policy.engine = VLLMEngine(policy.model, source_dir, dtype=dtype)
    elif engine != "native":
        raise ValueError(f"generation.engine = {engine!r}: native or vllm")
    return policy


def build_model(cfg: BuildConfig) -> str:
    """`esgrpo models build`: the model's directory, and for a forced tiny build whether it reproduces the
    shipped weights bit for bit."""
    path = resolve_model_path(cfg.model, cfg.tiny, force=cfg.force)
    if cfg.model.name != "tiny":
        return path
    from esgrpo.models.tiny import SHIPPED, compare_builds, shipped_tiny

    if not cfg.force:
        return path + ("\n(the shipped build; --force rebuilds it here and compares)" if Path(path) == SHIPPED else "")
    if shipped_tiny(cfg.tiny) is None:
        return path + "\n(a recipe other than the shipped one: nothing to compare with)"
    return path + "\n" + compare_builds(Path(path), SHIPPED)
