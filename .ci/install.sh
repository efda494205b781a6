#!/usr/bin/env bash
# Create .venv (if missing) and install learning-mcp with the right torch for this machine.
#
#   bash .ci/install.sh                                   # quick start / CI: train,test,math,charts,ray
#   LEARNING_MCP_EXTRAS=train,math,charts bash .ci/install.sh   # an agent host: no test tools, no Ray
#   LEARNING_MCP_TORCH=cpu|cuda bash .ci/install.sh       # force the torch build (default: auto)
#
# torch: a machine with a working NVIDIA GPU (`nvidia-smi -L` lists one) gets PyPI's default torch, the CUDA
# build; any other machine gets a CPU-only build: first a CPU wheel already on this machine (pip's find-links),
# then PyTorch's CPU index (https://download.pytorch.org/whl/cpu), and only if neither is reachable PyPI's
# default build (with a warning: it carries the CUDA libraries). Everything it says goes to stderr.
# Idempotent: once installed, a later run only re-installs when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${LEARNING_MCP_EXTRAS:-train,test,math,charts,ray}
TORCH_CHOICE=${LEARNING_MCP_TORCH:-auto}
CPU_INDEX=https://download.pytorch.org/whl/cpu
# setuptools' "Editable installation" note (a warning block on every editable install) says nothing actionable
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"

say() { echo "learning-mcp install: $*" >&2; }

pipq() {  # pip, minus this machine's harmless "find-links location is ignored" noise; keeps pip's exit code
  set +o pipefail
  python -m pip "$@" 2>&1 | grep -v "is ignored" >&2 || true
  local rc=${PIPESTATUS[0]}
  set -o pipefail
  return "$rc"
}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; }

torch_build() {  # "cpu" / "cuda" / "none" for the torch in .venv
  python - <<'EOF' 2>/dev/null || echo none
import torch
print("cuda" if torch.version.cuda else "cpu")
EOF
}

install_torch() {
  local want=$1
  if [ "$want" = cuda ]; then
    say "torch: PyPI's default build (CUDA) for the GPU found by nvidia-smi"
    pipq install -q "torch>=2.4"
    return
  fi
  say "torch: a CPU-only build (no GPU found; LEARNING_MCP_TORCH=cuda forces the CUDA build)"
  # 1. a CPU wheel on this machine's disk (pip's find-links): no download; its dependencies come from the index
  if pipq install -q --no-index --no-deps "torch>=2.4" >/dev/null 2>&1; then
    local version
    version=$(python -m pip show torch 2>/dev/null | sed -n 's/^Version: //p')
    case "$version" in
      *+cpu*) pipq install -q "torch==$version" && return ;;
      *) pipq uninstall -q -y torch ;;  # a local wheel that is not a CPU build: take the CPU index's
    esac
  fi
  # 2. PyTorch's CPU wheel index (pip's configured extra indexes still count: check what came)
  if pipq install -q --timeout 20 --retries 1 --index-url "$CPU_INDEX" "torch>=2.4"; then
    [ "$(torch_build)" = cpu ] || say "WARNING: another configured index supplied a CUDA build of torch" \
        "($(python -c 'import torch; print(torch.__version__)')); it runs on CPU but is several GB larger"
    return
  fi
  # 3. whatever pip resolves (on Linux x86-64 PyPI's torch is the CUDA build: larger, but it runs on CPU too)
  say "WARNING: $CPU_INDEX is unreachable and no local CPU wheel was found; installing PyPI's default torch," \
      "which bundles CUDA libraries (several GB more). Re-run with the CPU index reachable to slim it down."
  pipq install -q "torch>=2.4"
}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  want=$TORCH_CHOICE
  if [ "$want" = auto ]; then
    if has_gpu; then want=cuda; else want=cpu; fi
  fi
  have=$(torch_build)
  if [ ! -f .venv/.installed ]; then
    say "first-time setup of .venv: torch ($want), transformers, TRL, PEFT and the extras [$EXTRAS]."
    say "This usually takes 5-15 minutes (the CPU build: .venv about 2 GB; measured 14 min on a busy 2-core" \
        "machine); the CUDA build downloads several GB more. Later runs skip it."
  else
    say "pyproject.toml changed: updating .venv (usually under a minute)"
  fi
  started=$(date +%s)
  pipq install -q --upgrade pip
  if [ "$have" = none ]; then
    install_torch "$want"
  elif [ "$have" != "$want" ]; then
    say "keeping the installed $have build of torch; delete .venv and re-run to switch to the $want build"
  fi
  pipq install -q -e ".[$EXTRAS]"
  python -c "import learning_mcp.server.app, torch, transformers, trl, peft, fastapi" >/dev/null
  touch .venv/.installed
  say "done in $(( $(date +%s) - started )) s: torch $(python -c 'import torch; print(torch.__version__)')" \
      "($(torch_build)), .venv is $(du -sh .venv | cut -f1)"
fi
