#!/usr/bin/env bash
# One command on a lent GPU machine (< 8 min, nothing downloaded; needs torch, transformers, peft):
#   bash bench/gpu_suite.sh OUTDIR
# The raw log goes to OUTDIR/gpu_suite.log and the numbers to OUTDIR/results.json.
# GPU_SUITE_DEVICE=cpu runs the same code at small sizes (the fallback tests/test_gpu_suite.py runs).
set -euo pipefail
out="${1:?usage: bench/gpu_suite.sh OUTDIR}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
{
  echo "# gpu_suite $(date -u +%FT%TZ) $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  timeout 470 python "$here/gpu_suite.py" --device "${GPU_SUITE_DEVICE:-cuda}" --out "$out" "${@:2}"
} 2>&1 | tee "$out/gpu_suite.log"
exit "${PIPESTATUS[0]}"
