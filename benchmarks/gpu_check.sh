#!/usr/bin/env bash
# The GPU checks of the performance issue in one command, for a machine with an NVIDIA GPU, CuPy
# and a CUDA build of PyTorch (nothing is installed: rnnkit runs from src/, needing NumPy alone):
#   1. the GPU tests (tests/test_gpu.py, on the GPU and on the CPU stand-in for CuPy, and the
#      kernels' nvcc build);
#   2. the GPU benchmark (benchmarks/bench_gpu.py: rnnkit on CuPy against PyTorch's cuDNN, the
#      language model's training step at H=512, B=64, T=100), its rows as JSON.
# Logs and the JSON go to OUTDIR (default: $OUT where that is set, else benchmarks/results).
# The exit status is the tests'. Without a GPU the tests run on the stand-in and the benchmark
# says it has nothing to time.
#
#   benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: no GPU"
  "$py" - <<'EOF'
import importlib
for name in ("numpy", "cupy", "torch", "numba"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # noqa: BLE001 - a report, not a check
        print(name, "not importable:", type(e).__name__)
from rnnkit.backend import cuda_available
print("rnnkit sees a GPU:", cuda_available())
EOF
} 2>&1 | tee "$out/gpu_machine.txt"

"$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_cuda_kernels_on_cpu.py \
    2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}

"$py" benchmarks/bench_gpu.py --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.log"
exit "$tests"
