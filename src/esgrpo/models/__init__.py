"""Model loading: `tiny` (built here), `smollm2-135m` (converted from GGUF), or any HF id/path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from esgrpo.config import ModelConfig, TinyModelConfig
from esgrpo.models.policy import Policy

BUILTIN = ("tiny", "smollm2-135m")


def resolve_model_path(cfg: ModelConfig, tiny: TinyModelConfig | None = None, force: bool = False) -> str:
    """A path (or hub id) that `from_pretrained` accepts; builds/converts built-in models on first use."""
    if cfg.name == "tiny":
        from esgrpo.models.tiny import build_tiny

        return str(build_tiny(tiny or TinyModelConfig(), cfg.cache_dir, force=force))
    if cfg.name == "smollm2-135m":
        from esgrpo.models.smollm2 import ensure_smollm2

        if force:
            shutil.rmtree(Path(cfg.cache_dir) / "smollm2-135m", ignore_errors=True)
        return str(ensure_smollm2(Path(cfg.cache_dir)))
    return cfg.name


def model_identity(cfg: ModelConfig, tiny: TinyModelConfig | None = None) -> str:
    """What names the base model's weights: the build hash for `tiny`, the id/path otherwise."""
    path = resolve_model_path(cfg, tiny)
    return Path(path).name if cfg.name in BUILTIN else path


def load_policy(cfg: ModelConfig, tiny: TinyModelConfig | None = None) -> Policy:
    """Load a model + tokenizer as a Policy on the configured device and dtype."""
    import torch

    from esgrpo.models.hub import load_hf

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    path = resolve_model_path(cfg, tiny)
    print(f"[model] loading {cfg.name} from {path}", file=sys.stderr, flush=True)
    model, tokenizer = load_hf(path, dtype=cfg.dtype, device=cfg.device)
    return Policy(model, tokenizer, name=cfg.name)
