#!/usr/bin/env bash
# The test suite: set up the environment, lint, then run every test (slow end-to-end ones included).
# Extra args go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
ruff check src tests
exec python -m pytest "$@"
