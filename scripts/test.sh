#!/usr/bin/env bash
# The test command (README's second line, and CI's): set up, add what only the tests need, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser test (tests/test_app_browser.py) drives Debian's Chromium with Playwright's Python package;
# Playwright's own browser download (`playwright install`) is never used. Both are best effort: without
# them that one test is skipped with the reason.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
    || echo "scripts/test.sh: could not install chromium; the browser test will be skipped" >&2
fi
if ! .venv/bin/python -c "import playwright.sync_api" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check playwright \
    2> >(grep -v "^WARNING: Location 'file://" >&2) \
    || echo "scripts/test.sh: could not install playwright; the browser test will be skipped" >&2
fi
.venv/bin/python -m pytest -q "$@"
