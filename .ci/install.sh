#!/usr/bin/env bash
# Create .venv (if missing) and install learning-mcp with its training stack and test tools.
# Idempotent: once installed, a later run only re-installs when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

pipq() {  # pip, minus this machine's harmless "find-links location is ignored" noise; keeps pip's exit code
  set +o pipefail
  python -m pip "$@" 2>&1 | grep -v "is ignored" || true
  local rc=${PIPESTATUS[0]}
  set -o pipefail
  return "$rc"
}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  pipq install -q --upgrade pip
  # torch first: a CPU build where one is on this machine's disk (PyPI's default wheel is a multi-GB CUDA
  # build); any torch >= 2.4 works, so fall back to whatever pip resolves.
  pipq install -q "torch==2.13.0" || pipq install -q "torch>=2.4"
  pipq install -q -e ".[train,test,math,charts,ray]"
  python -c "import learning_mcp.server.app, torch, transformers, trl, peft, fastapi" >/dev/null
  touch .venv/.installed
fi
