#!/usr/bin/env bash
# Set everything up, then run the linters and the whole test suite: the Python unit and
# integration tests, and the TON contracts' tests in the TON sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check cocoon tests benchmarks
.venv/bin/ruff format --check cocoon tests benchmarks
.venv/bin/mypy
source scripts/node-env.sh
(cd contracts && "${NPM[@]}" test)
.venv/bin/python -m pytest "$@"
