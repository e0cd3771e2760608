#!/usr/bin/env bash
# The CUDA check of aihw-deploy, for a machine with an NVIDIA GPU (built for an H200 in < 8 min):
#   1. builds the package with AIHW_WITH_CUDA=ON (static CUDA runtime; sm_90 only unless
#      CMAKE_CUDA_ARCHITECTURES is set) into build/gpu and installs it (editable, no downloads);
#   2. runs the CUDA test suite (pytest -m cuda: CPU vs CUDA parity of every op and device,
#      pulsed-update statistics, training on CUDA, onnxruntime CUDA EP vs CPU EP where
#      onnxruntime-gpu is installed) and the host-emulation tests of the kernels;
#   3. runs the GPU benchmark (tools/bench_gpu.py: AnalogLinear 4096x4096, batch 1024);
#   4. writes a summary (Markdown) and the logs to $GPU_CHECK_OUT (default: $OUT if set, else
#      build/gpu_check).
#
# Usage:  bash tools/gpu_check.sh            (from the repository root)
# Needs:  python3 with torch (CUDA build), pytest, numpy, scikit-learn, onnx, onnxruntime,
#         scikit-build-core, pybind11, cmake, nvcc.  scipy-openblas32 (a build dependency) may
#         be given as wheels in .whl/ (installed with --no-index into /tmp/aihw_site).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUTDIR=${GPU_CHECK_OUT:-${OUT:-$ROOT/build/gpu_check}}
mkdir -p "$OUTDIR"
SUMMARY=$OUTDIR/gpu_check_summary.md
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start ))s] $*"; }

{
  echo "# aihw-deploy gpu_check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
  nvcc --version 2>&1 | tail -1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1
  echo '```'
} >"$SUMMARY"

# -- build dependencies that may be missing on a machine without package access ----------------
if ! $PY -c "import scipy_openblas32" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    step "installing carried wheels from .whl/"
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/aihw_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/aihw_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu_check: scipy-openblas32 is missing (pip install scipy-openblas32, or put its wheel in .whl/)" | tee -a "$SUMMARY"
    exit 1
  fi
fi

# -- 1. build ---------------------------------------------------------------------------------------
step "building with CUDA"
ARCHS=${CMAKE_CUDA_ARCHITECTURES:-90}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
if ! $PY -m pip install --no-build-isolation --no-deps -e . -Cbuild-dir=build/gpu \
    -Ccmake.define.AIHW_WITH_CUDA=ON -Ccmake.define.AIHW_BUILD_ORT_OPS=ON \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCHS" >"$OUTDIR/build.log" 2>&1; then
  echo "**build failed** (tail of build.log):" >>"$SUMMARY"
  { echo '```'; tail -40 "$OUTDIR/build.log"; echo '```'; } >>"$SUMMARY"
  tail -40 "$OUTDIR/build.log"
  exit 1
fi
build_s=$(( $(date +%s) - start ))
$PY - >>"$SUMMARY" 2>&1 <<'EOF'
from aihw_deploy.simulator import rpu_base, cuda
print(f"\nbuild: rpu_base.cuda.is_compiled() = {rpu_base.cuda.is_compiled()}, device_count = {rpu_base.cuda.device_count()}, "
      f"available = {cuda.available()}, dense products: {rpu_base.cuda.blas_backend() if cuda.available() else '-'}")
EOF
echo "build time: ${build_s}s" >>"$SUMMARY"

# -- 2. tests ---------------------------------------------------------------------------------------
step "CUDA tests"
$PY -m pytest -m cuda -q -rs -p no:cacheprovider tests/ >"$OUTDIR/tests_cuda.log" 2>&1
rc_cuda=$?
step "host-emulation tests of the kernels"
$PY -m pytest -q -rs -p no:cacheprovider -k emulation tests/ >"$OUTDIR/tests_emulation.log" 2>&1
rc_emu=$?
{
  echo
  echo "## tests"
  echo
  echo "- pytest -m cuda: exit $rc_cuda — $(tail -1 "$OUTDIR/tests_cuda.log")"
  echo "- host emulation: exit $rc_emu — $(tail -1 "$OUTDIR/tests_emulation.log")"
  if [ $rc_cuda -ne 0 ]; then
    echo; echo '```'; grep -E "^(FAILED|ERROR)|Error" "$OUTDIR/tests_cuda.log" | head -30; echo '```'
  fi
} >>"$SUMMARY"

# -- 3. benchmark -----------------------------------------------------------------------------------
step "GPU benchmark"
$PY tools/bench_gpu.py --json "$OUTDIR/bench_gpu.json" >"$OUTDIR/bench_gpu.log" 2>&1
rc_bench=$?
{
  echo
  echo "## benchmark (tools/bench_gpu.py, exit $rc_bench)"
  echo
  cat "$OUTDIR/bench_gpu.log"
  echo
  echo "total time: $(( $(date +%s) - start ))s"
} >>"$SUMMARY"
step "done"
cat "$SUMMARY"
[ $rc_cuda -eq 0 ] && [ $rc_emu -eq 0 ] && [ $rc_bench -eq 0 ]
