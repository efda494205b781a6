#!/usr/bin/env bash
# The README's main command: install into .venv if needed, then run the ReST-EM demo on the embedded backend.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash .ci/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python examples/restem_arithmetic/demo.py "$@"
