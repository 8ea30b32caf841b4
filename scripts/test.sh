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
# The vLLM engine's tests (generation.engine vllm) in their own environment, where vLLM pins other torch and
# transformers versions (5.19) than the main stack: with them, the tests of what calls into transformers
# (decoding, model loading, GRPO's log-probs), which must hold on that version too. Skipped, with one line
# saying why, where it cannot be built.
VLLM_TESTS="tests/test_vllm.py tests/test_rollout.py tests/test_lean_decode.py tests/test_models_hub.py
  tests/test_grpo.py tests/test_smollm2.py"
paths=0
for a in "$@"; do case "$a" in tests*|*.py|*::*) paths=1 ;; esac; done
if [ "${ESGRPO_SKIP_VLLM:-0}" = 1 ] || [ $paths = 1 ]; then
  echo "[vllm] the vLLM tests are not run (ESGRPO_SKIP_VLLM=1 or test paths given)" >&2
elif bash "$ROOT/scripts/env-vllm.sh"; then
  # shellcheck disable=SC2086
  "$ROOT/.venv-vllm/bin/python" -m pytest "$@" $VLLM_TESTS || status=$?
else
  echo "[vllm] the vLLM environment could not be built (above): tests/test_vllm.py is not run" >&2
fi
exit $status
