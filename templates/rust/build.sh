#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component for Portcullis.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if command -v rustup >/dev/null 2>&1; then
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2
cp "target/wasm32-wasip2/release/{{crate}}.wasm" "{{name}}.wasm"
echo "built $(pwd)/{{name}}.wasm"
