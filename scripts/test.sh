#!/usr/bin/env bash
# Set up (scripts/install.sh) and run the whole test suite, integration tests included.
# Extra arguments go to pytest, e.g. bash scripts/test.sh -k render
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Chromium for the browser tests (tests/pages): installed when missing. Under CI a failure stops here;
# elsewhere (no root, no password-less sudo) those tests skip, saying how to install it.
case "${CI:-}" in
  ""|0|false|no) bash scripts/install_chromium.sh >/dev/null \
                   || echo "test: no Chromium (see above): the browser tests in tests/pages will be skipped" >&2 ;;
  *) bash scripts/install_chromium.sh >/dev/null ;;
esac
exec .venv/bin/python -m pytest -ra --durations=30 "$@"
