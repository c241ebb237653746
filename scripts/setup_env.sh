#!/usr/bin/env bash
# Create (or update) the project's virtual environment: the right torch first, then the package.
# A machine without an NVIDIA GPU gets the CPU build of torch (torch==2.13.0 here comes from local
# disk in under a minute); an unpinned torch would pull a multi-GB CUDA build by accident.
set -euo pipefail
venv="${1:-.venv}"
cd "$(dirname "$0")/.."
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
if ! "$py" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "NVIDIA GPU found: installing the CUDA build of torch"
    "$py" -m pip install -q torch
  else
    echo "No NVIDIA GPU: installing the CPU build of torch (${TORCH_CPU_SPEC:-torch==2.13.0})"
    "$py" -m pip install -q "${TORCH_CPU_SPEC:-torch==2.13.0}"
  fi
fi
"$py" -m pip install -q -e ".[test]"
# the widget JavaScript that offline HTML reports link beside them (npm registry, sha512-pinned, once)
"$py" -m img2img_lab.htmlexport --fetch ||
  echo "could not fetch the widget JavaScript: reports will try again, or use --cdn-html" >&2
"$py" -c "import torch, diffusers; print(f'torch {torch.__version__} (cuda: {torch.cuda.is_available()}), diffusers {diffusers.__version__}')"
