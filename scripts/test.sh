#!/usr/bin/env bash
# The test command (README's second line, and CI's): set up, add what only the tests need, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
