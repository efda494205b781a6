#!/usr/bin/env bash
# ReST-EM on a second task: two-digit subtraction ("73-48=?", a >= b), with the arithmetic demo's driver
# (examples/restem_arithmetic/demo.py: a weak seed model built offline, then run_sft_loop over MCP stdio).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash .ci/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python examples/restem_arithmetic/demo.py --task sub --out examples/restem_subtract/out "$@"
