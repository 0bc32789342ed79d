#!/usr/bin/env bash
# Issue 16's GPU measurements in one JSON file, on any CUDA machine, in under 8 minutes (benchmarks/gpu.py says
# what it measures). It installs nothing but this repository itself, without dependencies (pip --no-deps), and
# only where nas_zoo is not importable yet: torch, torchvision, timm and the rest of pyproject.toml's
# dependencies must be there. xautodl, where installed, is measured against (pip install --no-deps xautodl).
# Usage: benchmarks/gpu.sh [OUT.json]   (default: gpu-DATE-TIME.json in the current folder; never an existing file)
set -euo pipefail
out=$(realpath -m "${1:-gpu-$(date +%Y%m%d-%H%M%S).json}")  # relative to where it is called from
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c "import nas_zoo" 2>/dev/null; then
    "$python" -m pip install --quiet --no-deps --no-build-isolation -e .
fi
# a run cut short by the limit keeps what it measured: the file is rewritten after every part
exec timeout --signal=INT --kill-after=20 460 "$python" benchmarks/gpu.py --out "$out"
