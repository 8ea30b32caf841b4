"""Load any Hugging Face causal LM (hub id or local directory) in the form the trainers expect.

Trainers batch prompts and generate continuations, so the tokenizer is always returned with
``padding_side="left"`` and a pad token (the eos token when the checkpoint defines none). Loading
failures (missing directory, unknown id, offline mode, no network) become a one-line
:class:`~esgrpo.errors.ModelLoadError` naming what was asked for, instead of a long transformers
traceback; the original exception is kept as ``__cause__`` for debugging.
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from esgrpo.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES: dict[str, torch.dtype | None] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": None,  # keep the dtype stored in the checkpoint
}
DEVICE_KINDS = ("auto", "cpu", "cuda", "cuda:N", "mps")
ALTERNATIVES = "use 'tiny', 'smollm2-135m', or a local model directory"

_TRUE_VALUES = {"1", "on", "yes", "true"}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype | None:
    """Map a config dtype name to a torch dtype; ``"auto"`` maps to None (keep the checkpoint's dtype)."""
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        raise ConfigError(f"unsupported dtype {name}; allowed: {', '.join(DTYPES)}")
    key = str(name).strip().lower()
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}'; allowed: {', '.join(DTYPES)}")
    return DTYPES[key]


def resolve_device(device: str) -> torch.device:
    """Map a config device string to a torch.device; ``"auto"`` picks CUDA when available, else CPU.

    An explicitly requested accelerator that is not present is a config error rather than a silent
    fallback, so a GPU run never quietly becomes a (very slow) CPU run.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device '{device}'; allowed: {', '.join(DEVICE_KINDS)}") from exc
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device '{device}'; allowed: {', '.join(DEVICE_KINDS)}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' requested but CUDA is not available; use 'auto' or 'cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{device}' requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{device}' requested but MPS is not available; use 'auto' or 'cpu'")
    return resolved


def hub_offline() -> bool:
    """True when the user asked for offline mode (HF_HUB_OFFLINE, or the older TRANSFORMERS_OFFLINE).

    Read from the environment on every call: huggingface_hub snapshots it at import time, which would
    miss a variable set later (by the CLI or by tests).
    """
    return any(os.environ.get(var, "").strip().lower() in _TRUE_VALUES
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP probe of the hub endpoint (once per process).

    Without it, huggingface_hub retries a dead connection five times with back-off for every file it
    looks up: about 45 s of retry warnings before a load fails. When the hub is unreachable we load with
    ``local_files_only=True`` instead, so cached models still work and uncached ones fail at once.
    Behind an HTTP(S) proxy a direct connection says nothing, so the probe is skipped (assumed reachable).
    """
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    parsed = urllib.parse.urlparse(constants.ENDPOINT)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    """Path-like names never go to the hub: a typo in a directory should say 'missing', not 'not on hub'."""
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", "..") or (
        os.path.isabs(name)
    )


def _reason(exc: BaseException, offline: bool, reachable: bool) -> str:
    """Condense a transformers/huggingface_hub exception into a short human reason."""
    from huggingface_hub import errors as hf_errors

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, hf_errors.HFValidationError) for e in chain):
        return "not an existing local directory nor a valid hub id ('org/name')"
    if offline or any(isinstance(e, hf_errors.OfflineModeIsEnabled) for e in chain):
        return "not found in the local Hugging Face cache and offline mode (HF_HUB_OFFLINE) is on"
    if not reachable:
        return "the Hugging Face hub is unreachable (no network?) and it is not in the local cache"
    if any(isinstance(e, hf_errors.RepositoryNotFoundError) for e in chain):
        return "no such model on the Hugging Face hub (or it is private/gated)"
    if any(isinstance(e, (ConnectionError, TimeoutError)) for e in chain) or any(
        word in text for word in ("connect", "resolve host", "network", "timed out", "name resolution")
    ):
        return "the Hugging Face hub is unreachable (no network?) and it is not in the local cache"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {first_line[:300]}"


def load_hf(
    name_or_path: str,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id or a local directory, ready for batched generation.

    Returns the model in eval mode on the resolved device and a left-padding tokenizer with a pad token.
    Raises ConfigError for a bad dtype/device and ModelLoadError (one line, naming ``name_or_path``)
    when the model cannot be found or read.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    target_device = resolve_device(device)
    name = str(name_or_path).strip()
    if not name:
        raise ModelLoadError(f"empty model name; {ALTERNATIVES}")

    local = Path(name).expanduser()
    offline = hub_offline()
    reachable = True
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(f"model path '{name}' is a file, not a model directory; {ALTERNATIVES}")
        source = str(local)
        local_only = True
    elif _looks_like_path(name):
        raise ModelLoadError(f"model directory '{name}' does not exist; {ALTERNATIVES}")
    else:
        source = name
        # local_files_only guarantees no network access even if huggingface_hub was imported before
        # HF_HUB_OFFLINE was set (it reads the variable only once, at import).
        reachable = True if offline else hub_reachable()
        local_only = offline or not reachable

    common = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
    what = "directory" if local_only and local.exists() else "model"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype if torch_dtype is not None else "auto", **common
        )
    except Exception as exc:  # OSError, ValueError, HTTP errors...: the user gets one line, not a traceback
        reason = _reason(exc, offline and not local.exists(), reachable)
        raise ModelLoadError(f"could not load {what} '{name}': {reason}; {ALTERNATIVES}") from exc

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer of '{name}' has neither a pad nor an eos token; cannot batch")
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding keeps every prompt's last token adjacent to the generated continuation.
    tokenizer.padding_side = "left"
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    model.to(target_device)
    model.eval()
    return model, tokenizer
