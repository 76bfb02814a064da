#!/usr/bin/env bash
# Set everything up, then run the linters and the whole test suite (unit and integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check cocoon tests benchmarks
.venv/bin/ruff format --check cocoon tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
