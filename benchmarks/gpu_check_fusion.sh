#!/usr/bin/env bash
# The GPU record in one command (issues 12 and 13): the GPU test tier of both Triton kernels, then the
# fusion-op, fused-learner, model and synthetic-training benchmarks. At most 8 minutes (the sum of the
# steps' limits) on an H200, no installs:
#
#   OUT=/tmp/out bash benchmarks/gpu_check_fusion.sh            # from the repository root
#
# Writes into $OUT (default: benchmarks/results/gpu_check): env.txt, gpu_tests.log and, per benchmark,
# its log and markdown record (fusion_<device>.md, learner_cuda.md, model_cuda.md + .csv,
# train_synthetic_cuda.md;
# copy the records to benchmarks/results/). Each step has its own time limit so that one slow step
# cannot eat the others' time; the interpreter tier is CI's (it needs no GPU). Exits non-zero if a
# step failed; the later steps still run.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
status=0
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" || { echo "== $name FAILED"; status=1; }
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
  "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch",
torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'
} 2>&1 | tee "$OUT/env.txt"

# GPU tier: the fusion op's dtype matrix, determinism, >2**31 elements, autocast, torch.compile; the
# fused learner's compiled kernel at the paper's width against its plain-PyTorch twin.
step gpu_tests 100 "$PY" -m pytest tests/test_triton_fusion.py tests/test_fused_learner_triton.py -m gpu -q \
  -p no:cacheprovider --durations=8

# Fusion op: B=8, K=19, S=3, 640x640, float32 and bfloat16, every backend, copy bandwidth of the run.
step bench_fusion 80 "$PY" benchmarks/bench_fusion.py --quick --out-dir "$OUT" "$@"

# Fused learner (issue 12's GPU target): the head at B=8, 640x640, bf16, every variant.
step bench_learner 100 "$PY" benchmarks/bench_learner.py --device cuda --batch 8 --size 640 \
  --dtype bfloat16 --repeats 5 --out "$OUT/learner_cuda.md"

# Model training step: DFF-R50 authors-like vs fast (and the fused learner), DFF-R101 fits in 40 GB.
step bench_model 130 "$PY" benchmarks/bench_model.py --quick --timeout 60 --out "$OUT/model_cuda.md"

# Synthetic training (examples/train_dff.py, DFF-R50, 256x256, batch 16, bf16): auto vs reference fusion.
step bench_train 70 "$PY" benchmarks/bench_train_synthetic.py --device cuda --train-length 256 --epochs 3 \
  --timeout 32 --out "$OUT/train_synthetic_cuda.md"

echo "gpu_check_fusion: status $status (0 = all steps passed); outputs in $OUT"
exit $status
