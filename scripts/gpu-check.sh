#!/usr/bin/env bash
# The GPU check, for a machine with CUDA and torch preinstalled but no network (e.g. the device machine:
# one H200, torch 2.11, transformers 5.17). It installs what that machine lacks from wheels in .whl/
# (prepared on a machine with network: `bash scripts/gpu-check.sh --download`), then runs
# scripts/gpu_check.py on CUDA: the ES noise on CPU vs GPU, one tiny ES iteration and GRPO step, and ES
# perturb + restore + update seconds per member on random ~0.5B / ~1.5B / ~4B Llama models in bf16.
# Results: printed as JSON and written to $OUT/gpu-check.json when $OUT is set. Takes a few minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Pure-Python (or small) packages esgrpo imports and a bare torch machine may lack, at the pinned versions.
WHEELS="transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 huggingface_hub==2.4.0 PyYAML==6.0.4 psutil==7.2.2 periodictable==2.1.0"
if [ "${1:-}" = "--download" ]; then
  python3 -m pip download -q -d .whl --only-binary=:all: --python-version 3.11 $WHEELS
  python3 -m pip download -q -d .whl --no-deps --only-binary=:all: --python-version 3.11 numpy==2.4.6
  du -sh .whl
  exit 0
fi
PY="${PYTHON:-python3}"
for spec in $WHEELS; do
  mod="${spec%%==*}"
  case "$mod" in PyYAML) mod=yaml ;; huggingface_hub) mod=huggingface_hub ;; esac
  if ! "$PY" -c "import ${mod//-/_}" 2>/dev/null || [ "$mod" = transformers ]; then
    "$PY" -m pip install -q --no-index --find-links .whl --no-deps "$spec" 2>/dev/null \
      || echo "[gpu-check] could not install $spec from .whl/ (using what is installed)" >&2
  fi
done
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('[gpu-check]', torch.__version__, torch.cuda.get_device_name(0))"
exec "$PY" scripts/gpu_check.py --device cuda "$@"
