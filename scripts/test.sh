#!/usr/bin/env bash
# Set up (scripts/install.sh) and run the whole test suite, integration tests included.
# Extra arguments go to pytest, e.g. bash scripts/test.sh -k render
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -ra "$@"
