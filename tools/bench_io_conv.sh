#!/usr/bin/env bash
# Builds tools/bench_io_conv.cpp against rpucuda's sources (the flags of CMakeLists.txt, -g for
# perf) into build/bench_io_conv/ and runs it with the given arguments:
#   bash tools/bench_io_conv.sh [calls] [threads] [batch]
# Profile:  perf record -g build/bench_io_conv/bench_io_conv 1500 && perf report --no-children
# Needs the scipy-openblas32 wheel in the Python environment (PYTHON; default .venv/bin/python,
# made by tools/setup_env.sh, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
inc=$("$PY" -c "import scipy_openblas32 as s; print(s.get_include_dir())")
lib=$("$PY" -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
out=build/bench_io_conv
mkdir -p "$out"
bin=$out/bench_io_conv
if [ ! -x "$bin" ] || [ -n "$(find rpucuda tools/bench_io_conv.cpp -newer "$bin" -name '*.[ch]*' -print -quit)" ]; then
  echo "building $bin" >&2
  objs=()
  pids=()
  for f in rpucuda/*.cpp; do
    o=$out/$(basename "$f" .cpp).o
    g++ -O3 -g -fopenmp-simd -fno-math-errno -fno-trapping-math -Irpucuda -I"$inc" -c "$f" -o "$o" &
    pids+=($!)
    objs+=("$o")
  done
  for p in "${pids[@]}"; do wait "$p"; done
  g++ -O3 -g -Irpucuda tools/bench_io_conv.cpp "${objs[@]}" -L"$lib" -lscipy_openblas -Wl,-rpath,"$lib" -lpthread \
    -o "$bin"
fi
exec "$bin" "$@"
