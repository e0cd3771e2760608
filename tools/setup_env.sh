#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv with aihw-deploy installed (editable) and
# its test dependencies.  Used by tools/test.sh and tools/demo.sh; safe to run repeatedly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AIHW_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.aihw-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/CMakeLists.txt" -nt "$stamp" ]; then
  echo "[setup] installing torch==2.13.0 (CPU) and the build requirements" >&2
  # Pin torch: a looser requirement would pull a multi-GB CUDA build.
  python -m pip install -q torch==2.13.0
  python -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "scipy-openblas32>=0.3.27" ninja
  echo "[setup] building and installing aihw-deploy (editable)" >&2
  python -m pip install -q --no-build-isolation -e "$ROOT[test]"
  touch "$stamp"
else
  # Rebuild the compiled parts if sources changed (incremental, in build/).
  python -m pip install -q --no-build-isolation --no-deps -e "$ROOT" >/dev/null
fi
