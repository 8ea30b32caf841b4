#!/usr/bin/env bash
# The test suite: set up the environment, lint, then run every test (slow end-to-end ones included).
# Extra args go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# Headless Chromium renders the HTML report in tests/test_report.py (skipped when it is missing).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing chromium (Debian) for the report render test" >&2
  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 \
    || echo "[setup] could not install chromium; the render test will be skipped" >&2
fi
ruff check src tests
status=0
python -m pytest "$@" || status=$?
# The vLLM engine's tests (generation.engine vllm) in their own environment: vLLM pins other torch and
# transformers versions than the main stack. Skipped, with one line saying why, where it cannot be built.
paths=0
for a in "$@"; do case "$a" in tests*|*.py|*::*) paths=1 ;; esac; done
if [ "${ESGRPO_SKIP_VLLM:-0}" = 1 ] || [ $paths = 1 ]; then
  echo "[vllm] the vLLM tests are not run (ESGRPO_SKIP_VLLM=1 or test paths given)" >&2
elif bash "$ROOT/scripts/env-vllm.sh"; then
  "$ROOT/.venv-vllm/bin/python" -m pytest "$@" tests/test_vllm.py || status=$?
else
  echo "[vllm] the vLLM environment could not be built (above): tests/test_vllm.py is not run" >&2
fi
exit $status
