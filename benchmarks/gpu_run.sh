#!/usr/bin/env bash
# The prepared GPU run, from the repository root on a machine with a CUDA device:
#
#     OUT=gpu_out bash benchmarks/gpu_run.sh
#
# builds the native extension with its CUDA kernels, runs the CUDA and Triton tests, the device
# check and the bandwidth benchmark, each under its own time limit (about 8 minutes in all), and
# logs each to "$OUT"/ (default ./gpu_out) with a summary in "$OUT"/summary.txt. Environment:
# PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0, an H100 / H200), CUDA_HOME
# (default: the toolkit of the nvcc on PATH). The project runs from the checkout (PYTHONPATH),
# nothing is installed.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  root="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  if [ -f "$root/include/cuda_runtime.h" ]; then
    export CUDA_HOME="$root"
  else  # nvcc is a wrapper script: ask the build module, which reads nvcc --dryrun
    CUDA_HOME="$("$PYTHON" -c 'from sparse_optim.ops import build; print(build.find_cuda_home() or "")')"
    export CUDA_HOME
  fi
fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit, logs to $OUT/NAME.log
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local line="$name: rc=$rc ($((SECONDS - start)) s of $limit s)"
  [ "$rc" = 124 ] && line="$line TIMED OUT"
  echo "$line" | tee -a "$SUMMARY"
  tail -n 3 "$OUT/$name.log" | sed 's/^/    /'
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi -L 2>&1 | head -n 4
  nvcc --version 2>&1 | tail -n 1
  echo "CUDA_HOME=${CUDA_HOME:-} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.is_available() and torch.cuda.get_device_name())'
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

step build 150 "$PYTHON" -m sparse_optim.ops.build --verbose
step pytest_cuda 170 "$PYTHON" -m pytest -v -rfEs -p no:cacheprovider tests/test_cuda_kernels.py tests/test_triton_ops.py
step gpu_check 70 "$PYTHON" benchmarks/gpu_check.py cuda --big
step bench_cuda_bandwidth 100 "$PYTHON" benchmarks/bench_cuda_bandwidth.py --repeats 10
echo "logs in $OUT/"
