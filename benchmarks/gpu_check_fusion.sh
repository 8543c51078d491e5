#!/usr/bin/env bash
# GPU check of the fused Triton fusion op: kernel tests (GPU tier, then the interpreter tier in its
# own process) and the quick benchmark. One command, about 2-3 minutes on an H100, no installs:
#
#   OUT=/tmp/out bash benchmarks/gpu_check_fusion.sh            # from the repository root
#
# Writes into $OUT (default: benchmarks/results/gpu_check): env.txt, gpu_tests.log,
# interpreter_tests.log, bench.log and fusion_<device>.md (the benchmark record; copy it to
# benchmarks/results/). Extra arguments go to the benchmark (e.g. --tune). Exits non-zero if a
# test step failed; the benchmark still runs.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
status=0

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
  "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch",
torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'
} 2>&1 | tee "$OUT/env.txt"

# GPU tier: dtype matrix, determinism, >2**31 elements, autocast, torch.compile(fullgraph=True).
timeout 170 "$PY" -m pytest tests/test_triton_fusion.py -m "not interpreter" -q -p no:cacheprovider \
  --durations=8 2>&1 | tee "$OUT/gpu_tests.log" || status=1

# Interpreter tier (what CI runs), in its own process: Triton fixes its mode once per process.
TRITON_INTERPRET=1 timeout 120 "$PY" -m pytest tests/test_triton_fusion.py -m interpreter -q -p no:cacheprovider \
  2>&1 | tee "$OUT/interpreter_tests.log" || status=1

# Quick benchmark: B=8, K=19, S=3, 640x640, float32 and bfloat16, forward+backward.
timeout 240 "$PY" benchmarks/bench_fusion.py --quick --out-dir "$OUT" "$@" 2>&1 \
  | tee "$OUT/bench.log" || status=1

echo "gpu_check_fusion: status $status (0 = all steps passed); outputs in $OUT"
exit $status
