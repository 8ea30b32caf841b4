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
exec python -m pytest "$@"
