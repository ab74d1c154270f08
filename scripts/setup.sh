#!/usr/bin/env bash
# Idempotent setup: .venv with spikect (editable) and its pinned dependencies, offline-friendly.
# torch==2.13.0 is the CPU wheel found locally (any other version pulls GBs of CUDA packages).
# spikingjelly==2.0.0 goes in with --no-deps: it declares torchvision/torchaudio, which have no CPU build
# here and which its core never imports; its real runtime needs (numpy, loguru, ...) come with spikect.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.spikect-setup
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" --no-deps spikingjelly==2.0.0
"${pip[@]}" -e ".[app,dev]"
.venv/bin/python -c "import spikect, spikingjelly.activation_based.neuron" >/dev/null
touch "$stamp"
