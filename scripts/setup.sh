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
# Hide two kinds of expected noise only: the local mirror's missing-folder warnings, and pip's resolver note
# that spikingjelly's undeclared-but-unused extras (torchvision, torchaudio, tensorboard, ...) are absent.
quiet() { "$@" 2> >(grep -v -e "^WARNING: Location 'file://" -e "^spikingjelly 2.0.0 requires" \
                              -e "^ERROR: pip's dependency resolver does not currently" >&2); }
quiet "${pip[@]}" torch==2.13.0
quiet "${pip[@]}" --no-deps spikingjelly==2.0.0
quiet "${pip[@]}" -e ".[app,dev]"
.venv/bin/python -c "import spikect, spikingjelly.activation_based.neuron" >/dev/null
# Build the fused LIF CPU kernel now (~40 s, once; cached by torch) rather than in the first diagnosis.
.venv/bin/python -c "from spikect.model.fastlif import _extension; _extension()"
touch "$stamp"
