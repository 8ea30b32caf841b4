#!/usr/bin/env bash
# The main job: set up the environment, then run the default study (extra args go to `esgrpo study`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec esgrpo study --config configs/study-default.yaml "$@"
