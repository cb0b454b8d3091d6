#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component for Portcullis, with componentize-js.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[ -d node_modules ] || npm install --no-audit --no-fund --loglevel=error
# -d http -d fetch-event: no wasi:http imports, which Portcullis' sandbox does not grant.
./node_modules/.bin/componentize-js --wit wit --world-name auth -d http -d fetch-event -o "{{name}}.wasm" plugin.js
echo "built $(pwd)/{{name}}.wasm"
