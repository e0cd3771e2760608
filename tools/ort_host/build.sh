#!/usr/bin/env bash
# Builds tools/ort_host/main.cpp against the onnxruntime pip wheel.
#
# Usage: tools/ort_host/build.sh OUT_DIR [INCLUDE_DIR]
#   OUT_DIR      receives the program `ort_host` and a lib/ folder of symlinks to the wheel's
#                libonnxruntime.so.1.x.y (its SONAME is libonnxruntime.so.1; the wheel ships no
#                libonnxruntime.so link for -lonnxruntime)
#   INCLUDE_DIR  onnxruntime C/C++ API headers (default: $ONNXRUNTIME_ROOT/include,
#                /usr/include/onnxruntime, or tools/fetch_onnxruntime_headers.sh OUT_DIR/headers)
# Environment: PYTHON (default python3), CXX (default g++).
set -euo pipefail
here=$(cd -- "$(dirname -- "$0")" && pwd -P)
root=$(cd -- "$here/../.." && pwd -P)
[[ $# -ge 1 ]] || { echo "usage: $0 OUT_DIR [INCLUDE_DIR]" >&2; exit 2; }
out=$(mkdir -p -- "$1" && cd -- "$1" && pwd -P)
inc=${2:-}
if [[ -z $inc ]]; then
    if [[ -n ${ONNXRUNTIME_ROOT:-} && -f $ONNXRUNTIME_ROOT/include/onnxruntime_cxx_api.h ]]; then
        inc=$ONNXRUNTIME_ROOT/include
    elif [[ -n ${ONNXRUNTIME_ROOT:-} && -f $ONNXRUNTIME_ROOT/include/onnxruntime/onnxruntime_cxx_api.h ]]; then
        inc=$ONNXRUNTIME_ROOT/include/onnxruntime
    elif [[ -f /usr/include/onnxruntime/onnxruntime_cxx_api.h ]]; then
        inc=/usr/include/onnxruntime
    else
        inc=$("$root/tools/fetch_onnxruntime_headers.sh" "$out/headers")
    fi
fi
capi=$("${PYTHON:-python3}" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
lib=$(ls "$capi"/libonnxruntime.so.1.* 2>/dev/null | head -n 1)
[[ -n $lib ]] || { echo "$0: no libonnxruntime.so.1.* in $capi" >&2; exit 1; }
mkdir -p "$out/lib"
ln -sf "$lib" "$out/lib/libonnxruntime.so.1"
ln -sf "$lib" "$out/lib/libonnxruntime.so"
"${CXX:-g++}" -std=c++17 -O2 -Wall -o "$out/ort_host" "$here/main.cpp" -I"$inc" \
    -L"$out/lib" -lonnxruntime -Wl,-rpath,"$out/lib"
echo "$out/ort_host"
