#!/usr/bin/env bash
# ReST-EM on a second task: a two-digit number times a digit ("37*6=?"), with the arithmetic demo's driver
# (examples/restem_arithmetic/demo.py: a weak seed model built offline, then run_sft_loop over MCP stdio).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python examples/restem_arithmetic/demo.py --task mul_digit --out examples/restem_multiply/out \
  --seed-examples 200 --train-problems 600 --val-problems 200 "$@"
