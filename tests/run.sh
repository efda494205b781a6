#!/usr/bin/env bash
# The test command (README): installs into .venv if needed, then runs the whole default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q --durations=25 "$@"
