#!/usr/bin/env bash
# The GPU session's one command: tools/gpu_check.py with the checkout's .venv (if any) on PYTHONPATH's
# checkout. Arguments pass through (see python tools/gpu_check.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 900 "$PY" tools/gpu_check.py "$@"
