#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component for Portcullis, with componentize-py.
# Uses $COMPONENTIZE_PY, or componentize-py on PATH, or installs the pinned one into .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
cpy="${COMPONENTIZE_PY:-}"
if [ -z "$cpy" ]; then
    if command -v componentize-py >/dev/null 2>&1; then
        cpy=componentize-py
    else
        [ -x .venv/bin/componentize-py ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
        cpy=.venv/bin/componentize-py
    fi
fi
"$cpy" -d wit -w auth componentize app -o "{{name}}.wasm"
echo "built $(pwd)/{{name}}.wasm"
