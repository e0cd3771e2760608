#!/usr/bin/env bash
# Installs everything needed (into .venv) and runs the built-in example.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tools/setup_env.sh"
exec python -m aihw_deploy.examples.demo "$@"
