#!/usr/bin/env bash
# The GPU session's one command: tools/gpu_check.py with the checkout's .venv (if any) on PYTHONPATH's
# checkout. Arguments pass through (see python tools/gpu_check.py --help). The report is rewritten after
# every step, so the hard limit (7 min, above the default 6-minute budget) loses only the step it cut.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 420 "$PY" tools/gpu_check.py "$@"
