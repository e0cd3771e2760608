#!/usr/bin/env bash
# Installs everything needed (into .venv) and runs the test suite.
# Fast default suite; pass "-m slow" (or other pytest arguments) to select others.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec pytest "$@"
